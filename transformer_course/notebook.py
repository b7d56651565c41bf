"""Notebook helpers used by every chapter: set-up, showing the package's source, and agreement reports.

Display code lives here (and in `plotting.py`, `widgets.py`), never in the core modules.
"""
import inspect
import json
import os
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
        obj = inspect.unwrap(obj)  # a decorated function (@torch.no_grad()): the file of the function itself
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


def _tolerance(atol: float) -> str:
    """`1e-05` -> `1e-5`, `0.01` -> `0.01`: the tolerance as the chapters print it."""
    mantissa, _, exponent = f"{atol:.0e}".partition("e")
    return f"{mantissa}e{int(exponent)}" if atol < 1e-3 and float(f"{atol:.0e}") == atol else f"{atol:g}"


def _log_difference(name: str | None, diff: float, atol: float) -> None:
    """With `TC_LOG_DIFFS=path` set, append the actual difference to that JSON-lines file (for choosing tolerances)."""
    path = os.environ.get("TC_LOG_DIFFS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"name": name, "diff": diff, "atol": atol}) + "\n")


def report_close(a, b, name: str | None = None, atol: float = 1e-5) -> None:
    """Check that two tensors agree to within `atol` and print that tolerance (`x: agree to within 1e-5`).

    The printed line names the tolerance checked, never the size of the difference, whose order of
    magnitude flips between CPU kernels (CONVENTIONS §4); `atol=0` prints "identical", for the two sides that
    run the same operations in the same order. Raises `AssertionError` when max |a - b| > atol,
    so a chapter cell fails loudly. Set `TC_LOG_DIFFS=path` to record each actual difference in a file.
    Returns nothing, so that it can end a notebook cell without echoing a value.
    """
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"report_close: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if not isinstance(atol, (int, float)) or isinstance(atol, bool) or not atol >= 0:
        raise ValueError(f"report_close: atol must be a number >= 0, got {atol!r}")
    diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    _log_difference(name, diff, atol)
    prefix = f"{name}: " if name else ""
    if not diff <= atol:
        raise AssertionError(f"{prefix}max |Δ| = {diff:.3g} exceeds atol = {atol:g}")
    print(f"{prefix}identical" if atol == 0 else f"{prefix}agree to within {_tolerance(atol)}")
