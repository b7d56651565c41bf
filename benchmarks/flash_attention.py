"""Attention forward pass against sequence length on the CPU (Chapter 15): naive (the course's
manual path, which forms the T x T scores), tiled (`flash.tiled_attention_forward`, plain PyTorch),
PyTorch's fused SDPA and, at small T only, the Triton kernel (`flash.triton_attention`) under
Triton's interpreter, a slow simulation.

Causal, B=1, h heads of d_k, float32, forward only under `torch.no_grad()`. Every (implementation,
T) point runs in a Python process of its own, which warms the implementation up on a tiny input,
makes q, k, v, reads its peak resident set (`resource.getrusage(...).ru_maxrss`), calls the
implementation once and reports the growth of the peak as the call's extra memory; then checks the
output against SDPA (< 1e-4) and reports the least CPU time of this thread over up to `--repeats`
runs (`time.thread_time`; fewer once 10 s are spent). The counted column is one T x T score matrix
(h T^2 x 4 bytes), of which naive attention holds several at once. Targets (issue 11): the tiled
path's extra memory <= 5 % of naive's at T = 8192, and its time <= 1.5x SDPA's at T = 1024.
Run: .venv/bin/python benchmarks/flash_attention.py [--max-t 8192 --max-naive 8192 --max-triton 512]
(naive at T = 8192 needs about 6 GB and tens of seconds: --max-naive 4096 while developing)
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import add_threads_argument, fix_threads, machine, markdown_table
from transformer_course.attention import attention
from transformer_course.flash import tiled_attention_forward, triton_attention

IMPLS = ("naive", "tiled", "SDPA", "Triton (interpreter)")


def implementation(name, block_q, block_k):
    return {
        "naive": lambda q, k, v: attention(q, k, v, causal=True),
        "tiled": lambda q, k, v: tiled_attention_forward(
            q, k, v, causal=True, block_q=block_q, block_k=block_k)[0],
        "SDPA": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "Triton (interpreter)": lambda q, k, v: triton_attention(q, k, v, causal=True)[0],
    }[name]


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def measure(args) -> dict:
    """One point, in this process: extra peak memory of one call, then the least CPU time."""
    fn = implementation(args.point, args.block_q, args.block_k)
    g = torch.Generator().manual_seed(args.t)
    with torch.no_grad():
        fn(*(torch.randn(1, args.heads, 64, args.d_k, generator=g) for _ in range(3)))  # warm-up
        q, k, v = (torch.randn(1, args.heads, args.t, args.d_k, generator=g) for _ in range(3))
        before = peak_rss_bytes()
        out = fn(q, k, v)
        extra = peak_rss_bytes() - before
        error = (out - F.scaled_dot_product_attention(q, k, v, is_causal=True)).abs().max().item()
        assert error < 1e-4, (args.point, args.t, error)
        del out
        times, spent = [], time.perf_counter()
        while len(times) < args.repeats and (not times or time.perf_counter() - spent < 10):
            start = time.thread_time()
            fn(q, k, v)
            times.append(time.thread_time() - start)
    return dict(seconds=min(times), runs=len(times), extra_bytes=extra)


def run_point(name, T, args) -> dict:
    options = dict(point=name, t=T, heads=args.heads, d_k=args.d_k, repeats=args.repeats,
                   block_q=args.block_q, block_k=args.block_k, threads=args.threads)
    command = [sys.executable, __file__]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "TRITON_INTERPRET": "1"} if name.startswith("Triton") else None
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        raise RuntimeError(f"{name} at T={T} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d-k", type=int, default=64)
    parser.add_argument("--min-t", type=int, default=256)
    parser.add_argument("--max-t", type=int, default=8192)
    parser.add_argument("--max-naive", type=int, default=8192, help="largest T for naive attention")
    parser.add_argument("--max-triton", type=int, default=512,
                        help="largest T for the kernel under the interpreter")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block-q", type=int, default=256, help="tiled: queries per block")
    parser.add_argument("--block-k", type=int, default=256, help="tiled: keys per block")
    parser.add_argument("--point", choices=IMPLS, help=argparse.SUPPRESS)  # one point: a child
    parser.add_argument("--t", type=int, help=argparse.SUPPRESS)
    add_threads_argument(parser)
    parser.set_defaults(threads=1)
    args = parser.parse_args()
    threads_line = fix_threads(args.threads)
    if args.point:
        print(json.dumps(measure(args)))
        return
    lengths, T = [], args.min_t
    while T <= args.max_t:
        lengths.append(T)
        T *= 2
    limit = {"naive": args.max_naive, "Triton (interpreter)": args.max_triton}
    results = {}
    for T in lengths:
        for name in IMPLS:
            if T <= limit.get(name, T):
                results[name, T] = run_point(name, T, args)
                print(f"  {name:22s} T={T:5d}: {results[name, T]}", file=sys.stderr, flush=True)

    def cell(name, T, key, unit):
        r = results.get((name, T))
        return "-" if r is None else f"{r[key] / unit:.1f}"

    def ratio(a, b, T, key):
        ra, rb = results.get((a, T)), results.get((b, T))
        return "-" if ra is None or rb is None else f"{ra[key] / rb[key]:.3g}"

    MiB = 2**20
    print(f"Causal attention forward, B=1, h={args.heads}, d_k={args.d_k}, float32, CPU; tiled "
          f"blocks {args.block_q} x {args.block_k}; least CPU ms of up to {args.repeats} runs; "
          "extra memory = growth of the peak resident set during one call, each point in its own "
          "process")
    print(machine())
    print(threads_line)
    print()
    headers = (["T"] + [f"{n} ms" for n in IMPLS] + [f"{n} extra MiB" for n in IMPLS]
               + ["T x T scores MiB (counted)", "tiled / SDPA time", "tiled / naive memory"])
    rows = [[T] + [cell(n, T, "seconds", 1e-3) for n in IMPLS]
            + [cell(n, T, "extra_bytes", MiB) for n in IMPLS]
            + [f"{args.heads * T * T * 4 / MiB:.0f}", ratio("tiled", "SDPA", T, "seconds"),
               ratio("tiled", "naive", T, "extra_bytes")] for T in lengths]
    print(markdown_table(headers, rows))
    print()
    targets = ((1024, "seconds", 1.5, "SDPA", "time vs SDPA"),
               (8192, "extra_bytes", 0.05, "naive", "extra memory vs naive"))
    for T, key, target, other, what in targets:
        if ("tiled", T) in results and (other, T) in results:
            r = results["tiled", T][key] / results[other, T][key]
            verdict = "met" if r <= target else "NOT met"
            print(f"Target at T={T}: tiled {what} {r:.3g} (<= {target}): {verdict}")


if __name__ == "__main__":
    main()
