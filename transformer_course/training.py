"""Training a language model: batches, AdamW, warm-up + cosine schedule, clipping, evaluation (Chapter 13).

The loop is nanoGPT's, small enough to read in one sitting: sample random windows of the token stream,
predict every next token, step AdamW with the learning rate of a warm-up + cosine schedule, clip the
gradient norm, and now and then estimate the train and validation loss on fixed batches. One update may
accumulate the gradients of several micro-batches (`grad_accum_steps`), which equals one larger batch.

Leaves out: mixed precision, `torch.compile`, distributed data parallel and resuming the optimizer state;
a course-sized model trains in minutes on a laptop CPU without them.
"""
import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .checkpoints import save_checkpoint
from .data import held_out_split
from .model import GPT
from .tokenization import BPETokenizer
from .utils import check_choice, check_device, check_int, check_number, check_tensor, describe


@dataclass
class TrainConfig:
    """Everything `train` needs besides the model and the data.

    `weight_decay` applies to matrices only (embeddings and linear weights, `p.dim() >= 2`), never to biases
    and norm gains: nanoGPT's rule. `grad_clip=0` turns clipping off. `device=None` trains where the model is.
    Each update sums the gradients of `grad_accum_steps` micro-batches of `batch_size` windows (each loss
    divided by their number): the gradient of one batch of `grad_accum_steps * batch_size` windows.
    `sampling="random"` draws each training window anywhere in the stream (`get_batch`); `"sequential"`
    walks through it in order, window after non-overlapping window (`window_batch`), so a run that needs
    fewer windows than the stream holds reads no token twice. Evaluation batches are random either way.
    """

    steps: int = 1000
    batch_size: int = 32
    block_size: int = 128
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 20
    seed: int = 0
    device: str | None = None
    grad_accum_steps: int = 1
    sampling: str = "random"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the first field of the wrong type or with an impossible value."""
        for name in ("steps", "batch_size", "block_size", "eval_interval", "eval_batches", "grad_accum_steps"):
            check_int(f"TrainConfig.{name}", getattr(self, name))
        check_int("TrainConfig.warmup_steps (at most steps)", self.warmup_steps, 0, self.steps)
        check_int("TrainConfig.seed", self.seed, -(2**63), 2**64 - 1)
        check_number("TrainConfig.lr", self.lr)
        check_number("TrainConfig.min_lr (at most lr)", self.min_lr, f"[0, {self.lr}]")
        check_number("TrainConfig.weight_decay", self.weight_decay, "[0, inf)")
        check_number("TrainConfig.grad_clip (0 = no clipping)", self.grad_clip, "[0, inf)")
        check_choice("TrainConfig.sampling", self.sampling, ("random", "sequential"))
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {describe(self.betas)}")
        for i, beta in enumerate(self.betas):
            check_number(f"TrainConfig.betas[{i}]", beta, "[0, 1)")
        if self.device is not None:
            if not isinstance(self.device, str):
                raise ValueError(f'TrainConfig.device must be None or a str such as "cpu", got {describe(self.device)}')
            check_device("TrainConfig.device", self.device)

    def to_dict(self) -> dict:
        """The fields as a dict; `grad_accum_steps` and `sampling` only when they are not the defaults, so that
        the records of runs made before those fields existed still equal their recipe's."""
        d = dataclasses.asdict(self)
        for name, default in (("grad_accum_steps", 1), ("sampling", "random")):
            if d[name] == default:
                del d[name]
        return d


def _check_cfg(cfg, model=None) -> None:
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {describe(cfg)}")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {describe(model)}")


def _check_ids(ids, name: str, block_size: int) -> torch.Tensor:
    check_tensor(f"{name} (token ids)", ids, ("n_tokens",), "int")
    if len(ids) <= block_size:
        raise ValueError(f"{name} has {len(ids)} tokens; it needs more than block_size={block_size}")
    return ids.long()


def get_batch(ids: torch.Tensor, batch_size: int, block_size: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut `batch_size` random windows out of the token stream `ids` (n_tokens,).

    Returns inputs `x` (B, T) and targets `y` (B, T) with `y[:, t] == x[:, t + 1]`: every position is
    trained to predict the token that follows it. T = `block_size`. Tensors stay on `ids`' device.
    """
    check_int("batch_size", batch_size)
    check_int("block_size", block_size)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be None or a torch.Generator, got {describe(generator)}")
    ids = _check_ids(ids, "ids", block_size)
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    x = torch.stack([ids[i:i + block_size] for i in starts.tolist()])
    y = torch.stack([ids[i + 1:i + 1 + block_size] for i in starts.tolist()])
    return x, y


def window_batch(ids: torch.Tensor, first: int, batch_size: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows `first, first + 1, ...` of the stream `ids` (n_tokens,) cut into non-overlapping windows of
    `block_size` tokens, counted modulo the number of whole windows (a run longer than the stream reads it
    again, in order). Returns `x` (B, T) and `y` (B, T) with `y[:, t] == x[:, t + 1]`, as `get_batch`."""
    check_int("first", first, 0)
    check_int("batch_size", batch_size)
    check_int("block_size", block_size)
    ids = _check_ids(ids, "ids", block_size)
    n_windows = (len(ids) - 1) // block_size
    starts = ((first + torch.arange(batch_size)) % n_windows * block_size).tolist()
    x = torch.stack([ids[i:i + block_size] for i in starts])
    y = torch.stack([ids[i + 1:i + 1 + block_size] for i in starts])
    return x, y


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of update `step` (0-based): linear warm-up, then a
    cosine decay to `min_lr`.

    Warm-up climbs as `lr * (step + 1) / warmup_steps`, reaching `lr` at
    `step = warmup_steps - 1`; the cosine then falls from `lr` at
    `step = warmup_steps` to `min_lr` at the last update, `step = steps - 1`
    (halfway in between it is exactly `(lr + min_lr) / 2`). Later steps
    stay at `min_lr`.
    """
    check_int("step", step, 0)
    _check_cfg(cfg)
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return cfg.min_lr + cosine * (cfg.lr - cfg.min_lr)


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, ids: torch.Tensor, cfg: TrainConfig) -> float:
    """Mean loss over `cfg.eval_batches` batches drawn with a generator seeded by `cfg.seed`.

    The batches are the same at every call, so two estimates differ only because the model changed.
    Runs in eval mode (no dropout) and restores the model's previous mode.
    """
    _check_cfg(cfg, model)
    ids = _check_ids(ids, "ids", cfg.block_size)
    device = _model_device(model)
    generator = torch.Generator().manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = get_batch(ids, cfg.batch_size, cfg.block_size, generator)
        _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item())
    model.train(was_training)
    return sum(losses) / len(losses)


@torch.no_grad()
def held_out_loss(model: GPT, tokenizer, n_chars: int = 20_000) -> float:
    """Mean next-token loss of `model` on `data.held_out_split(n_chars)`, cut into context-length rows.

    The text is the same at every call (no sentence of it occurs in the course corpus), so two losses
    differ only because the models differ. Runs in eval mode and restores the model's previous mode.
    """
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a course GPT, got {describe(model)}")
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError(f"tokenizer must be a BPETokenizer (the model's), got {describe(tokenizer)}")
    check_int("n_chars", n_chars)
    ids = torch.tensor(tokenizer.encode(held_out_split(n_chars).text, allowed_special="all"))
    T = model.config.context_length
    n = (len(ids) - 1) // T * T
    if n == 0:
        raise ValueError(f"n_chars={n_chars} gives {len(ids)} tokens, fewer than one row of {T + 1}")
    device, was_training = next(model.parameters()).device, model.training
    loss = model.eval()(ids[:n].view(-1, T).to(device), ids[1: n + 1].view(-1, T).to(device))[1].item()
    model.train(was_training)
    return loss


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def make_optimizer(model: torch.nn.Module,
                   cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (`dim >= 2`) and none on
    biases and norm gains."""
    _check_cfg(cfg, model)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2],
         "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2],
         "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def _check_optimizer(model, optimizer) -> None:
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {describe(model)}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {describe(optimizer)}")


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batches, grad_clip: float = 0.0) -> tuple[float, float]:
    """One update from the micro-batches `batches`, a list of `(x, y)`
    pairs of (B, T) token ids.

    Each micro-batch's loss is divided by their number n before
    `backward`, so the summed gradient is that of the mean loss: with
    equal micro-batches, the gradient of one batch n times larger. The
    total gradient norm is clipped to `grad_clip` (0 = no clipping).
    Returns (mean loss, gradient norm before clipping).
    """
    _check_optimizer(model, optimizer)
    if not isinstance(batches, (list, tuple)) or not batches:
        raise ValueError("batches must be a non-empty list of (x, y) "
                         f"pairs, got {describe(batches)}")
    check_number("grad_clip (0 = no clipping)", grad_clip, "[0, inf)")
    optimizer.zero_grad(set_to_none=True)
    n, total = len(batches), 0.0
    for x, y in batches:
        _, loss = model(x, y)
        (loss / n if n > 1 else loss).backward()
        total += loss.item()
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip > 0:  # returns the norm before clipping
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    optimizer.step()
    return total / n, norm.item()


def train(model: torch.nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor, cfg: TrainConfig,
          progress: bool = True, *, checkpoint_path=None, tokenizer=None, meta: dict | None = None,
          grad_norms: list | None = None) -> list[dict]:
    """Train `model` in place on the token streams `train_ids` (n_train,) and `val_ids` (n_val,).

    `model(x, y)` must return `(logits, loss)`. Every `cfg.eval_interval` updates, and at the start and the
    end, the train and validation losses are estimated; the returned history holds one dict per
    evaluation: `step` (updates done), `lr` (`lr_at(step)`), `train_loss`, `val_loss`.

    `progress=True` shows a tqdm bar and prints each evaluation (the command line); notebooks pass False.
    With `checkpoint_path` (and the `tokenizer` to store with it) the model is saved at every evaluation
    and when training is interrupted (Ctrl-C saves, then re-raises), with `meta` added to the checkpoint.
    With a list `grad_norms`, the gradient norm of every update before clipping (`train_step`) is appended.

    Every random draw follows `cfg.seed`: batch order comes from a generator seeded with it, and dropout
    (which takes no generator: `nn.Dropout`, `F.dropout`, SDPA's `dropout_p`) from the global RNG, seeded
    with it inside `torch.random.fork_rng()`, so the caller's global RNG is left as it was.
    """
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {describe(cfg)}")
    cfg.validate()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    context_length = getattr(getattr(model, "config", None), "context_length", None)
    if context_length is not None and cfg.block_size > context_length:
        raise ValueError(f"TrainConfig.block_size={cfg.block_size} exceeds the model's "
                         f"context_length={context_length}")
    train_ids = _check_ids(train_ids, "train_ids", cfg.block_size)
    val_ids = _check_ids(val_ids, "val_ids", cfg.block_size)
    if checkpoint_path is not None and tokenizer is None:
        raise ValueError("checkpoint_path needs the tokenizer to store with the model (tokenizer=...)")
    if grad_norms is not None and not isinstance(grad_norms, list):
        raise ValueError(f"grad_norms must be None or a list to append to, got {describe(grad_norms)}")

    if cfg.device is not None:
        model.to(cfg.device)
    device = _model_device(model)
    optimizer = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    start = time.perf_counter()

    def evaluate(step: int) -> None:
        row = {"step": step, "lr": lr_at(step, cfg),
               "train_loss": estimate_loss(model, train_ids, cfg),
               "val_loss": estimate_loss(model, val_ids, cfg)}
        history.append(row)
        if progress:
            bar.write(f"step {step:>6}  lr {row['lr']:.2e}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}")
        if checkpoint_path is not None and step > 0:
            save(step, row["val_loss"])

    def save(step: int, val_loss: float | None, **extra) -> None:
        save_checkpoint(checkpoint_path, model, tokenizer, **{
            **(meta or {}), "steps": step, "val_loss": val_loss, "train_seconds": round(time.perf_counter() - start, 1),
            "train_config": cfg.to_dict(), "history": history, **extra})

    bar = tqdm(total=cfg.steps, disable=not progress, dynamic_ncols=True)
    done = 0  # updates finished
    model.train()
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):  # dropout's RNG follows cfg.seed; the caller's is restored
        torch.manual_seed(cfg.seed)
        try:
            evaluate(0)
            for step in range(cfg.steps):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, cfg)
                batches = [get_batch(train_ids, cfg.batch_size, cfg.block_size, generator)
                           if cfg.sampling == "random" else
                           window_batch(train_ids, (step * cfg.grad_accum_steps + i) * cfg.batch_size,
                                        cfg.batch_size, cfg.block_size)
                           for i in range(cfg.grad_accum_steps)]
                loss, norm = train_step(model, optimizer, [(x.to(device), y.to(device)) for x, y in batches],
                                        cfg.grad_clip)
                if grad_norms is not None:
                    grad_norms.append(norm)
                done = step + 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if done % cfg.eval_interval == 0 or done == cfg.steps:
                    evaluate(done)
        except KeyboardInterrupt:
            if checkpoint_path is not None:
                save(done, None, interrupted=True)
                bar.write(f"interrupted after {done} steps; saved {checkpoint_path}")
            raise
        finally:
            bar.close()
    return history
