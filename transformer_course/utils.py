"""Device selection, seeding, and the input checks every module uses.

Every public function refuses bad input with a `ValueError` that names the argument, says what it got and
what it expected (a wrong type included: a string for a float or a bool is refused, never compared or
taken as true). The modules call the few checks below rather than write their own.

Leaves out: distributed set-up and mixed precision; the course runs on one device in float32.
"""
import os
import random
import reprlib
from pathlib import Path

import torch


def default_device() -> torch.device:
    """CUDA if present, then Apple's MPS, then the CPU (every chapter runs on the CPU)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python and PyTorch; return a fresh CPU `torch.Generator` seeded with `seed`.

    Chapters prefer the returned generator (one per cell) over global state, so that changing
    one cell does not shift the random numbers of the next.
    """
    check_int("seed", seed, minimum=-(2**63), maximum=2**64 - 1)  # the range torch.manual_seed takes
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- input checks


def describe(x) -> str:
    """What `x` is, for an error message: "float32 tensor (2, 3) on cpu", "str '0.1'", "None"."""
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).removeprefix('torch.')} tensor {tuple(x.shape)} on {x.device}"
    return "None" if x is None else f"{type(x).__name__} {reprlib.repr(x)}"


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` if it is an int (not a bool) in [minimum, maximum] (no maximum: one that fits in 64 bits)."""
    top = 2**63 - 1 if maximum is None else maximum
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= top:
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        too_big = maximum is None and isinstance(value, int) and value > top
        raise ValueError(f"{name} must be an int {bounds}{' below 2**63' if too_big else ''}, got {describe(value)}")
    return value


def check_number(name: str, value, interval: str = "(0, inf)") -> float:
    """`value` if it is a real number (an int or a float, not a bool) inside `interval`, e.g. "[0, 1)"."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    inside = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        (low <= value if interval[0] == "[" else low < value)
        and (value <= high if interval[-1] == "]" else value < high)
    )  # NaN fails every comparison
    if not inside:
        raise ValueError(f"{name} must be a number in {interval}, got {describe(value)}")
    return value


def check_bool(name: str, value) -> bool:
    """`value` if it is True or False (a string such as "False" would be true)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {describe(value)}")
    return value


def check_choice(name: str, value, allowed: tuple[str, ...]) -> str:
    """`value` if it is one of the strings `allowed`."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {describe(value)}")
    return value


def _dtype_fits(dtype: torch.dtype, wanted) -> bool:
    if wanted == "float":
        return dtype.is_floating_point
    if wanted == "int":
        return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    return dtype == wanted


def check_tensor(name: str, x, shape: tuple | None = None, dtype=None, device=None) -> torch.Tensor:
    """`x` if it is a tensor of `shape`, `dtype` and `device` (each None: any).

    shape: a tuple of sizes; an int must match, a str (a name such as "T") matches any size, and a leading
    "..." matches any number of leading dimensions: `("...", 64)` is any tensor whose last dimension is 64.
    dtype: a `torch.dtype`, or "float" / "int" for any floating-point / integer dtype.
    """
    fits = isinstance(x, torch.Tensor)
    any_rank = shape is not None and shape[:1] == ("...",)
    if fits and shape is not None:
        sizes = shape[1:] if any_rank else shape
        fits = x.dim() >= len(sizes) if any_rank else x.dim() == len(sizes)
        tail = x.shape[x.dim() - len(sizes):]
        fits = fits and all(n == s for n, s in zip(tail, sizes) if isinstance(s, int))
    fits = fits and (dtype is None or _dtype_fits(x.dtype, dtype))
    fits = fits and (device is None or x.device == torch.device(device))
    if not fits:
        kinds = {None: "tensor", "float": "floating-point tensor", "int": "integer tensor", torch.long: "LongTensor"}
        kind = kinds.get(dtype) or str(dtype).removeprefix("torch.") + " tensor"
        dims = "" if shape is None or any_rank else f"{len(shape)}-D "
        layout = "" if shape is None else f" {tuple(shape)}".replace("'", "")
        wanted = f"{dims}{kind}{layout}" + ("" if device is None else f" on {device}")
        article = "an" if wanted[0] in "aeio" else "a"
        raise ValueError(f"{name} must be {article} {wanted}, got {describe(x)}")
    return x


def check_input(name: str, x, weight: torch.Tensor, dims: tuple = ("...",)) -> torch.Tensor:
    """`x` if a layer whose `weight` is `(d,)` or `(out, d)` can take it: `(*dims, d)`, of the weight's dtype
    and device."""
    return check_tensor(name, x, (*dims, weight.shape[-1]), weight.dtype, weight.device)


def check_float_dtype(name: str, dtype) -> torch.dtype:
    """`dtype` if it is a floating-point `torch.dtype` (float32, float64, float16, bfloat16)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point torch.dtype such as torch.float32, got {describe(dtype)}")
    return dtype


def check_ids(name: str, ids, vocab_size: int, ignore_index: int | None = None, device=None) -> torch.Tensor:
    """`ids` if it is a LongTensor (on `device`) of token ids in [0, vocab_size) (or equal to `ignore_index`)."""
    check_tensor(name, ids, dtype=torch.long, device=device)
    if ids.device.type == "meta":  # no values to check (meta tensors count shapes and FLOPs)
        return ids
    real = ids if ignore_index is None else ids[ids != ignore_index]
    if real.numel() and (real.min() < 0 or real.max() >= vocab_size):
        ignored = "" if ignore_index is None else f" (or {ignore_index}, ignored)"
        raise ValueError(f"{name} has ids outside [0, {vocab_size}){ignored}: min {real.min().item()}, "
                         f"max {real.max().item()}")
    return ids


def check_config(config):
    """`config` if it is a valid `GPTConfig` (validated again: a field may have been changed since)."""
    from .model import GPTConfig  # here, not at the top: model.py imports the modules that call this

    if not isinstance(config, GPTConfig):
        raise ValueError(f"config must be a GPTConfig, got {describe(config)}")
    config.validate()
    return config


def check_path(name: str, path) -> Path:
    """`path` (a non-empty str or `os.PathLike`) as a `Path`."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"{name} must be a file path (a non-empty str or pathlib.Path), got {describe(path)}")
    return Path(path)


def check_device(name: str, device) -> torch.device:
    """`device` (a str such as "cpu" or "cuda:0", or a `torch.device`) as a `torch.device`, if this machine has it."""
    try:
        parsed = torch.device(device) if isinstance(device, (str, torch.device)) else None
    except RuntimeError:
        parsed = None
    if parsed is None:
        raise ValueError(f'{name} must be a device such as "cpu", "cuda" or "cuda:1", got {describe(device)}')
    try:
        torch.empty(0, device=parsed)  # "cuda" parses everywhere; this fails where there is no GPU
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"{name}={device!r}: this machine has no such device ({exc})") from None
    return parsed
