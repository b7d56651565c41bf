"""Do the chapters print the same text on every CPU? Execute each under two kernel settings and compare.

Runs every chapter (or those named: `kernel_portability.py 05 07`) twice in a fresh kernel, with PyTorch's
native CPU kernels and with its portable ones (`ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2`,
what an older or different CPU computes), into a temporary folder (the stored notebooks are left alone).
Prints two tables:

1. every `report_close` check: its tolerance and the actual difference under each setting, flagged where the
   tolerance is not 10x above the larger difference (CONVENTIONS §4);
2. every cell whose printed text (stdout, stderr, text/plain, text/html) differs between the two runs,
   `NBVAL_IGNORE_OUTPUT` and `NBVAL_SKIP` cells excepted: each one would fail nbval on some reader's CPU.
Cells run on after an error (`--allow-errors`), so one failing check does not hide the rest; errors are listed.

Apple silicon cannot be tried here; the 10x margin is its protection.
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SETTINGS = {
    "native": {},
    "portable": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
MARGIN = 10


def execute(notebook: pathlib.Path, setting: str, out_dir: pathlib.Path) -> tuple[pathlib.Path, list[dict]]:
    log = out_dir / f"{notebook.stem}-{setting}.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TC_LOG_DIFFS": str(log),
           **SETTINGS[setting]}
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--allow-errors",
                    str(notebook), "--output-dir", str(out_dir), "--output", f"{notebook.stem}-{setting}",
                    "--ExecutePreprocessor.timeout=600", "--ExecutePreprocessor.kernel_name=python3"],
                   env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return out_dir / f"{notebook.stem}-{setting}.ipynb", rows


def printed_text(path: pathlib.Path) -> list[tuple[int, str]]:
    """(cell number, its printed text) for each code cell that nbval compares."""
    cells = json.loads(path.read_text())["cells"]
    texts = []
    for number, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        tags = cell.get("metadata", {}).get("tags", [])
        if "NBVAL_IGNORE_OUTPUT" in source or "NBVAL_SKIP" in source or {"nbval-ignore-output", "nbval-skip"} & set(tags):
            continue
        parts = []
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                parts.append(f"[error] {output['ename']}: {output['evalue']}")
            if output["output_type"] == "stream":
                parts.append(f"[{output['name']}] " + "".join(output["text"]))
            for mime in ("text/plain", "text/html"):
                if mime in output.get("data", {}):
                    parts.append(f"[{mime}] " + "".join(output["data"][mime]))
        texts.append((number, "".join(parts)))
    return texts


def main(chapters: list[str]) -> int:
    notebooks = sorted(p for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb")
                       if not chapters or p.name[:2] in chapters)
    flagged = 0
    checks, differing, errors = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in notebooks:
            runs = {setting: execute(notebook, setting, pathlib.Path(tmp)) for setting in SETTINGS}
            (native_nb, native), (portable_nb, portable) = runs["native"], runs["portable"]
            if len(native) != len(portable):
                print(f"{notebook.name}: {len(native)} vs {len(portable)} report_close calls", file=sys.stderr)
            for a, b in zip(native, portable):
                ok = MARGIN * max(a["diff"], b["diff"]) <= a["atol"]
                flagged += not ok
                checks.append((notebook.name[:2], a["name"] or "", a["atol"], a["diff"], b["diff"], ok))
            for setting, path in (("native", native_nb), ("portable", portable_nb)):
                errors += [(notebook.name, setting, cell, text) for cell, text in printed_text(path) if "[error]" in text]
            for (cell, text_a), (_, text_b) in zip(printed_text(native_nb), printed_text(portable_nb)):
                if text_a != text_b:
                    lines = [(x, y) for x, y in zip(text_a.splitlines(), text_b.splitlines()) if x != y]
                    differing.append((notebook.name, cell, lines[:3]))
    print(f"| ch | check | atol | max diff, native | max diff, portable | atol >= {MARGIN}x diff |")
    print("|---|---|---:|---:|---:|---|")
    for ch, name, atol, a, b, ok in checks:
        print(f"| {ch} | {name[:60]} | {atol:g} | {a:.2e} | {b:.2e} | {'yes' if ok else '**NO**'} |")
    for name, setting, cell, error in errors:
        print(f"- {name} cell {cell} raised under {setting}: {error[:200]}")
    print(f"\n{len(differing)} cells print different text under the two settings")
    for name, cell, lines in differing:
        print(f"- {name} cell {cell}:")
        for x, y in lines:
            print(f"    native  : {x[:150]}\n    portable: {y[:150]}")
    return 1 if flagged or differing or errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
