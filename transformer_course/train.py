"""Make the course checkpoints: `python -m transformer_course.train --config tiny` (Chapter 13).

Each named config in `CONFIGS` pairs a model (`GPTConfig`) with a schedule (`TrainConfig`). The data is the
course corpus, `synthetic_corpus(seed=0)`, tokenized with the course tokenizer and split 90/10 into train and
validation tokens, unless `DATA` gives the config other data. The result is one checkpoint file (`checkpoints.py`) that chapters load with
`load_checkpoint("tiny")`. Most configs start from random weights; those in `START_FROM` continue a shipped
checkpoint, converted first to fewer key/value heads (`gqa.mha_to_gqa`): Chapter 7's MQA uptraining.

`--seed N` retrains a config with another seed (initial weights, batch order, dropout). `--results` writes no
weights, only what a chapter reads of a run: a small JSON in `assets/results/` (config, command, time,
losses and the evaluation history), e.g. `--config small-tied --seed 1 --results` for a repeat over seeds.

Leaves out: resuming a run, real corpora and hyper-parameter search.
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from .checkpoints import CHECKPOINT_DIR, load_checkpoint, save_checkpoint
from .data import EOT, held_out_split, sentences, synthetic_corpus, train_val_split
from .gqa import mha_to_gqa
from .memory import memory_data
from .model import GPT, GPTConfig
from .tokenization import COURSE_VOCAB_SIZE, load_course_tokenizer
from .training import TrainConfig, estimate_loss, held_out_loss, train

TINY = GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=128, n_layers=4, n_heads=4, d_model=128)
# Uptraining (Chapter 7): 150 steps, 10 % of tiny's 1500 (Ainslie et al. uptrain with 5 % of pre-training), a
# short warm-up, then cosine decay from a third of tiny's peak rate. Seed 1: the batch order of tiny-mqa.
UPTRAIN = TrainConfig(steps=150, batch_size=16, block_size=128, lr=1e-3, min_lr=1e-4, warmup_steps=15,
                      eval_interval=50, eval_batches=20, seed=1)

CONFIGS: dict[str, tuple[GPTConfig, TrainConfig]] = {
    # The course checkpoint: GPT-2 flavoured (learned positions, LayerNorm, GELU, tied LM head).
    "tiny": (
        TINY,
        TrainConfig(steps=1500, batch_size=16, block_size=128, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                    eval_interval=250, eval_batches=20, seed=0),
    ),
    # The same size, Llama flavoured: RoPE, RMSNorm, SwiGLU, grouped-query attention with 2 KV heads.
    "tiny-llama": (
        GPTConfig.llama_like(vocab_size=COURSE_VOCAB_SIZE, context_length=128, n_layers=4, n_heads=4,
                             n_kv_heads=2, d_model=128),
        TrainConfig(steps=1500, batch_size=16, block_size=128, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                    eval_interval=250, eval_batches=20, seed=0),
    ),
    # Chapter 3's weight-tying pair: one small GPT-2-flavoured model trained twice with the same schedule and
    # seed, once with the LM head tied to the token table and once with a head of its own.
    "small-tied": (
        GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=128, n_layers=2, n_heads=4, d_model=64),
        TrainConfig(steps=1500, batch_size=16, block_size=128, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                    eval_interval=250, eval_batches=20, seed=0),
    ),
    "small-untied": (
        GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=128, n_layers=2, n_heads=4, d_model=64,
                            tie_weights=False),
        TrainConfig(steps=1500, batch_size=16, block_size=128, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                    eval_interval=250, eval_batches=20, seed=0),
    ),
    # Chapter 8's quality cost of local attention: "small-tied" (both layers global) with a sliding window of
    # 8 tokens in both layers, or in the first layer only (local, then global, as GPT-3 alternates them).
    **{
        f"local-{kind}": (
            GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=128, n_layers=2, n_heads=4,
                                d_model=64, attention_window=8, layer_pattern=pattern),
            TrainConfig(steps=1500, batch_size=16, block_size=128, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                        eval_interval=250, eval_batches=20, seed=0),
        )
        for kind, pattern in (("all", ("local", "local")), ("alternating", ("local", "global")))
    },
    # Chapter 4's length-extrapolation models: one small GPT-2-flavoured model per positional scheme, with the
    # same schedule and seed. context_length=128 lets them be evaluated on 128 tokens, but they train on windows
    # of block_size=64, so positions 64..127 never occur in training (rows 64..127 of a learned table never
    # receive a gradient).
    **{
        f"pos-{scheme}": (
            GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=128, n_layers=2, n_heads=4,
                                d_model=64, positional=scheme),
            TrainConfig(steps=1500, batch_size=32, block_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                        eval_interval=250, eval_batches=20, seed=0),
        )
        for scheme in ("none", "learned", "sinusoidal", "rope", "alibi")
    },
    # pos-sinusoidal with the token embeddings multiplied by sqrt(d_model) before the table is added, as the
    # 2017 Transformer does (Vaswani et al. §3.4): does the scale rescue the sinusoidal model?
    "pos-sinusoidal-scaled": (
        GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=128, n_layers=2, n_heads=4, d_model=64,
                            positional="sinusoidal", scale_embeddings=True),
        TrainConfig(steps=1500, batch_size=32, block_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                    eval_interval=250, eval_batches=20, seed=0),
    ),
    # Chapter 7: tiny converted to one key/value head by mean-pooling, then uptrained; and the control, tiny
    # itself trained for the same steps on the same batches (see START_FROM).
    "tiny-mqa": (dataclasses.replace(TINY, n_kv_heads=1), UPTRAIN),
    "tiny-control": (TINY, UPTRAIN),
    # ---- Chapter 9 (layer norm)
    # small-tied with RMSNorm in place of LayerNorm, nothing else changed (the Linears keep their biases).
    "small-rmsnorm": (
        GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=128, n_layers=2, n_heads=4, d_model=64,
                            norm="rmsnorm"),
        TrainConfig(steps=1500, batch_size=16, block_size=128, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                    eval_interval=250, eval_batches=20, seed=0),
    ),
    # Pre-norm vs post-norm (Xiong et al. 2020), with and without learning-rate warm-up: 8 blocks, d_model 64,
    # a high peak rate (1e-2) and no gradient clipping, so that nothing but the norm's place and the warm-up
    # differ; and both again at a lower peak rate (3e-3, suffix "-lr3e-3").
    **{
        f"deep-{position}-{'warmup' if warmup else 'nowarmup'}{suffix}": (
            GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=64, n_layers=8, n_heads=4,
                                d_model=64, norm_position=position),
            TrainConfig(steps=300, batch_size=16, block_size=64, lr=lr, min_lr=min_lr, warmup_steps=warmup,
                        grad_clip=0.0, eval_interval=50, eval_batches=10, seed=0),
        )
        for position, lr, min_lr, suffix in (("pre", 1e-2, 1e-3, ""), ("post", 1e-2, 1e-3, ""),
                                             ("post", 3e-3, 3e-4, "-lr3e-3"), ("pre", 3e-3, 3e-4, "-lr3e-3"))
        for warmup in (0, 100)
    },
    # ---- Chapter 10 (feed-forward network)
    # The width sweep: small-tied's shape (L 2, d_model 64) with FFN width d_ff = 0 (no FFN), d_model or
    # 4*d_model, on memory.memory_data (160 fictional facts stated 0..256 times in ~1 epoch of fact-free text;
    # see DATA). context_length 64 keeps each checkpoint under 0.7 MB; 32 x 64 tokens per step as small-tied.
    **{
        f"facts-dff{d_ff}": (
            GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=64, n_layers=2, n_heads=4,
                                d_model=64, d_ff=d_ff),
            TrainConfig(steps=1000, batch_size=32, block_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                        eval_interval=250, eval_batches=20, seed=0),
        )
        for d_ff in (0, 64, 256)
    },
    # ---- Chapter 11 (transformer block)
    # Depth vs width at (nearly) equal parameter count: small-tied's size (L 2, d_model 64, 173,824 parameters)
    # made shallower and wider or deeper and narrower, d_model chosen so the total stays within 3.1 % of it;
    # 500 steps (a third of small-tied's schedule) so the four runs fit in about 6 CPU-minutes.
    **{
        f"depth-{n_layers}": (
            GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=128, n_layers=n_layers, n_heads=4,
                                d_model=d_model),
            TrainConfig(steps=500, batch_size=16, block_size=128, lr=3e-3, min_lr=3e-4, warmup_steps=50,
                        eval_interval=100, eval_batches=20, seed=0),
        )
        for n_layers, d_model in ((1, 80), (2, 64), (4, 48), (8, 36))
    },
    # ---- Chapter 13 (training)
    # Overfitting: small-tied's shape (dropout 0) trained 600 steps of 16 x 64 tokens on the first 5,000 tokens
    # of the course's train split (about 120 epochs), validated on the held-out split; the fix measured: the
    # same run on 200,000 tokens (about 3 epochs). See DATA.
    **{
        f"slice-{size}": (
            GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=64, n_layers=2, n_heads=4, d_model=64),
            TrainConfig(steps=600, batch_size=16, block_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=50,
                        eval_interval=50, eval_batches=10, seed=0),
        )
        for size in ("5k", "200k")
    },
    # The learning-rate sweep: the same model, 300 steps of 16 x 64 tokens of the course data, peak rates
    # 3e-4 .. 3e-2 (min_lr a tenth of the peak).
    **{
        f"lr-{lr:g}": (
            GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=64, n_layers=2, n_heads=4, d_model=64),
            TrainConfig(steps=300, batch_size=16, block_size=64, lr=lr, min_lr=lr / 10, warmup_steps=30,
                        eval_interval=100, eval_batches=10, seed=0),
        )
        for lr in (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    },
    # The mini scaling experiment: L 2, d_model 16 .. 128, each 500 steps of 16 x 64 tokens (512,000) read in
    # order from a fresh 10 MB sample (about 2.5 M tokens, so no token is read twice), validated on the
    # held-out split. See DATA.
    **{
        f"scale-d{d_model}": (
            GPTConfig.gpt2_like(vocab_size=COURSE_VOCAB_SIZE, context_length=64, n_layers=2, n_heads=4,
                                d_model=d_model),
            TrainConfig(steps=500, batch_size=16, block_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=50,
                        eval_interval=100, eval_batches=20, seed=0, sampling="sequential"),
        )
        for d_model in (16, 32, 64, 128)
    },
    # ---- end of the chapter recipes
}

# Configs that continue a shipped checkpoint: name -> the checkpoint, converted to the config's key/value heads.
START_FROM = {"tiny-mqa": "tiny", "tiny-control": "tiny"}

# Configs trained on other data than the course corpus: name -> function(tokenizer) -> (train_ids, val_ids).
DATA = {f"facts-dff{d_ff}": memory_data for d_ff in (0, 64, 256)}  # Chapter 10: facts in fact-free text


def held_out_ids(tokenizer, n_chars: int = 50_000) -> torch.Tensor:
    """`data.held_out_split(n_chars)` as token ids: Chapter 13's validation text (no sentence of it in training)."""
    return torch.tensor(tokenizer.encode(held_out_split(n_chars).text, allowed_special="all"), dtype=torch.long)


def slice_data(n_tokens: int):
    """Chapter 13's overfitting data: the first `n_tokens` of the course train split; the held-out split."""
    return lambda tokenizer: (course_data(tokenizer)[0][:n_tokens], held_out_ids(tokenizer))


def fresh_data(tokenizer, n_chars: int = 10_000_000, seed: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    """Chapter 13's scaling data: a fresh sample of the generator (`synthetic_corpus(n_chars, seed)`) with
    every sentence of the held-out split removed from it, and the held-out split as validation."""
    held = held_out_split(50_000).text
    held_sentences = {s for doc in held.split(EOT) for s in sentences(doc)}
    docs = (" ".join(s for s in sentences(doc) if s not in held_sentences)
            for doc in synthetic_corpus(n_chars, seed).split(EOT))
    text = EOT.join(doc for doc in docs if doc)
    return torch.tensor(tokenizer.encode(text, allowed_special="all"), dtype=torch.long), held_out_ids(tokenizer)


DATA |= {"slice-5k": slice_data(5_000), "slice-200k": slice_data(200_000),
         **{f"scale-d{d_model}": fresh_data for d_model in (16, 32, 64, 128)}}


RESULTS_DIR = Path(__file__).resolve().parent / "assets" / "results"


def load_results(name: str) -> dict:
    """The JSON that `--results` wrote for run `name` (e.g. "small-tied-seed1")."""
    path = RESULTS_DIR / f"{name}.json"
    if not isinstance(name, str) or not path.is_file():
        known = sorted(p.stem for p in RESULTS_DIR.glob("*.json"))
        raise ValueError(f"name must be one of the shipped results {known}, got {name!r}")
    return json.loads(path.read_text())


def save_results(path: Path, model_config: GPTConfig, record: dict) -> None:
    """Write a run's JSON (`--results`): the model config and `record`, in full and then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # never a half-written file
    tmp.write_text(json.dumps({"model_config": model_config.to_dict(), **record}, indent=1) + "\n")
    os.replace(tmp, path)


def start_model(name: str, train_config: TrainConfig, tokenizer) -> tuple[GPT, dict]:
    """The model config `name` starts from, and what the record says about its start.

    From random weights (seeded by `train_config.seed`), or for a `START_FROM` config the shipped checkpoint
    converted to the config's key/value heads, with its validation loss (on `train_config`'s evaluation
    batches) and its held-out loss before the conversion, and the held-out loss right after it.
    """
    model_config = CONFIGS[name][0]
    if name not in START_FROM:
        torch.manual_seed(train_config.seed)
        return GPT(model_config), {}
    source, source_tokenizer, source_meta = load_checkpoint(START_FROM[name])
    if source_tokenizer.to_dict() != tokenizer.to_dict():
        raise ValueError(f"checkpoint {START_FROM[name]!r} was trained with another tokenizer than the course's")
    model = source if model_config.h_kv == source.config.h_kv else mha_to_gqa(source, model_config.h_kv)
    if model.config != model_config:
        raise ValueError(f"{name}: converting {START_FROM[name]!r} gives {model.config}, not the config {model_config}")
    _, val_ids = course_data(tokenizer)
    start = dict(source=START_FROM[name], n_kv_heads=model_config.h_kv, source_steps=source_meta.get("steps"),
                 source_val_loss=estimate_loss(source, val_ids, train_config),
                 held_out_loss={"source": held_out_loss(source, tokenizer), "converted": held_out_loss(model, tokenizer)})
    return model, start


def course_data(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The course corpus as token ids, split into train (first 90 %) and validation (last 10 %)."""
    ids = torch.tensor(tokenizer.encode(synthetic_corpus(seed=0), allowed_special="all"), dtype=torch.long)
    return train_val_split(ids, val_fraction=0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformer_course.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, choices=sorted(CONFIGS), help="which named config to train")
    parser.add_argument("--steps", type=int, help="override the number of optimizer steps")
    parser.add_argument("--seed", type=int, help="override the seed (weights, batches, dropout)")
    parser.add_argument("--results", action="store_true",
                        help="save no weights, only the run's losses as assets/results/NAME[-seedN].json")
    parser.add_argument("--out", type=Path, help="checkpoint path (default: the shipped assets/checkpoints/NAME.pt)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu, as the shipped checkpoints)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    model_config, train_config = CONFIGS[args.config]
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be >= 1, got {args.steps}")
        train_config = dataclasses.replace(train_config, steps=args.steps,
                                           warmup_steps=min(train_config.warmup_steps, args.steps),
                                           eval_interval=min(train_config.eval_interval, args.steps))
    if args.seed is not None:
        train_config = dataclasses.replace(train_config, seed=args.seed)
    train_config = dataclasses.replace(train_config, device=args.device)
    name = args.config if args.seed is None else f"{args.config}-seed{args.seed}"
    out = args.out or (RESULTS_DIR / f"{name}.json" if args.results else CHECKPOINT_DIR / f"{name}.pt")
    command = "python -m transformer_course.train " + " ".join(sys.argv[1:] if argv is None else argv)

    started = time.perf_counter()
    tokenizer = load_course_tokenizer()
    train_ids, val_ids = DATA.get(args.config, course_data)(tokenizer)
    data_seconds = time.perf_counter() - started
    model, start = start_model(args.config, train_config, tokenizer)
    print(f"{args.config}: {model.num_parameters():,} parameters; {len(train_ids):,} train / {len(val_ids):,} val "
          f"tokens ({data_seconds:.1f} s to build); torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, device {args.device}" + (f"; starts from {start['source']}" if start else ""))

    started, cpu_started = time.perf_counter(), time.process_time()
    grad_norms = []
    try:
        history = train(model, train_ids, val_ids, train_config, progress=not args.no_progress,
                        checkpoint_path=None if args.results else out, tokenizer=tokenizer,
                        meta={"command": command, "config_name": args.config}, grad_norms=grad_norms)
    except KeyboardInterrupt:
        print("interrupted" + ("" if args.results else f"; the last state is saved in {out}"), file=sys.stderr)
        return 130
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    final = history[-1]
    if start:
        start.update(converted_val_loss=history[0]["val_loss"])
        start["held_out_loss"]["final"] = held_out_loss(model, tokenizer)
    record = dict(command=command, config_name=args.config, **start, steps=final["step"],
                  val_loss=final["val_loss"], train_loss=final["train_loss"], train_seconds=round(seconds, 1),
                  cpu_seconds=round(cpu_seconds, 1), threads=torch.get_num_threads(),
                  train_config=train_config.to_dict(), history=history)
    if args.results:  # Chapter 13: each update's gradient norm before clipping, and whether it was clipped
        clip = train_config.grad_clip
        record.update(grad_norm=[float(f"{n:.4g}") for n in grad_norms],  # 4 significant digits
                      clipped=[int(clip > 0 and clip / (n + 1e-6) < 1) for n in grad_norms])  # clip_grad_norm_'s rule
        save_results(out, model_config, record)
    else:
        save_checkpoint(out, model, tokenizer, **record)
    if args.no_progress:
        for row in history:
            print(f"step {row['step']:>6}  lr {row['lr']:.2e}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}")
    print(f"trained {final['step']} steps in {seconds / 60:.1f} min ({seconds:.0f} s wall, {cpu_seconds:.0f} s CPU); "
          f"final train loss {final['train_loss']:.4f}, val loss {final['val_loss']:.4f}")
    print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
