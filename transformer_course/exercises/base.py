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
import threading
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


def _call(fn, args, kwargs, timeout: float) -> tuple[str, object]:
    """Run `fn(*args, **kwargs)` in a daemon thread: ("ok", value) | ("error", exception) | ("timeout", None).

    A thread that runs past `timeout` cannot be stopped; it is left running in the background (daemon,
    so it never blocks the interpreter from exiting). Grad mode is thread-local, so it is passed along.
    """
    outcome: list = []
    grad_enabled = torch.is_grad_enabled()

    def target():
        try:
            with torch.set_grad_enabled(grad_enabled):
                outcome.append(("ok", fn(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - the reader's code may raise anything, SystemExit included
            outcome.append(("error", exc))

    thread = threading.Thread(target=target, daemon=True, name="exercise-check")
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else ("timeout", None)


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


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_with_timeout(fn, *args, timeout: float = 5.0, **kwargs) -> tuple[object, CheckResult | None]:
    """Call the reader's `fn(*args, **kwargs)`; return `(value, None)`, or `(None, failed CheckResult)`.

    Never raises: a non-callable, an exception or running past `timeout` seconds each become a failed
    result saying so. A function that hangs keeps running in a background daemon thread.
    """
    if not callable(fn):
        return None, CheckResult(False, f"expected a function, got {type(fn).__name__}")
    status, value = _call(fn, args, kwargs, timeout)
    if status == "timeout":
        return None, CheckResult(False, f"your function did not finish within {timeout:g} s "
                                        f"(an endless loop, or far too much work?)")
    if status == "error":
        return None, CheckResult(False, f"your function raised {_describe(value)}")
    return value, None


def checker(check):
    """Decorate a check function so that it always returns a `CheckResult` within `CHECK_TIMEOUT` s.

    Any exception becomes a failed result naming it; a return value that is not a `CheckResult`
    becomes a failed result too (a bug in the checker, reported rather than raised).
    """

    @functools.wraps(check)
    def wrapped(*args, **kwargs):
        status, value = _call(check, args, kwargs, CHECK_TIMEOUT)
        if status == "timeout":
            return CheckResult(False, f"checking did not finish within {CHECK_TIMEOUT:g} s")
        if status == "error":
            return CheckResult(False, f"checking your answer raised {_describe(value)}")
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
