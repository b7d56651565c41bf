"""Sliding-window attention against sequence length: the chunked `banded_attention` vs the same band as a mask
on full attention (the course's manual path and PyTorch's fused SDPA) vs full causal attention (Chapter 8).

One attention layer, B=1, h heads, d_k, window w, float32, forward only under `torch.no_grad()`. Before any
time is reported the script asserts that banded attention equals the masked reference (< 1e-5) at every T.
Each cell is the least CPU time of this thread over `--repeats` runs (`time.thread_time`, so other programs
on a shared machine do not inflate it; with one thread all the work runs on this thread). Masked rows stop at
`--max-dense` because their T x T scores grow quadratically. The last line gives the fitted exponent p of
time ~ T^p per row.
Run: .venv/bin/python benchmarks/sparse_attention.py [--window 64 --heads 4 --d-k 32 --max-t 8192 --threads 1]
"""
import argparse
import math
import time

import torch

from common import add_threads_argument, fix_threads, machine, markdown_table
from transformer_course.attention import attention
from transformer_course.sparse_attention import banded_attention, sliding_window_mask


def least_cpu_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best


def exponent(Ts, ts):
    x = [math.log(T) for T in Ts]
    y = [math.log(t) for t in ts]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-k", type=int, default=32)
    parser.add_argument("--min-t", type=int, default=256)
    parser.add_argument("--max-t", type=int, default=8192)
    parser.add_argument("--max-dense", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_argument(parser)
    parser.set_defaults(threads=1)
    args = parser.parse_args()
    threads_line = fix_threads(args.threads)
    w = args.window
    rows = {
        "banded (chunked)": lambda q, k, v: banded_attention(q, k, v, w),
        "manual, window mask": lambda q, k, v: attention(q, k, v, causal=True, window=w),
        "SDPA, band mask": lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=sliding_window_mask(q.shape[2], w)),
        "manual, full causal": lambda q, k, v: attention(q, k, v, causal=True),
    }
    lengths = []
    T = args.min_t
    while T <= args.max_t:
        lengths.append(T)
        T *= 2
    times = {name: {} for name in rows}
    with torch.no_grad():
        for T in lengths:
            g = torch.Generator().manual_seed(T)
            q, k, v = (torch.randn(1, args.heads, T, args.d_k, generator=g) for _ in range(3))
            if T <= args.max_dense:
                ref = attention(q, k, v, causal=True, window=w)
                assert (banded_attention(q, k, v, w) - ref).abs().max() < 1e-5, T
            for name, fn in rows.items():
                if name == "banded (chunked)" or T <= args.max_dense:
                    times[name][T] = least_cpu_time(lambda: fn(q, k, v), args.repeats)
    print(f"One attention layer, h={args.heads}, d_k={args.d_k}, window {w}, B=1, float32, forward; "
          f"least CPU ms of {args.repeats} runs")
    print(machine())
    print(threads_line)
    print()
    headers = ["T"] + list(rows)
    table = [[T] + [f"{times[n][T] * 1e3:.2f}" if T in times[n] else "-" for n in rows] for T in lengths]
    table.append(["fitted p (time ~ T^p)"] + [f"{exponent(list(times[n]), list(times[n].values())):.2f}"
                                               for n in rows])
    print(markdown_table(headers, table))


if __name__ == "__main__":
    main()
