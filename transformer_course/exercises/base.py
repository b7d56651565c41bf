"""The exercise-checker contract shared by every chapter's `chNN` module (CONVENTIONS §5).

A checker `check_x(answer)` takes the value or function an exercise names and returns a `CheckResult`
that displays as one stable line: `✅ Correct: ...` or `❌ Not yet: <a specific hint>`. It never raises
and never hangs: wrap it in `@checker`, call the reader's function through `run_with_timeout`, and compare
tensors with `check_tensor`, which turns the usual mistakes (None, wrong type, NaN, wrong shape, transposed,
a missing scale factor) into hints.

    @checker
    def check_softmax(fn):
        x = torch.tensor([[1.0, 2.0, 3.0]])
        out, problem = run_with_timeout(fn, x)
        if problem is not None:
            return problem
        return check_tensor(out, torch.softmax(x, dim=-1), name="softmax(x)")

Leaves out: grading, scores and hidden tests; checkers help readers, they do not examine them.
"""
import functools
import math
import io
import os
import pickle
import select
import signal
import struct
import sys
import threading
import time
import warnings
from dataclasses import dataclass

import torch

CHECK_TIMEOUT = 30.0  # seconds; the limit `@checker` puts on a whole check


@dataclass(frozen=True)
class CheckResult:
    """Outcome of a check: `passed`, and a one-line `message` (what was right, or a hint).

    It has no truth value on purpose: `if result:` would be true for a failure in one reading and false
    in another, so it raises `TypeError`; write `result.passed`.
    """

    passed: bool
    message: str

    def __str__(self) -> str:
        text = " ".join(str(self.message).split())  # always one line
        return f"✅ Correct: {text}" if self.passed else f"❌ Not yet: {text}"

    __repr__ = __str__

    def __bool__(self):
        raise TypeError("a CheckResult has no truth value: test result.passed (or `problem is not None`)")


# In the child process of a check: the pipe to the parent, which enforces `run_with_timeout`'s limits.
_parent_pipe: int | None = None


def _send(fd: int, message) -> None:
    data = pickle.dumps(message)
    os.write(fd, struct.pack("<Q", len(data)))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _child(fn, args, kwargs, fd: int) -> None:
    """The forked child: run `fn`, send ("done", outcome, printed text) to the parent, leave with `os._exit`."""
    global _parent_pipe
    try:
        torch.set_num_threads(1)  # a forked child's torch ops hang on the parent's intra-op thread pool
        _parent_pipe = fd
        sys.stdout = sys.stderr = printed = io.StringIO()  # the kernel's streams are not usable in a child
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - the reader's code may raise anything, SystemExit included
            outcome = ("error", _describe(exc))
        try:
            _send(fd, ("done", outcome, printed.getvalue()))
        except Exception as exc:  # noqa: BLE001 - e.g. a returned value that cannot be pickled
            _send(fd, ("done", ("error", f"a {type(outcome[1]).__name__} that cannot be sent back ({exc})"),
                       printed.getvalue()))
    finally:
        os._exit(0)


def _can_fork() -> bool:
    # CUDA cannot be used again in a forked child once the parent has initialised it.
    return hasattr(os, "fork") and not torch.cuda.is_initialized()


def _fork_call(fn, args, kwargs, timeout: float) -> tuple[str, object]:
    """Run `fn(*args, **kwargs)` in a forked child that is killed (SIGKILL) when it runs past its limit.

    Returns ("ok", value) | ("error", description) | ("timeout", seconds) | ("fn-timeout", seconds): the limit
    is `timeout`, or ("fn-timeout") one that the child announced through `run_with_timeout` while it ran the
    reader's function.
    """
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():  # Python >= 3.12 warns when a multi-threaded process (a kernel) forks
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(fn, args, kwargs, write_fd)
    os.close(write_fd)
    start = time.monotonic()
    limits = [(start + timeout, timeout, "timeout")]  # (deadline, seconds, status), the innermost last
    buffer, result = b"", None
    try:
        while result is None:
            deadline, seconds, status = min(limits)
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                result = (status, seconds)
                break
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                result = ("error", "the checking process ended without an answer (did the code call os._exit?)")
                break
            buffer += chunk
            while len(buffer) >= 8 and len(buffer) >= 8 + struct.unpack("<Q", buffer[:8])[0]:
                size = struct.unpack("<Q", buffer[:8])[0]
                message, buffer = pickle.loads(buffer[8:8 + size]), buffer[8 + size:]
                if message[0] == "limit":  # run_with_timeout started the reader's function
                    limits.append((time.monotonic() + message[1], message[1], "fn-timeout"))
                elif message[0] == "unlimit":
                    limits.pop()
                else:
                    _, result, printed = message
                    sys.stdout.write(printed)
    finally:
        os.close(read_fd)
        if result is None or result[0] in ("timeout", "fn-timeout"):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)  # reap it: no process is left behind
    return result


def _thread_call(fn, args, kwargs, timeout: float) -> tuple[str, object]:
    """The fallback where fork is unavailable (Windows) or CUDA is in use: a daemon thread.

    A thread cannot be stopped: one that runs past `timeout` (or C code holding the GIL) keeps running.
    """
    outcome: list = []
    grad_enabled = torch.is_grad_enabled()

    def target():
        try:
            with torch.set_grad_enabled(grad_enabled):  # grad mode is thread-local
                outcome.append(("ok", fn(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - the reader's code may raise anything, SystemExit included
            outcome.append(("error", _describe(exc)))

    thread = threading.Thread(target=target, daemon=True, name="exercise-check")
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else ("timeout", timeout)


def _call(fn, args, kwargs, timeout: float) -> tuple[str, object]:
    """Run `fn(*args, **kwargs)` so that it can be stopped after `timeout` s: in a killable child process.

    Inside a check's child, the reader's function runs in the same process while the parent watches the
    time limit the child announced; elsewhere a fresh child is forked. Without fork, a thread (see above).
    """
    if _parent_pipe is not None:
        _send(_parent_pipe, ("limit", timeout))
        try:
            return ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001
            return ("error", _describe(exc))
        finally:
            _send(_parent_pipe, ("unlimit",))
    return (_fork_call if _can_fork() else _thread_call)(fn, args, kwargs, timeout)


def as_int(value, what: str) -> tuple[int | None, CheckResult | None]:
    """The reader's answer as an int: `(n, None)`, or `(None, failed CheckResult)` naming `what` it should count.

    Accepts an int, a one-element tensor or an integral float (3.0); refuses bools, strings, None and the rest.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        return None, CheckResult(False, f"return an int ({what}), got {type(value).__name__}")
    return value, None


def as_float(value, what: str) -> tuple[float | None, CheckResult | None]:
    """The reader's answer as a finite float: `(x, None)`, or `(None, failed CheckResult)` naming `what` it is.

    Accepts an int, a float or a one-element tensor; refuses bools, strings, None, NaN and infinities.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, CheckResult(False, f"return a number ({what}), got {type(value).__name__}")
    if not math.isfinite(value):
        return None, CheckResult(False, f"got {value}: {what} must be a finite number")
    return float(value), None


def run_for_int(fn, *args, what: str, timeout: float = 5.0) -> tuple[int | None, CheckResult | None]:
    """`run_with_timeout`, then `as_int`: the reader's count, or `(None, failed CheckResult)`."""
    value, problem = run_with_timeout(fn, *args, timeout=timeout)
    return (None, problem) if problem is not None else as_int(value, what)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _too_slow(seconds: float) -> CheckResult:
    return CheckResult(False, f"your function did not finish within {seconds:g} s "
                              f"(an endless loop, or far too much work?)")


def run_with_timeout(fn, *args, timeout: float = 5.0, **kwargs) -> tuple[object, CheckResult | None]:
    """Call the reader's `fn(*args, **kwargs)`; return `(value, None)`, or `(None, failed CheckResult)`.

    Never raises: a non-callable, an exception or running past `timeout` seconds each become a failed
    result saying so. The function runs in a child process that is killed at the limit, so even C code
    that holds the GIL (`sum(range(10**9))`) is stopped; where fork is unavailable (Windows) or CUDA is
    initialised, it runs in a thread instead, which cannot be stopped and keeps running in the background.
    Called outside a check, the returned value is pickled back from the child.
    """
    if not callable(fn):
        return None, CheckResult(False, f"expected a function, got {type(fn).__name__}")
    status, value = _call(fn, args, kwargs, timeout)
    if status in ("timeout", "fn-timeout"):
        return None, _too_slow(value)
    if status == "error":
        return None, CheckResult(False, f"your function raised {value}")
    return value, None


def checker(check):
    """Decorate a check function so that it always returns a `CheckResult` within `CHECK_TIMEOUT` s.

    Any exception becomes a failed result naming it; a return value that is not a `CheckResult`
    becomes a failed result too (a bug in the checker, reported rather than raised).
    """

    @functools.wraps(check)
    def wrapped(*args, **kwargs):
        status, value = _call(check, args, kwargs, CHECK_TIMEOUT)
        if status == "fn-timeout":  # the reader's function, run by the check, was stopped at its limit
            return _too_slow(value)
        if status == "timeout":
            return CheckResult(False, f"checking did not finish within {CHECK_TIMEOUT:g} s")
        if status == "error":
            return CheckResult(False, f"checking your answer raised {value}")
        if not isinstance(value, CheckResult):
            return CheckResult(False, f"the checker returned {type(value).__name__}, not a CheckResult")
        return value

    return wrapped


def _shape(t) -> str:
    return str(tuple(t.shape))


def check_tensor(answer, expected, *, name: str = "your answer", atol: float = 1e-5,
                 rtol: float = 1e-4) -> CheckResult:
    """Compare `answer` with `expected` and explain the first thing that is wrong.

    In order: None; not a tensor; integer vs floating dtype; NaN or inf where the expected values are
    finite; the shape (reversed or last two dimensions swapped → "transposed?"); then the values:
    equal to the transpose, a constant multiple k of the expected (a missing or extra scale), close but
    beyond tolerance, or simply different (with the worst position). Floating tensors pass when
    `torch.allclose(answer, expected, rtol, atol)`; integer and bool tensors must be equal.
    """
    expected = torch.as_tensor(expected).detach().cpu()
    if answer is None:
        return CheckResult(False, f"{name} is None; did you forget to `return` it?")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool) and expected.dim() == 0:
        answer = torch.tensor(answer)
    if not isinstance(answer, torch.Tensor):
        kind = type(answer).__name__
        tip = " (wrap it with torch.tensor(...))" if isinstance(answer, (list, tuple)) or kind == "ndarray" else ""
        return CheckResult(False, f"{name} should be a torch.Tensor, got {kind}{tip}")
    answer = answer.detach().cpu()
    exact = not (expected.is_floating_point() or expected.is_complex())
    if answer.is_floating_point() != expected.is_floating_point():
        return CheckResult(False, f"{name} has dtype {str(answer.dtype).removeprefix('torch.')}, expected "
                                  f"{'a floating-point' if expected.is_floating_point() else 'an integer'} dtype "
                                  f"like {str(expected.dtype).removeprefix('torch.')}")
    if answer.shape != expected.shape:
        return CheckResult(False, _shape_hint(answer, expected, name))
    if answer.is_floating_point():
        for bad, label in ((torch.isnan, "NaN"), (torch.isinf, "inf")):
            wrong = bad(answer) & ~bad(expected)
            if wrong.any():
                return CheckResult(False, f"{name} contains {label} at {int(wrong.sum())} of {answer.numel()} "
                                          f"positions (first at index {_first(wrong)}); expected finite values there")
        unmasked = torch.isinf(expected) & ~torch.isinf(answer)
        if unmasked.any():
            return CheckResult(False, f"{name} should be ±inf at {int(unmasked.sum())} positions (first at index "
                                      f"{_first(unmasked)}) but has finite values there; is the mask applied?")
    if exact:
        mismatched = answer != expected
        if not mismatched.any():
            return CheckResult(True, f"{name} matches")
        return CheckResult(False, f"{name} differs at {int(mismatched.sum())} of {answer.numel()} positions "
                                  f"(first at index {_first(mismatched)}: got {answer[mismatched][0].item()}, "
                                  f"expected {expected[mismatched][0].item()})")
    a, e = answer.double(), expected.double()
    if torch.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True):
        return CheckResult(True, f"{name} matches (shape {_shape(answer)})")
    return CheckResult(False, _value_hint(a, e, name, atol, rtol))


def _first(mask: torch.Tensor) -> tuple:
    return tuple(int(i) for i in mask.nonzero()[0])


def _shape_hint(answer, expected, name) -> str:
    got, want = _shape(answer), _shape(expected)
    message = f"{name} has shape {got}, expected {want}"
    if answer.dim() >= 2 and answer.shape == expected.shape[:-2] + expected.shape[-2:][::-1]:
        return message + ": the last two dimensions look swapped (a missing or extra transpose?)"
    if answer.dim() >= 2 and tuple(answer.shape) == tuple(expected.shape)[::-1]:
        return message + ": the dimensions are reversed (transposed?)"
    if answer.numel() == expected.numel():
        return message + ": the right number of elements in the wrong arrangement (check the reshape/view)"
    return message


def _value_hint(a, e, name, atol, rtol) -> str:
    finite = torch.isfinite(a) & torch.isfinite(e)
    if a.dim() >= 2 and a.shape[-1] == a.shape[-2] and torch.allclose(a, e.transpose(-1, -2), rtol=rtol, atol=atol,
                                                                      equal_nan=True):
        return f"{name} equals the transpose of the expected result: swap the last two dimensions"
    same_masked = torch.equal(torch.isfinite(a), torch.isfinite(e))
    ef, af = e[finite], a[finite]
    if same_masked and ef.numel() and (ef * ef).sum() > 0:
        k = ((af * ef).sum() / (ef * ef).sum()).item()
        if abs(k - 1) > 1e-3 and k != 0 and torch.allclose(af, k * ef, rtol=rtol, atol=atol * max(1.0, abs(k))):
            return (f"the values of {name} are a constant multiple k = {k:.4g} of the expected ones "
                    f"(a missing or extra scale factor?)")
    delta = (a - e).abs()
    delta = torch.where(torch.isnan(delta), torch.zeros_like(delta), delta)  # equal infinities give NaN
    worst = int(delta.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
    largest = delta.flatten()[worst].item()
    scale = e[finite].abs().max().item() if finite.any() else 0.0
    if largest <= 1e-2 * max(scale, 1.0):
        return (f"{name} is close but not within tolerance: max |Δ| = {largest:.2g} at index {index} "
                f"(allowed: atol={atol:g}, rtol={rtol:g}); a small difference in the formula?")
    return (f"{name} has the right shape but different values: max |Δ| = {largest:.3g} at index {index} "
            f"(got {a.flatten()[worst].item():.4g}, expected {e.flatten()[worst].item():.4g})")
