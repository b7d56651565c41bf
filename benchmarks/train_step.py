"""Training-step time at nanoGPT's CPU config: the course GPT vs a plain PyTorch loop vs Hugging Face GPT-2.

nanoGPT's README trains on a CPU with block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128,
dropout=0; the vocabulary here is the course tokenizer's (V=1024). A step is: sample a batch, forward,
loss, backward, clip the gradient norm to 1, AdamW step. Rows:

- course GPT in `transformer_course.training.train` itself: the time between the starts of consecutive
  training forwards, taken by a forward pre-hook (so batch sampling, the schedule, `loss.item()` and the
  optimizer are all inside, exactly as `train` runs them);
- course GPT and Hugging Face `GPT2LMHeadModel` (same sizes, eager and SDPA attention) in the same
  hand-written loop (plain `torch.optim.AdamW`, `clip_grad_norm_`, cross-entropy on the logits);
- the course GPT with its fused paths (`norm_impl="fused"`, `attn_impl="sdpa"`);
- `PlainGPT`, a GPT-2 written the way nanoGPT's `model.py` writes it (one fused QKV linear, `nn.LayerNorm`,
  SDPA, tied head, no input checks): the floor a readable-but-fast model is measured against.

The token stream is uniform random ids: the arithmetic of a step does not depend on which tokens they are.
`--profile N` adds, for the plain-loop rows of the course model (readable and fused norms), PlainGPT and
HF GPT-2 (SDPA), where the time goes: the ops with the most self CPU time per step, from PyTorch's profiler
over N steps (the profiler's own overhead inflates every row alike).
Run: .venv/bin/python benchmarks/train_step.py [--steps 50 --warmup 10 --threads N --profile 20]
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from transformers import GPT2Config, GPT2LMHeadModel

from common import add_threads_argument, fix_threads, machine, markdown_table, median_and_spread
from transformer_course.model import GPT, GPTConfig
from transformer_course.training import TrainConfig, train

BLOCK, BATCH, LAYERS, HEADS, D_MODEL, VOCAB = 64, 12, 4, 4, 128, 1024
LR = 1e-3  # nanoGPT's CPU example
N_TOKENS = 100_000
ROUNDS = 5


def course_model(attn_impl: str) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.gpt2_like(vocab_size=VOCAB, context_length=BLOCK, n_layers=LAYERS, n_heads=HEADS,
                                   d_model=D_MODEL, dropout=0.0, attn_impl=attn_impl))


def fused_course_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.gpt2_like(vocab_size=VOCAB, context_length=BLOCK, n_layers=LAYERS, n_heads=HEADS,
                                   d_model=D_MODEL, dropout=0.0, attn_impl="sdpa", norm_impl="fused"))


class PlainBlock(nn.Module):
    """Pre-norm block, nanoGPT style: one (d, 3d) QKV linear, nn.LayerNorm, SDPA, tanh-GELU MLP."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (t.view(B, T, self.h, d // self.h).transpose(1, 2) for t in (q, k, v))  # (B, h, T, d_k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, d)
        x = x + self.c_proj(y)
        return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class PlainGPT(nn.Module):
    """GPT-2 the nanoGPT way, for timing only (same sizes and initialisation scale as the course model)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.wte, self.wpe = nn.Embedding(VOCAB, D_MODEL), nn.Embedding(BLOCK, D_MODEL)
        self.blocks = nn.ModuleList(PlainBlock(D_MODEL, HEADS) for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(D_MODEL)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith(("c_proj.weight", "proj.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return (self.ln_f(x) @ self.wte.weight.T,)  # tied head: logits (B, T, V)


def hf_model(attn_implementation: str) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_layer=LAYERS, n_head=HEADS, n_embd=D_MODEL,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                        attn_implementation=attn_implementation)
    model = GPT2LMHeadModel(config)
    assert model.config._attn_implementation == attn_implementation, model.config._attn_implementation
    return model


def course_train_runner(model: GPT, ids: torch.Tensor):
    """A function (warmup, steps) -> seconds of `steps` updates of `train()` on `model`, each measured from one
    training forward's start to the next one's. Each call is one `train()` run (a fresh AdamW)."""
    starts = []

    def stamp(module, args):
        if module.training:  # not the evaluations, which run in eval mode
            starts.append(time.perf_counter())

    model.register_forward_pre_hook(stamp)

    def run(warmup: int, steps: int) -> list[float]:
        starts.clear()
        n = warmup + steps + 1  # n forwards -> n - 1 intervals
        cfg = TrainConfig(steps=n, batch_size=BATCH, block_size=BLOCK, lr=LR, min_lr=LR / 10, warmup_steps=0,
                          weight_decay=0.1, grad_clip=1.0, eval_interval=n, eval_batches=1)
        train(model, ids, ids, cfg, progress=False)
        return [b - a for a, b in zip(starts, starts[1:])][warmup:]

    return run


def plain_loop_runner(model: torch.nn.Module, ids: torch.Tensor):
    """A function (warmup, steps) -> seconds per step of a hand-written nanoGPT-style loop on `model`
    (`model(x)` returns a tuple whose first item is the logits, or a Hugging Face output)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    offsets = torch.arange(BLOCK)

    def run(warmup: int, steps: int) -> list[float]:
        times = []
        for _ in range(warmup + steps):
            t0 = time.perf_counter()
            starts = torch.randint(len(ids) - BLOCK, (BATCH, 1), generator=generator)
            x, y = ids[starts + offsets], ids[starts + offsets + 1]  # (B, T) each
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out.logits  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss.item()
            times.append(time.perf_counter() - t0)
        return times[warmup:]

    return run


def profile_table(runners: dict, steps: int, top: int = 8) -> str:
    """The `top` ops by self CPU time per step of each runner, over `steps` profiled steps."""
    columns, totals = {}, {}
    for name, run in runners.items():
        run(3, 1)  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(0, steps)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        totals[name] = sum(e.self_cpu_time_total for e in events) / steps / 1e3
        columns[name] = [f"`{e.key.removeprefix('aten::')}` {e.self_cpu_time_total / steps / 1e3:.1f}"
                         for e in events[:top]]
    rows = [[f"{rank + 1}"] + [columns[name][rank] for name in runners] for rank in range(top)]
    rows.append(["all ops"] + [f"{totals[name]:.1f}" for name in runners])
    return markdown_table(["rank"] + list(runners), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per row (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default %(default)s)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N plain-loop steps of four rows (default 0: no profile)")
    add_threads_argument(parser)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.profile < 0:
        parser.error("--steps must be >= 1, --warmup and --profile >= 0")
    threads = fix_threads(args.threads)
    ids = torch.randint(VOCAB, (N_TOKENS,), generator=torch.Generator().manual_seed(0))

    runners = {
        "course GPT, `train()` (manual attention)": course_train_runner(course_model("manual"), ids),
        "course GPT, `train()` (attn_impl=\"sdpa\")": course_train_runner(course_model("sdpa"), ids),
        "course GPT, plain loop (manual attention)": plain_loop_runner(course_model("manual"), ids),
        "course GPT, plain loop (attn_impl=\"sdpa\")": plain_loop_runner(course_model("sdpa"), ids),
        "course GPT, plain loop (sdpa, norm_impl=\"fused\")": plain_loop_runner(fused_course_model(), ids),
        "course GPT, `train()` (sdpa, norm_impl=\"fused\")": course_train_runner(fused_course_model(), ids),
        "PlainGPT (nanoGPT-style), plain loop": plain_loop_runner(PlainGPT(), ids),
        "HF GPT2LMHeadModel, plain loop (eager)": plain_loop_runner(hf_model("eager"), ids),
        "HF GPT2LMHeadModel, plain loop (sdpa)": plain_loop_runner(hf_model("sdpa"), ids),
    }
    params = {"course": sum(p.numel() for p in course_model("manual").parameters()),
              "HF": sum(p.numel() for p in hf_model("eager").parameters()),
              "PlainGPT": sum(p.numel() for p in PlainGPT().parameters())}
    # Interleave: every row gets its steps in `rounds` slices, so a burst of load elsewhere on the machine
    # hits all rows alike instead of one.
    times = {name: [] for name in runners}
    per_round = -(-args.steps // ROUNDS)
    for r in range(ROUNDS):
        for name, run in runners.items():
            times[name] += run(args.warmup if r == 0 else 2, per_round)
    rows, floor = [], median_and_spread(times["PlainGPT (nanoGPT-style), plain loop"])[0]
    for name, t in times.items():
        median, p10, p90 = median_and_spread(t)
        rows.append([name, f"{median * 1e3:.1f}", f"{p10 * 1e3:.1f}–{p90 * 1e3:.1f}", f"{BATCH * BLOCK / median:,.0f}",
                     f"{median / floor:.2f}"])

    print("### Training step, nanoGPT CPU config\n")
    print(f"B={BATCH}, T={BLOCK}, L={LAYERS}, h={HEADS}, d_model={D_MODEL}, V={VOCAB}, dropout 0, float32; "
          f"AdamW + clip 1.0; parameters: course {params['course']:,}, HF {params['HF']:,}, "
          f"PlainGPT {params['PlainGPT']:,}. "
          f"Median over {per_round * ROUNDS} steps per row, taken in {ROUNDS} interleaved rounds after "
          f"{args.warmup} warm-up steps; {threads}. {machine()}.\n")
    print(markdown_table(["model, loop", "ms/step (median)", "p10–p90 ms", "tokens/s", "x PlainGPT"], rows))
    if args.profile:
        profiled = {"course, readable norm (sdpa)": runners["course GPT, plain loop (attn_impl=\"sdpa\")"],
                    "course, fused norm (sdpa)": runners["course GPT, plain loop (sdpa, norm_impl=\"fused\")"],
                    "PlainGPT": runners["PlainGPT (nanoGPT-style), plain loop"],
                    "HF GPT-2 (sdpa)": runners["HF GPT2LMHeadModel, plain loop (sdpa)"]}
        print(f"\n### Where a step's time goes: self CPU ms per step, {args.profile} profiled steps\n")
        print(profile_table(profiled, args.profile))


if __name__ == "__main__":
    main()
