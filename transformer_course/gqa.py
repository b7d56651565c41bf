"""Multi-query and grouped-query attention: KV-cache memory and converting checkpoints (Chapter 7).

The attention itself lives in `attention.py`: one `Attention(d_model, n_heads, n_kv_heads)` is multi-head
(`n_kv_heads == n_heads`), grouped-query (`1 < n_kv_heads < n_heads`) or multi-query (`n_kv_heads == 1`)
attention, and `attention()` stacks each group's query heads as rows of one matmul against their shared key
head, so it never copies keys or values. This module adds what the chapter needs around it:

- `kv_cache_bytes`: the memory a KV cache holds, 2 (K and V) x L x h_kv x d_k x T x B x bytes per number;
- `repeat_kv`: the naive way to run grouped-query attention, copying each key/value head to its query heads
  (what Hugging Face's eager Llama attention does);
- `mean_pool_kv_heads` / `mha_to_gqa`: turning a multi-head checkpoint into a grouped-query one by averaging
  the key and value projection heads of each group (Ainslie et al. 2023, §2.1);
- `held_out_loss`: a model's loss on `data.held_out_split`, the same unseen text for every model compared;
- `python -m transformer_course.gqa --uptrain`: convert the shipped `tiny` checkpoint and train it a little
  further ("uptraining"), writing `assets/checkpoints/tiny-mqa.pt`. `--control` trains `tiny` for the same
  steps without converting it (the multi-head control); `--seed N` changes the batch order; `--results`
  writes no weights, only a small JSON of the run's losses to `assets/results/NAME-seedN.json`
  (read it with `train.load_results`), e.g. `--uptrain --control --seed 2 --results`.

Leaves out: other conversions Ainslie et al. compare (choosing one head, random initialisation), multi-head
latent attention, and paged or quantised caches.
"""
import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

import torch

from .model import GPT, GPTConfig
from .utils import check_int, check_tensor, describe

UPTRAIN_STEPS = 150  # 10 % of the 1500 steps that made `tiny` (Ainslie et al. uptrain with 5 % of pre-training)


def kv_cache_bytes(config, seq_len: int, batch_size: int = 1, dtype_bytes: int = 4) -> int:
    """Bytes a KV cache holds for `seq_len` tokens of `batch_size` sequences.

    2 (K and V) x L x h_kv x d_k x T x B x dtype_bytes. `config` is a `GPTConfig` or a mapping with
    `n_layers`, `n_heads`, `d_model` and optionally `n_kv_heads` (default n_heads) and `d_k`
    (default d_model / n_heads), e.g. a published model's numbers. float32 is 4 bytes, bfloat16 2.
    """
    if isinstance(config, dict):
        missing = {"n_layers", "n_heads"} - config.keys()
        if missing or ("d_model" not in config and "d_k" not in config):
            raise ValueError(f"config needs n_layers, n_heads and d_model (or d_k), got keys {sorted(config)}")
        n_layers, n_heads = config["n_layers"], check_int("n_heads", config["n_heads"])
        h_kv = n_heads if config.get("n_kv_heads") is None else config["n_kv_heads"]
        d_k = config["d_k"] if "d_k" in config else check_int("d_model", config["d_model"]) // n_heads
        if "d_k" not in config and config["d_model"] % n_heads:
            raise ValueError(f"d_model={config['d_model']} must be divisible by n_heads={n_heads}")
    elif isinstance(config, GPTConfig):
        n_layers, h_kv, d_k = config.n_layers, config.h_kv, config.d_k
    else:
        raise ValueError(f"config must be a GPTConfig or a dict of numbers, got {describe(config)}")
    for name, value in (("n_layers", n_layers), ("n_kv_heads", h_kv), ("d_k", d_k), ("seq_len", seq_len),
                        ("batch_size", batch_size), ("dtype_bytes", dtype_bytes)):
        check_int(name, value)
    return 2 * n_layers * h_kv * d_k * seq_len * batch_size * dtype_bytes


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Copy each key/value head `n_rep` times: `(B, h_kv, T, d_k)` -> `(B, h_kv * n_rep, T, d_k)`.

    Head g lands on heads g*n_rep ... (g+1)*n_rep - 1, the query heads that read it. With h_kv > 1 and
    n_rep > 1 the reshape materialises n_rep copies; with h_kv == 1 (or n_rep == 1) the result is a view of x
    (stride 0 across the repeated heads). `attention.attention` gets the same result by grouping the queries.
    """
    check_tensor("x", x, ("B", "h_kv", "T", "d_k"))
    check_int("n_rep", n_rep)
    B, h_kv, T, d_k = x.shape
    return x[:, :, None].expand(B, h_kv, n_rep, T, d_k).reshape(B, h_kv * n_rep, T, d_k)


def mean_pool_kv_heads(w: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """Average the heads of a key or value projection in groups of n_heads / n_kv_heads consecutive heads.

    w: a weight `(n_heads * d_k, d_in)` or bias `(n_heads * d_k,)`, rows head by head (as in `nn.Linear`).
    Returns `(n_kv_heads * d_k, d_in)` (or `(n_kv_heads * d_k,)`): new head g is the mean of old heads
    g*r ... (g+1)*r - 1 with r = n_heads / n_kv_heads, the query heads that will share it.
    """
    check_int("n_heads", n_heads)
    check_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
    if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.dim() not in (1, 2) or w.shape[0] % n_heads:
        raise ValueError(f"w must be a floating-point (n_heads*d_k, d_in) or (n_heads*d_k,) with n_heads={n_heads}, "
                         f"got {describe(w)}")
    d_k = w.shape[0] // n_heads
    grouped = w.reshape(n_kv_heads, n_heads // n_kv_heads, d_k, *w.shape[1:])  # (h_kv, r, d_k, [d_in])
    return grouped.mean(dim=1).reshape(n_kv_heads * d_k, *w.shape[1:])


def mha_to_gqa(model: GPT, n_kv_heads: int) -> GPT:
    """A copy of `model` with `n_kv_heads` key/value heads, made by mean-pooling its key and value heads.

    Query, output, FFN, norm and embedding weights are copied unchanged. Works from any number of key/value
    heads that `n_kv_heads` divides (MHA -> GQA, GQA -> MQA). The original model is not modified.
    """
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a course GPT, got {type(model).__name__}")
    c = model.config
    check_int("n_kv_heads", n_kv_heads)
    if c.h_kv % n_kv_heads:
        raise ValueError(f"the model's {c.h_kv} key/value heads must be a multiple of n_kv_heads={n_kv_heads}")
    new_config = dataclasses.replace(c, n_kv_heads=n_kv_heads)
    q_dim, kv_dim = c.n_heads * c.d_k, c.h_kv * c.d_k
    state = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if ".attn.qkv." in name:  # fused rows [q; k; v]
            q, k, v = t.split([q_dim, kv_dim, kv_dim], dim=0)
            t = torch.cat([q, mean_pool_kv_heads(k, c.h_kv, n_kv_heads),
                           mean_pool_kv_heads(v, c.h_kv, n_kv_heads)], dim=0)
        elif ".attn.k_proj." in name or ".attn.v_proj." in name:
            t = mean_pool_kv_heads(t, c.h_kv, n_kv_heads)
        state[name] = t.clone()
    new = GPT(new_config)
    new.load_state_dict(state)
    device = next(model.parameters()).device
    return new.to(device).train(model.training)


def uptrain_config(steps: int = UPTRAIN_STEPS, seed: int = 1):
    """The schedule of the uptraining run: a short warm-up, then cosine decay from a third of tiny's peak rate."""
    from .training import TrainConfig

    check_int("steps", steps)
    return TrainConfig(steps=steps, batch_size=16, block_size=128, lr=1e-3, min_lr=1e-4,
                       warmup_steps=min(15, steps), eval_interval=max(1, min(50, steps)), eval_batches=20, seed=seed)


@functools.lru_cache(maxsize=4)
def _held_out_text(n_chars: int) -> str:
    from .data import held_out_split

    return held_out_split(n_chars).text


@torch.no_grad()
def held_out_loss(model: GPT, tokenizer, n_chars: int = 20_000) -> float:
    """Mean next-token loss of `model` on `data.held_out_split(n_chars)`, cut into context-length rows.

    The text is the same at every call (no sentence of it occurs in the course corpus), so two losses
    differ only because the models differ. Runs in eval mode and restores the model's previous mode.
    """
    from .tokenization import BPETokenizer

    if not isinstance(model, GPT):
        raise ValueError(f"model must be a course GPT, got {describe(model)}")
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError(f"tokenizer must be a BPETokenizer (the model's), got {describe(tokenizer)}")
    check_int("n_chars", n_chars)
    ids = torch.tensor(tokenizer.encode(_held_out_text(n_chars), allowed_special="all"))
    T = model.config.context_length
    n = (len(ids) - 1) // T * T
    if n == 0:
        raise ValueError(f"n_chars={n_chars} gives {len(ids)} tokens, fewer than one row of {T + 1}")
    device, was_training = next(model.parameters()).device, model.training
    loss = model.eval()(ids[:n].view(-1, T).to(device), ids[1: n + 1].view(-1, T).to(device))[1].item()
    model.train(was_training)
    return loss


def main(argv: list[str] | None = None) -> int:
    from .checkpoints import CHECKPOINT_DIR, load_checkpoint, save_checkpoint
    from .train import RESULTS_DIR, course_data, save_results
    from .training import estimate_loss, train

    parser = argparse.ArgumentParser(prog="python -m transformer_course.gqa",
                                     description="Convert a checkpoint to grouped-query attention and uptrain it.")
    parser.add_argument("--uptrain", action="store_true", required=True, help="convert, then train further")
    parser.add_argument("--source", default="tiny", help="checkpoint to convert (default: the shipped tiny)")
    parser.add_argument("--n-kv-heads", type=int, help="key/value heads after conversion (default 1: MQA)")
    parser.add_argument("--control", action="store_true",
                        help="no conversion: train the source as it is for the same steps (the control run)")
    parser.add_argument("--steps", type=int, default=UPTRAIN_STEPS, help=f"uptraining steps (default {UPTRAIN_STEPS})")
    parser.add_argument("--seed", type=int, help="seed of the batch order (default 1: the shipped tiny-mqa); a "
                                                 "checkpoint made with --seed is named NAME-seedN.pt")
    parser.add_argument("--results", action="store_true",
                        help="save no weights, only the run's losses as assets/results/NAME-seedN.json")
    parser.add_argument("--out", type=Path, help="output path (default: assets/checkpoints/NAME.pt, or with "
                                                 "--results assets/results/NAME-seedN.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.control and args.n_kv_heads is not None:
        parser.error("--control keeps the source's key/value heads: leave out --n-kv-heads")

    source, tokenizer, source_meta = load_checkpoint(args.source)
    n_kv_heads = source.config.h_kv if args.control else (1 if args.n_kv_heads is None else args.n_kv_heads)
    if n_kv_heads < 1 or source.config.h_kv % n_kv_heads:
        parser.error(f"--n-kv-heads must divide the source's {source.config.h_kv} key/value heads, got {n_kv_heads}")
    name = (f"{args.source}-control" if args.control else "tiny-mqa" if n_kv_heads == 1
            else f"tiny-gqa{n_kv_heads}")
    seed = 1 if args.seed is None else args.seed
    stem = name if args.seed is None else f"{name}-seed{seed}"  # never overwrite the shipped run by accident
    out = args.out or (RESULTS_DIR / f"{name}-seed{seed}.json" if args.results else CHECKPOINT_DIR / f"{stem}.pt")
    command = "python -m transformer_course.gqa " + " ".join(sys.argv[1:] if argv is None else argv)
    cfg = uptrain_config(args.steps, seed)
    train_ids, val_ids = course_data(tokenizer)
    model = mha_to_gqa(source, n_kv_heads)  # with --control: a plain copy
    torch.manual_seed(cfg.seed)
    before = estimate_loss(source, val_ids, cfg)
    held_out = {"source": held_out_loss(source, tokenizer), "converted": held_out_loss(model, tokenizer)}
    print(f"{args.source}: {source.config.h_kv} key/value heads -> {n_kv_heads}"
          f"{' (control: no conversion)' if args.control else ''}; seed {cfg.seed}; {torch.get_num_threads()} threads")

    started, cpu_started = time.perf_counter(), time.process_time()
    history = train(model, train_ids, val_ids, cfg, progress=not args.no_progress)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    held_out["final"] = held_out_loss(model, tokenizer)
    final = history[-1]
    record = dict(command=command, config_name=name, source=args.source, n_kv_heads=n_kv_heads,
                  control=args.control, source_steps=source_meta.get("steps"), steps=final["step"],
                  val_loss=final["val_loss"], train_loss=final["train_loss"], source_val_loss=before,
                  converted_val_loss=history[0]["val_loss"], held_out_loss=held_out,
                  train_seconds=round(seconds, 1), cpu_seconds=round(cpu_seconds, 1),
                  threads=torch.get_num_threads(), train_config=cfg.to_dict(), history=history)
    if args.results:
        save_results(out, model.config, record)
    else:
        save_checkpoint(out, model, tokenizer, **record)
    print(f"val loss: {before:.4f} before conversion, {history[0]['val_loss']:.4f} right after, "
          f"{final['val_loss']:.4f} after {final['step']} uptraining steps ({seconds:.0f} s)")
    print(f"held-out loss: {held_out['source']:.4f} before, {held_out['converted']:.4f} right after, "
          f"{held_out['final']:.4f} after")
    print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
