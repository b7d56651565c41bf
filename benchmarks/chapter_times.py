"""Execution time of each chapter alone, in a fresh kernel, as `make execute` runs it.

Every `book/NN_*.ipynb` is read, executed by nbclient in a new `python3` kernel started from this Python
(working directory `book/`, as `jupyter nbconvert --execute` uses), and the executed copy is written to a
temporary folder that is deleted afterwards: the stored chapters are never touched. "wall" runs from
starting the kernel to shutting it down; "cells" is the sum of the cells' own execution times.
The course's budget (CONVENTIONS §3): about 30 s per chapter on 2 CPU cores, never above 60 s.
Run: .venv/bin/python benchmarks/chapter_times.py [--chapters 01 05] [--timeout 600]
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from common import machine, markdown_table

BOOK = Path(__file__).resolve().parent.parent / "book"
BUDGET_S, LIMIT_S = 30.0, 60.0


def cells_seconds(nb) -> float:
    """Sum of each code cell's execution time, from the timestamps nbclient records."""
    total = 0.0
    for cell in nb.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if start and end:
            start, end = (datetime.fromisoformat(t.rstrip("Z")) for t in (start, end))
            total += (end - start).total_seconds()
    return total


def execute(path: Path, out_dir: Path, timeout: int) -> tuple[float, float, str]:
    """Run one chapter; return (wall seconds, cell seconds, error text or "")."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}})
    error = ""
    t0 = time.perf_counter()
    try:
        # The kernel's own stderr (one warning about unencrypted local TCP) stays out of the table's output;
        # cell errors arrive as CellExecutionError.
        client.execute(stderr=subprocess.DEVNULL)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # no terminal colours in the table
        lines = [line for line in text.splitlines() if line.strip()]
        error = f"{type(e).__name__}: {lines[-1] if lines else ''}"[:120]
    wall = time.perf_counter() - t0
    nbformat.write(nb, out_dir / path.name)
    return wall, cells_seconds(nb), error


def flag(wall: float, error: str) -> str:
    if error:
        return f"FAILED ({error.replace('|', '/')})"
    if wall > LIMIT_S:
        return f"OVER {LIMIT_S:.0f} s LIMIT"
    if wall > BUDGET_S:
        return f"over {BUDGET_S:.0f} s budget"
    return "ok"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="*", help="chapter numbers (default: every book/NN_*.ipynb)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default %(default)s)")
    args = parser.parse_args()
    paths = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        paths = [p for p in paths if p.name[:2] in {c.zfill(2) for c in args.chapters}]

    print("### Chapter execution times\n")
    print(f"Each chapter alone in a fresh kernel (nbclient, cwd book/, default thread count); flags: "
          f"> {BUDGET_S:.0f} s over budget, > {LIMIT_S:.0f} s over the limit. {machine()}.\n")
    if not paths:
        print("No chapters (book/NN_*.ipynb) found.")
        return 0
    rows, failed, total = [], 0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            wall, cells, error = execute(path, Path(tmp), args.timeout)
            failed += bool(error)
            total += wall
            rows.append([path.name, f"{wall:.1f}", f"{cells:.1f}", flag(wall, error)])
    rows.append(["**total**", f"{total:.1f}", "", f"{failed} failed" if failed else ""])
    print(markdown_table(["chapter", "wall s", "cells s", "flag"], rows, align="lrrl"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
