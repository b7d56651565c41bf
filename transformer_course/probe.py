"""Training heads on top of a GPT: linear probes on frozen features, and fine-tuning (Chapter 12).

    probe:      features = backbone(ids), computed once, frozen;  train only  logits = features @ W^T + b
    fine-tune:  train the backbone and the head together, end to end

A probe asks what a linear map can read from the hidden states; fine-tuning asks what the whole network
can learn. `pool` turns `(B, T, d_model)` states into one vector per sentence (the last real token, or the
mean of the real tokens); `token_rows` keeps the labelled tokens of a token task. `fit_linear` trains a
linear layer full-batch (L-BFGS, early-stopped on a validation split) on cached rows, `finetune` trains
a backbone with a head on mini-batches.

`python -m transformer_course.probe --finetune --results` fine-tunes the `tiny` checkpoint and the same
model from random weights on both labelled tasks of `labelled.py` and writes their accuracies to
assets/results/probe-finetune.json (no weights).

Leaves out: MLP probes and control tasks (Hewitt & Liang 2019), learning-rate sweeps, early stopping of
fine-tuning, LoRA and other parameter-efficient fine-tuning.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import lens
from .heads import SequenceClassificationHead, TokenClassificationHead, last_token_index
from .labelled import IGNORE_INDEX, POS_TAGS, TOPICS, labelled_splits, to_batch
from .model import GPT
from .utils import check_choice, check_int, check_number, check_tensor, describe

POOLINGS = ("last", "mean")
SIZES = dict(n_train=1000, n_val=250, n_test=500)  # the labelled_splits of Chapter 12 and of the command
RESULTS = Path(__file__).resolve().parent / "assets" / "results" / "probe-finetune.json"


@torch.no_grad()
def layer_features(model: GPT, ids: torch.Tensor, padding_mask: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The residual stream of right-padded ids `(B, T)` before the first block and after each block, and the
    final hidden states `model.features`: a tensor `(L + 2, B, T, d_model)`, zeros at padding.

    Rows are run in chunks of similar length, each cut to its longest row, so little time goes into padding.
    With right padding a real token never sees a padding token (attention is causal, positions count from
    0), so this equals running every row alone.
    """
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a course GPT, got {describe(model)}")
    check_tensor("ids", ids, ("B", "T"), torch.long)
    check_tensor("padding_mask", padding_mask, tuple(ids.shape), torch.bool)
    check_int("chunk", chunk, 1)
    lengths = padding_mask.sum(1)
    if not torch.equal(padding_mask, torch.arange(ids.shape[1]) < lengths[:, None]):
        raise ValueError("padding_mask must be right padding (True, then False), with at least one True per row")
    was_training = model.training
    model.eval()
    B, T = ids.shape
    out = torch.zeros(model.config.n_layers + 2, B, T, model.config.d_model)
    try:
        order = lengths.argsort()
        for start in range(0, B, chunk):
            rows = order[start:start + chunk]
            width = int(lengths[rows].max())
            stream = lens.residual_stream(model, ids[rows, :width])  # L + 1 tensors (rows, width, d_model)
            states = torch.stack(stream + [model.norm_f(stream[-1])])
            out[:, rows, :width] = states * padding_mask[rows, :width, None]
    finally:
        model.train(was_training)
    return out


def pool(hidden: torch.Tensor, padding_mask: torch.Tensor, how: str = "last") -> torch.Tensor:
    """One vector per sequence `(B, d_model)` from hidden `(B, T, d_model)` and padding_mask `(B, T)`
    (True at real tokens): the rightmost real token ("last") or the mean over real tokens ("mean")."""
    check_tensor("hidden", hidden, ("B", "T", "d_model"), "float")
    B, T, _ = hidden.shape
    check_tensor("padding_mask", padding_mask, (B, T), torch.bool, hidden.device)
    check_choice("how", how, POOLINGS)
    if how == "last":
        return hidden[torch.arange(B, device=hidden.device), last_token_index(padding_mask, B, T)]
    weights = padding_mask.to(hidden.dtype)[..., None]  # (B, T, 1): 1 at real tokens, 0 at padding
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def token_rows(hidden: torch.Tensor, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled tokens of a token task: rows `(N, d_model)` and labels `(N,)`, for tags `(B, T)` != -100."""
    check_tensor("hidden", hidden, ("B", "T", "d_model"), "float")
    check_tensor("tags", tags, tuple(hidden.shape[:2]), torch.long, hidden.device)
    keep = tags != IGNORE_INDEX
    return hidden[keep], tags[keep]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of labels (any shape, -100 left out) that the argmax of logits `(*labels.shape, C)` gets right."""
    check_tensor("labels", labels, dtype=torch.long)
    check_tensor("logits", logits, tuple(labels.shape) + ("C",), "float")
    keep = labels != IGNORE_INDEX
    if not keep.any():
        raise ValueError("labels must hold at least one label that is not -100")
    return (logits.argmax(-1)[keep] == labels[keep]).float().mean().item()


def majority(train_labels: torch.Tensor, labels: torch.Tensor) -> tuple[int, float]:
    """The most frequent class of train_labels, and the accuracy of always predicting it on labels."""
    check_tensor("train_labels", train_labels, dtype=torch.long)
    check_tensor("labels", labels, dtype=torch.long)
    known = train_labels[train_labels != IGNORE_INDEX]
    if known.numel() == 0:
        raise ValueError("train_labels must hold at least one label that is not -100")
    top = int(torch.bincount(known).argmax())
    keep = labels != IGNORE_INDEX
    return top, (labels[keep] == top).float().mean().item()


def fit_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, val=None, steps: int = 150,
               check_every: int = 10, patience: int = 2, seed: int = 0) -> nn.Linear:
    """A linear probe: nn.Linear(d, n_classes) trained full-batch with L-BFGS on rows x `(N, d)`, labels y `(N,)`.

    Every step sees all N rows (so the result does not depend on a batch order); the initial weights follow
    `seed`. With `val = (x_val, y_val)` the probe is scored on it every `check_every` L-BFGS iterations and
    training stops after `patience` checks in a row without a lower validation loss (early stopping); the
    weights of the best check are returned. Without `val` it runs `steps` iterations. Returns the layer in eval
    mode; x is detached, so no gradient reaches what computed it.
    """
    check_tensor("x", x, ("N", "d"), "float")
    check_tensor("y", y, (x.shape[0],), torch.long, x.device)
    check_int("n_classes", n_classes, 2)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y must hold labels in [0, {n_classes}), got values in [{y.min()}, {y.max()}]")
    check_int("steps", steps, 1)
    check_int("check_every", check_every, 1)
    check_int("patience", patience, 1)
    check_int("seed", seed, 0)
    if val is not None:
        if not isinstance(val, (tuple, list)) or len(val) != 2:
            raise ValueError(f"val must be a pair (x_val, y_val), got {describe(val)}")
        check_tensor("val[0]", val[0], ("M", x.shape[1]), "float", x.device)
        check_tensor("val[1]", val[1], (val[0].shape[0],), torch.long, x.device)
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(x.shape[1], n_classes).to(x.device)
    with torch.no_grad():
        bound = x.shape[1] ** -0.5  # nn.Linear's own init range, drawn from our generator
        layer.weight.copy_(torch.empty(layer.weight.shape).uniform_(-bound, bound, generator=g))
        layer.bias.copy_(torch.empty(n_classes).uniform_(-bound, bound, generator=g))
    x = x.detach()
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=check_every, history_size=20,
                                  tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(layer(x), y)
        loss.backward()
        return loss

    best, best_state, bad = -float("inf"), None, 0
    with torch.enable_grad():  # also when called under torch.no_grad()
        for _ in range(-(-steps // check_every)):
            optimizer.step(closure)
            if val is None:
                continue
            with torch.no_grad():  # the validation loss: unlike an accuracy, it has no ties
                score = -F.cross_entropy(layer(val[0]), val[1]).item()
            if score > best:
                best, bad = score, 0
                best_state = {k: v.clone() for k, v in layer.state_dict().items()}
            else:
                bad += 1
                if bad >= patience:
                    break
    if best_state is not None:
        layer.load_state_dict(best_state)
    return layer.eval()


class Classifier(nn.Module):
    """A backbone GPT with a sequence head (task "topic", pooled `pooling`) or a token head (task "pos")."""

    def __init__(self, backbone: GPT, task: str, pooling: str = "last"):
        super().__init__()
        if not isinstance(backbone, GPT):
            raise ValueError(f"backbone must be a course GPT, got {describe(backbone)}")
        self.task = check_choice("task", task, ("topic", "pos"))
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.backbone = backbone
        d = backbone.config.d_model
        if task == "topic":
            self.head = SequenceClassificationHead(d, len(TOPICS), bias=True)
        else:
            self.head = TokenClassificationHead(d, len(POS_TAGS))

    def forward(self, ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Logits `(B, len(TOPICS))` or `(B, T, len(POS_TAGS))` for ids and padding_mask `(B, T)`."""
        hidden = self.backbone.features(ids, padding_mask=padding_mask)  # (B, T, d_model)
        if self.task == "pos":
            return self.head(hidden)
        if self.pooling == "last":
            return self.head(hidden, padding_mask)
        return self.head.score(pool(hidden, padding_mask, "mean"))


def _labels(batch, task):
    return batch.topics if task == "topic" else batch.tags


def finetune(model: Classifier, train_batch, *, steps: int = 300, batch_size: int = 64, lr: float = 1e-3,
             seed: int = 0) -> list[float]:
    """Train backbone and head together with AdamW on mini-batches of a `LabelledBatch`; the training losses.

    Batches are drawn with a generator seeded by `seed`, so a run is reproducible for a thread count.
    """
    if not isinstance(model, Classifier):
        raise ValueError(f"model must be a Classifier, got {describe(model)}")
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_number("lr", lr)
    check_int("seed", seed, 0)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    labels, n = _labels(train_batch, model.task), train_batch.ids.shape[0]
    model.train()
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, n, (batch_size,), generator=g)
        mask = train_batch.padding_mask[rows]
        width = int(mask.sum(1).max())  # right padding: drop the columns that are padding in every row
        logits = model(train_batch.ids[rows, :width], mask[:, :width])
        target = labels[rows] if model.task == "topic" else labels[rows, :width]
        loss = F.cross_entropy(logits.flatten(0, -2), target.flatten(), ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate(model: Classifier, batch) -> float:
    """Accuracy of `model` (in eval mode) on a whole `LabelledBatch`."""
    was_training = model.training
    model.eval()
    try:
        return accuracy(model(batch.ids, batch.padding_mask), _labels(batch, model.task))
    finally:
        model.train(was_training)


def load_results() -> dict:
    """The JSON that `python -m transformer_course.probe --finetune --results` wrote."""
    if not RESULTS.is_file():
        raise ValueError(f"no results at {RESULTS.name}: run python -m transformer_course.probe --finetune --results")
    return json.loads(RESULTS.read_text())


def main(argv: list[str] | None = None) -> int:
    from .checkpoints import load_checkpoint

    parser = argparse.ArgumentParser(prog="python -m transformer_course.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--finetune", action="store_true", help="fine-tune tiny and a random-init copy")
    parser.add_argument("--results", action="store_true", help=f"write assets/results/{RESULTS.name}")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the heads, random backbones and batches")
    args = parser.parse_args(argv)
    if not args.finetune:
        parser.error("nothing to do: pass --finetune")
    command = "python -m transformer_course.probe " + " ".join(sys.argv[1:] if argv is None else argv)
    tiny, tokenizer, _ = load_checkpoint("tiny")
    splits = labelled_splits(**SIZES)
    train = to_batch(list(splits.train), tokenizer, subtokens="last")
    test = to_batch(list(splits.test), tokenizer, subtokens="last")
    runs = []
    for start in ("tiny", "random"):
        for task, pooling in (("topic", "last"), ("topic", "mean"), ("pos", "last")):
            torch.manual_seed(args.seed)
            backbone = load_checkpoint("tiny")[0] if start == "tiny" else GPT(tiny.config)
            model = Classifier(backbone, task, pooling)
            started, cpu = time.perf_counter(), time.process_time()
            losses = finetune(model, train, steps=args.steps, seed=args.seed)
            run = dict(start=start, task=task, pooling=pooling if task == "topic" else None,
                       test_accuracy=evaluate(model, test), first_loss=losses[0], final_loss=losses[-1],
                       train_seconds=round(time.perf_counter() - started, 1),
                       cpu_seconds=round(time.process_time() - cpu, 1))
            print(json.dumps(run), flush=True)
            runs.append(run)
    record = dict(command=command, steps=args.steps, batch_size=64, lr=1e-3, seed=args.seed, subtokens="last",
                  n_train=len(splits.train), n_test=len(splits.test), threads=torch.get_num_threads(),
                  torch=torch.__version__, runs=runs)
    if args.results:
        tmp = RESULTS.with_name(f".{RESULTS.name}.tmp")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
