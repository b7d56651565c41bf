"""What every exercise checker must survive (CONVENTIONS §5), shared by tests/test_exercises_chNN.py:
a reader's function that raises or never returns fails with a message, within the time limit."""
import time

HANG_LIMIT_S = 30  # a hanging answer must be stopped well before this


def assert_survives_exceptions_and_hangs(check) -> None:
    def boom(*args):
        raise RuntimeError("nope")

    def hang(*args):
        while True:
            pass

    result = check(boom)
    assert not result.passed and "RuntimeError" in result.message
    started = time.perf_counter()
    result = check(hang)
    assert not result.passed and time.perf_counter() - started < HANG_LIMIT_S


def message(check, answer) -> str:
    """The hint `check` gives `answer`, which must fail."""
    result = check(answer)
    assert not result.passed, result.message
    return result.message
