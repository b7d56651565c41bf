"""Checkpoints: one file holding weights, model config, tokenizer and how it was made (Chapters 1, 13, 14).

A checkpoint is `torch.save` of a plain dict, readable with `torch.load(weights_only=True)` (no pickled
code runs on load)::

    {"format": "transformer_course/1",
     "config": GPTConfig.to_dict(), "state_dict": {name: tensor}, "tokenizer": BPETokenizer.to_dict(),
     "meta": {"steps": ..., "val_loss": ..., "train_seconds": ..., "command": ..., "torch_version": ...}}

The shipped checkpoints live in `transformer_course/assets/checkpoints/NAME.pt`, each made by
`python -m transformer_course.train --config NAME`. Loading fills config fields added after a checkpoint
was written with their defaults (`GPTConfig.from_dict`), so later chapters never force a retrain.

Leaves out: optimizer state (no resuming), sharding, safetensors and half-precision storage.
"""
import os
from pathlib import Path

import torch

from .model import GPT, GPTConfig
from .tokenization import BPETokenizer
from .utils import check_device, check_path, describe

FORMAT = "transformer_course/1"
CHECKPOINT_DIR = Path(__file__).resolve().parent / "assets" / "checkpoints"


def known_checkpoints() -> list[str]:
    """Names of the shipped checkpoints, e.g. `["tiny"]`."""
    return sorted(p.stem for p in CHECKPOINT_DIR.glob("*.pt"))


def _check_plain(value, where: str) -> None:
    """Meta must survive `torch.load(weights_only=True)`: plain numbers, str, None, lists, tuples and dicts.

    Exact types: a numpy float or torch's version string (subclasses) would be pickled as a class and refused.
    """
    if value is None or type(value) in (bool, int, float, str):
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"meta key {where}[{key!r}] must be a str")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(f"meta {where} must be a plain number, str, None, list or dict, got {type(value).__name__}")


def save_checkpoint(path, model: GPT, tokenizer: BPETokenizer, **meta) -> Path:
    """Write `model` (its config and weights), `tokenizer` and `meta` to the single file `path`.

    The file is written next to its destination and then renamed over it, so an interrupted save never
    leaves a half-written checkpoint. Returns the path.
    """
    path = check_path("path", path)
    if path.is_dir():
        raise ValueError(f"path {path} is a folder; give the checkpoint's file name, e.g. {path / 'model.pt'}")
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a course GPT, got {describe(model)}")
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError(f"tokenizer must be a BPETokenizer, got {describe(tokenizer)}")
    meta = {"torch_version": str(torch.__version__), **meta}
    for key, value in meta.items():
        _check_plain(value, key)
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {name: t.detach().cpu() for name, t in model.state_dict().items()},
        "tokenizer": tokenizer.to_dict(),
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def resolve_checkpoint(path_or_name) -> Path:
    """A bare name such as `"tiny"` means the shipped `assets/checkpoints/tiny.pt`; anything else is a path."""
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise ValueError(f"path_or_name must be a checkpoint name or a file path, got {describe(path_or_name)}")
    text = os.fspath(path_or_name)
    if not text:
        raise ValueError("path_or_name is empty; give a file path or one of " + _names_hint())
    looks_like_name = os.sep not in text and "/" not in text and not text.endswith(".pt")
    path = CHECKPOINT_DIR / f"{text}.pt" if looks_like_name else Path(text).expanduser()
    if not path.is_file():
        what = f"no shipped checkpoint named {text!r}" if looks_like_name else f"no checkpoint file at {path}"
        raise FileNotFoundError(f"{what}; known checkpoints: {_names_hint()}. "
                                f"Make one with: python -m transformer_course.train --config NAME")
    return path


def _names_hint() -> str:
    names = known_checkpoints()
    return ", ".join(repr(n) for n in names) if names else "(none shipped)"


def load_checkpoint(path_or_name, device="cpu") -> tuple[GPT, BPETokenizer, dict]:
    """Load `(model, tokenizer, meta)` from a checkpoint file or a shipped name (`"tiny"`).

    The model comes back on `device` in eval mode; call `model.train()` before training it further.
    """
    device = check_device("device", device)
    path = resolve_checkpoint(path_or_name)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)  # moved to `device` once checked
    except Exception as exc:  # a foreign pickle, a truncated file, not a torch file at all
        raise ValueError(f"{path} is not a readable {FORMAT} checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (format: {found!r}); "
                         f"known checkpoints: {_names_hint()}")
    missing = {"config", "state_dict", "tokenizer", "meta"} - payload.keys()
    if missing:
        raise ValueError(f"{path} lacks the entries {sorted(missing)}")
    try:
        model = GPT(GPTConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])  # refuses missing, unexpected and mis-shaped tensors
        tokenizer = BPETokenizer.from_dict(payload["tokenizer"])
        meta = dict(payload["meta"])
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path} holds a broken checkpoint: {exc}") from None
    return model.to(device).eval(), tokenizer, meta
