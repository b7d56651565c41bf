"""`make bench`: every benchmark of the course, one after the other, each in its own Python process.

Prints the Markdown tables of every script in `SCRIPTS`, in order, with
the load of the machine before and after each (other work on the machine skews the times: read the tables
with it in mind). Exits non-zero if any script failed. Nothing is downloaded. About 8 minutes here
(2 CPU cores; flash_attention.py alone about 5 minutes and 6 GB of memory) plus the chapters' own time.
Run: .venv/bin/python benchmarks/run_all.py
"""
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["train_step.py", "train_loop.py", "generation.py", "tokenizer_training.py", "sparse_attention.py", "flash_attention.py",
           "flash_gpu.py", "chapter_times.py"]


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    print("## Benchmarks\n")
    failed, t_all = [], time.perf_counter()
    for script in SCRIPTS:
        before, t0 = load(), time.perf_counter()
        sys.stdout.flush()
        code = subprocess.call([sys.executable, str(HERE / script)], cwd=HERE.parent)
        print(f"\n_{script}: {time.perf_counter() - t0:.0f} s; {before} before, {load()} after._\n", flush=True)
        if code:
            failed.append(f"{script} (exit {code})")
    print(f"_All benchmarks: {time.perf_counter() - t_all:.0f} s._")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
