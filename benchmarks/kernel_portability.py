"""Do the chapters print the same text on every CPU? Execute each under three kernel settings and compare.

Runs every chapter (or those named: `kernel_portability.py 05 07`) in a fresh kernel with PyTorch's native
CPU kernels, with its AVX2 ones (what an AVX2 machine without AVX-512 computes, e.g. an AMD EPYC) and with
its portable ones (`ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2`, an older or different CPU),
into a temporary folder (the stored notebooks are left alone). Prints:

1. every `report_close` check: its tolerance and the actual difference under each setting, flagged where the
   tolerance is not 10x above the larger difference (CONVENTIONS §4);
2. every cell whose printed text (stdout, stderr, text/plain, text/html) differs from the native run,
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
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},  # e.g. AMD EPYC, older Intel
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
        streams, parts = {"stdout": "", "stderr": ""}, []
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                parts.append(f"[error] {output['ename']}: {output['evalue']}")
            if output["output_type"] == "stream":  # nbval compares each stream as a whole
                streams[output["name"]] += "".join(output["text"])
            for mime in ("text/plain", "text/html"):
                if mime in output.get("data", {}):
                    parts.append(f"[{mime}] " + "".join(output["data"][mime]))
        parts += [f"[{name}] {text}" for name, text in streams.items() if text]
        texts.append((number, "".join(parts)))
    return texts


def main(chapters: list[str]) -> int:
    notebooks = sorted(p for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb")
                       if not chapters or p.name[:2] in chapters)
    checks, differing, errors = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in notebooks:
            runs = {setting: execute(notebook, setting, pathlib.Path(tmp)) for setting in SETTINGS}
            logs = [rows for _, rows in runs.values()]
            if len({len(rows) for rows in logs}) > 1:
                print(f"{notebook.name}: {[len(rows) for rows in logs]} report_close calls", file=sys.stderr)
            for rows in zip(*logs):
                diffs = [row["diff"] for row in rows]
                checks.append((notebook.name[:2], rows[0]["name"] or "", rows[0]["atol"], diffs,
                               MARGIN * max(diffs) <= rows[0]["atol"]))
            texts = {setting: printed_text(path) for setting, (path, _) in runs.items()}
            for setting, cells in texts.items():
                errors += [(notebook.name, setting, cell, text) for cell, text in cells if "[error]" in text]
            for other in list(SETTINGS)[1:]:
                for (cell, text_a), (_, text_b) in zip(texts["native"], texts[other]):
                    if text_a != text_b:
                        lines = [(x, y) for x, y in zip(text_a.splitlines(), text_b.splitlines()) if x != y]
                        differing.append((notebook.name, cell, other, lines[:3]))
    print(f"| ch | check | atol | " + " | ".join(f"max diff, {s}" for s in SETTINGS) + f" | atol >= {MARGIN}x diff |")
    print("|---|---|---:|" + "---:|" * len(SETTINGS) + "---|")
    for ch, name, atol, diffs, ok in checks:
        print(f"| {ch} | {name.strip()[:60]} | {atol:g} | " + " | ".join(f"{d:.2e}" for d in diffs)
              + f" | {'yes' if ok else '**NO**'} |")
    for name, setting, cell, error in errors:
        print(f"- {name} cell {cell} raised under {setting}: {error[:200]}")
    print(f"\n{len(differing)} cells print different text than under the native kernels")
    for name, cell, other, lines in differing:
        print(f"- {name} cell {cell}, {other}:")
        for x, y in lines:
            print(f"    native : {x[:150]}\n    {other:7s}: {y[:150]}")
    flagged = sum(not ok for *_, ok in checks)
    print(f"{flagged} tolerances without a {MARGIN}x margin, {len(errors)} errors")
    return 1 if flagged or differing or errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
