"""TFLOP/s of the Triton kernel (`flash.triton_attention`) against PyTorch's SDPA on a GPU
(Chapter 15).

Causal attention forward, float16, head dimension d in {64, 128}, T from 1k to 16k, with
B * T = 16k tokens and h * d = 2048 (the set-up of the FlashAttention papers' benchmarks). FLOPs
are counted as FlashAttention-2 counts them: 4 B h T^2 d for QK^T and PV, halved for causal
attention. Each kernel is timed with `triton.testing.do_bench` (median of CUDA-event timings); the
Triton kernel tries a few block sizes and launch options per point, and the best is reported with
its settings. Before timing, the outputs are checked against SDPA (< 2e-2 in float16). Nothing
here runs without a CUDA GPU: the script then says so and exits (status 0).
Run: python benchmarks/flash_gpu.py [--max-t 16384 --tokens 16384 --width 2048]
"""
import argparse
import sys

import torch
import torch.nn.functional as F

from common import machine, markdown_table
from transformer_course.flash import triton_attention

CONFIGS = [  # block_q, block_k, num_warps, num_stages
    (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 4),
]


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-t", type=int, default=1024)
    parser.add_argument("--max-t", type=int, default=16384)
    parser.add_argument("--tokens", type=int, default=16384, help="B * T for every point")
    parser.add_argument("--width", type=int, default=2048, help="h * d for every point")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("flash_gpu.py: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "nothing measured. Run it where a GPU is present.")
        return 0
    try:
        import triton
        import triton.testing
        from triton.runtime.errors import OutOfResources
    except ImportError:
        print("flash_gpu.py: triton is not installed; nothing measured.")
        return 0
    rows = []
    for d in (64, 128):
        T = args.min_t
        while T <= args.max_t:
            B, h = max(1, args.tokens // T), args.width // d
            g = torch.Generator(device="cuda").manual_seed(T + d)
            q, k, v = (torch.randn(B, h, T, d, device="cuda", dtype=torch.float16, generator=g)
                       for _ in range(3))
            flops = 4 * B * h * T * T * d / 2  # causal: half of the T x T scores
            ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            sdpa_ms = triton.testing.do_bench(
                lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
            best = None
            for bq, bk, warps, stages in CONFIGS:
                def run():
                    return triton_attention(q, k, v, causal=True, block_q=bq, block_k=bk,
                                            num_warps=warps, num_stages=stages)[0]
                try:
                    error = (run().float() - ref.float()).abs().max().item()
                except OutOfResources as exc:  # settings needing more shared memory than it has
                    print(f"  d={d} T={T} {(bq, bk, warps, stages)}: {exc}", file=sys.stderr)
                    continue
                assert error < 2e-2, (d, T, bq, bk, error)
                ms = triton.testing.do_bench(run)
                if best is None or ms < best[0]:
                    best = (ms, f"{bq}x{bk}, {warps} warps, {stages} stages")
            if best is None:
                raise RuntimeError(f"no Triton settings ran at d={d}, T={T}")
            rows.append([d, T, B, h, f"{tflops(flops, sdpa_ms):.0f}",
                         f"{tflops(flops, best[0]):.0f}", f"{sdpa_ms / best[0]:.2f}", best[1]])
            print(f"  d={d} T={T}: SDPA {sdpa_ms:.3f} ms, Triton {best[0]:.3f} ms", file=sys.stderr)
            T *= 2
    print(f"Causal attention forward, float16, B*T = {args.tokens} tokens, h*d = {args.width}; "
          f"TFLOP/s = 4 B h T^2 d / 2 / time (do_bench median)")
    print(f"{machine()}; GPU {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, "
          f"triton {triton.__version__}")
    print()
    print(markdown_table(["d", "T", "B", "h", "SDPA TFLOP/s", "Triton TFLOP/s", "Triton / SDPA",
                          "Triton settings"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
