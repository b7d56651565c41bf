"""Device selection and seeding, shared by every chapter.

Leaves out: distributed set-up and mixed precision; the course runs on one device in float32.
"""
import random

import torch


def default_device() -> torch.device:
    """CUDA if present, then Apple's MPS, then the CPU (every chapter runs on the CPU)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python and PyTorch; return a fresh CPU `torch.Generator` seeded with `seed`.

    Chapters prefer the returned generator (one per cell) over global state, so that changing
    one cell does not shift the random numbers of the next.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
