"""Notebook helpers used by every chapter: set-up, showing the package's source, and agreement reports.

Display code lives here (and in `plotting.py`, `widgets.py`), never in the core modules.
"""
import inspect
import math
import pathlib
import warnings

import torch

from .utils import seed_everything


def setup_notebook(seed: int = 0) -> None:
    """Seed, set print options and the plot style; call once at the top of a chapter."""
    import matplotlib

    seed_everything(seed)
    torch.set_printoptions(precision=4, sci_mode=False, linewidth=110)
    matplotlib.rcParams.update({
        "figure.figsize": (6.4, 3.6),
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "font.size": 10,
        "svg.hashsalt": "transformer-course",
    })
    # tqdm's notebook detection warns when ipywidgets' front end is missing; chapters never show bars.
    warnings.filterwarnings("ignore", message="IProgress not found")


def _package_root() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parent


def show_source(obj) -> None:
    """Display the source of a package function, class or method, with its file and line numbers.

    Chapters call this instead of pasting a second copy: the package is the single source of truth.
    """
    from IPython.display import Markdown, display

    try:
        lines, start = inspect.getsourcelines(obj)
        path = pathlib.Path(inspect.getsourcefile(obj)).resolve()
    except (TypeError, OSError) as exc:
        raise ValueError(f"show_source needs a function, class or method defined in a file; got {obj!r}") from exc
    try:
        where = path.relative_to(_package_root().parent).as_posix()
    except ValueError:
        where = path.name
    end = start + len(lines) - 1
    display(Markdown(f"`{where}`, lines {start}–{end}\n\n```python\n{''.join(lines).rstrip()}\n```"))


def _bucket(diff: float) -> str:
    if diff == 0:
        return "identical (max |Δ| = 0)"
    if not math.isfinite(diff):
        return f"max |Δ| = {diff}"
    exponent = math.floor(math.log10(diff)) + 1
    return f"max |Δ| < 1e{exponent}"


def report_close(a, b, name: str | None = None, atol: float = 1e-5) -> None:
    """Print how closely two tensors agree as a stable tolerance bucket (e.g. `max |Δ| < 1e-6`).

    Raises `AssertionError` when they differ by more than `atol`, so a chapter cell fails loudly.
    Returns nothing, so that it can end a notebook cell without echoing a value.
    """
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"report_close: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    prefix = f"{name}: " if name else ""
    print(f"{prefix}{_bucket(diff)}")
    if not diff <= atol:
        raise AssertionError(f"{prefix}max |Δ| = {diff:.3g} exceeds atol = {atol:g}")
