"""Time per update of the package's `train()` vs an equivalent plain PyTorch loop, at the tiny recipe's size.

The model and batch are `tiny`'s (L 4, h 4, d_model 128, V 1024; B 16 windows of T 128). An update is: sample
the batch, forward, loss, backward, clip the gradient norm to 1, AdamW step (weight decay on matrices only).
Rows:

- the update written as a plain loop (nanoGPT's shape: `torch.randint` windows, `F.cross_entropy`,
  `clip_grad_norm_`, `loss.item()`, `torch.optim.AdamW` with the same two parameter groups as `train()`);
- `train()` itself, which adds the schedule, its input checks, `train_step`'s checks and the norm's `.item()`;
- `train()` with `grad_accum_steps=2` of 8 windows each: the same 2048 tokens per update in two passes.

Every row is timed the same way: a forward pre-hook records when each update's first training forward
starts, and an update's time is the interval to the next one's, so sampling, backward, clipping, the step
and whatever the loop adds are all inside. The rows run in turn, `--repeats` times (ABCABC...), to spread
slow phases of a shared machine over all of them; the median over every timed update, then the 10th-90th
percentile and the ratio to the plain loop. The header gives the command, the date, the machine and its
load average before the run. The token stream is uniform random ids: a step's arithmetic does not depend
on the tokens.
Run: .venv/bin/python benchmarks/train_loop.py [--steps 30 --warmup 5 --repeats 2 --threads N]
"""
import argparse
import datetime
import os
import sys
import time

import torch
import torch.nn.functional as F

from common import add_threads_argument, fix_threads, machine, markdown_table, median_and_spread
from transformer_course.model import GPT
from transformer_course.train import CONFIGS
from transformer_course.training import TrainConfig, make_optimizer, train

MODEL_CONFIG, SCHEDULE = CONFIGS["tiny"]
BATCH, BLOCK = SCHEDULE.batch_size, SCHEDULE.block_size


def fresh_model() -> GPT:
    torch.manual_seed(0)
    return GPT(MODEL_CONFIG)


def update_starts(model: GPT) -> list[float]:
    """A list that receives the time at which every training-mode forward of `model` starts."""
    starts: list[float] = []
    model.register_forward_pre_hook(lambda m, args: starts.append(time.perf_counter()) if m.training else None)
    return starts


def intervals(starts: list[float], accum: int, warmup: int) -> list[float]:
    """Seconds per update: from one update's first forward to the next one's, the first `warmup` dropped."""
    first = starts[::accum]  # the first micro-batch's forward of each update
    return [b - a for a, b in zip(first, first[1:])][warmup:]


def time_train(ids: torch.Tensor, warmup: int, steps: int, accum: int = 1) -> list[float]:
    """Seconds per update of `train()`."""
    model = fresh_model()
    starts = update_starts(model)
    n = warmup + steps + 1  # n updates -> n - 1 intervals
    cfg = TrainConfig(steps=n, batch_size=BATCH // accum, block_size=BLOCK, lr=SCHEDULE.lr, min_lr=SCHEDULE.min_lr,
                      warmup_steps=0, eval_interval=n, eval_batches=1, grad_accum_steps=accum)
    train(model, ids, ids, cfg, progress=False, grad_norms=[])
    return intervals(starts, accum, warmup)


def time_plain_loop(ids: torch.Tensor, warmup: int, steps: int) -> list[float]:
    """Seconds per update of the same update written out as a plain PyTorch loop."""
    model = fresh_model().train()
    starts = update_starts(model)
    optimizer = make_optimizer(model, SCHEDULE)  # the same AdamW and parameter groups as train()
    generator, offsets = torch.Generator().manual_seed(0), torch.arange(BLOCK)
    for _ in range(warmup + steps + 1):
        idx = torch.randint(len(ids) - BLOCK, (BATCH, 1), generator=generator)
        x, y = ids[idx + offsets], ids[idx + offsets + 1]  # (B, T) each
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()
    return intervals(starts, 1, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed updates per row and repeat (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed updates first (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the rows (default %(default)s)")
    add_threads_argument(parser)
    args = parser.parse_args()
    threads = fix_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ids = torch.randint(MODEL_CONFIG.vocab_size, (100_000,), generator=torch.Generator().manual_seed(0))
    runs = {
        "plain PyTorch loop": lambda: time_plain_loop(ids, args.warmup, args.steps),
        "`train()`": lambda: time_train(ids, args.warmup, args.steps),
        "`train()`, `grad_accum_steps=2` x 8 windows": lambda: time_train(ids, args.warmup, args.steps, accum=2),
    }
    rows = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            rows[name] += run()
    plain = median_and_spread(rows["plain PyTorch loop"])[0]
    table = []
    for name, times in rows.items():
        median, low, high = median_and_spread(times)
        table.append([name, f"{median * 1e3:.0f}", f"{low * 1e3:.0f}-{high * 1e3:.0f}", f"{median / plain:.2f}"])
    command = "python benchmarks/train_loop.py " + " ".join(sys.argv[1:])
    print(f"### Time per update at the tiny recipe's size (B {BATCH}, T {BLOCK}, {fresh_model().num_parameters():,} "
          f"parameters)\n\n`{command.strip()}`, {datetime.date.today()}: {machine()}; {threads}; load average "
          f"{load:.1f} before the run; {args.repeats} x {args.steps} timed updates per row, each after "
          f"{args.warmup}.\n")
    print(markdown_table(["loop", "ms per update (median)", "10th-90th pct", "vs plain loop"], table))


if __name__ == "__main__":
    main()
