"""The memory hierarchy of the machine you run on, read and measured roughly (Chapter 15).

- `cache_levels()`: the CPU's caches as Linux reports them (/sys/devices/system/cpu/cpu0/cache),
  falling back to `lscpu`; an empty list where neither exists (macOS, Windows).
- `copy_bandwidth(nbytes)`: GB/s of `dst.copy_(src)` on buffers of `nbytes` each, the best of a few
  repeats: a buffer that fits a cache level runs at roughly that level's speed, a larger one at
  the speed of main memory.
- `PeakMemory`: a `TorchDispatchMode` that counts the bytes of the tensors PyTorch operations
  allocate while it is active, and their peak while alive (a CPU build has no allocator counter).

Leaves out: latency (this measures streaming bandwidth only), per-core vs shared caches, NUMA, and
the GPU side (`torch.cuda.max_memory_allocated` does this on a GPU).
"""
import subprocess
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .utils import check_int, check_number


@dataclass(frozen=True)
class CacheLevel:
    """One CPU cache: level (1, 2, 3), kind ("Data", "Instruction", "Unified") and size in bytes."""

    level: int
    kind: str
    size: int


def _parse_size(text: str) -> int:
    """'48K' -> 49152, '2048 KiB' -> 2097152, '32 MiB' -> 33554432, '1234' -> 1234 bytes."""
    text = text.strip().split(" (")[0].replace("iB", "").replace("B", "").replace(" ", "")
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)


def _from_sysfs(root: Path) -> list[CacheLevel]:
    levels = []
    for index in sorted(root.glob("index*")):
        try:
            levels.append(CacheLevel(int((index / "level").read_text()), (index / "type").read_text().strip(),
                                     _parse_size((index / "size").read_text())))
        except (OSError, ValueError):
            continue
    return levels


def _from_lscpu() -> list[CacheLevel]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    levels = []
    names = {"L1d": (1, "Data"), "L1i": (1, "Instruction"), "L2": (2, "Unified"), "L3": (3, "Unified")}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().removesuffix(" cache")
        if key in names and value.strip():
            try:  # lscpu prints the total over all cores, e.g. "1.5 MiB (32 instances)"
                total, _, rest = value.strip().partition(" (")
                count = int(rest.split()[0]) if rest else 1
                levels.append(CacheLevel(*names[key], _parse_size(total) // count))
            except (ValueError, IndexError):
                continue
    return levels


def cache_levels(root: str | Path = "/sys/devices/system/cpu/cpu0/cache") -> list[CacheLevel]:
    """The caches of CPU 0, smallest level first: from sysfs, else `lscpu`, else []."""
    return _from_sysfs(Path(root)) or _from_lscpu()


def copy_bandwidth(nbytes: int, min_seconds: float = 0.05, repeats: int = 3) -> float:
    """GB/s (1e9 bytes per second) moved by `dst.copy_(src)` for float32 buffers of `nbytes` each.

    Counts one read and one write per byte (2 * nbytes per copy); repeats the copy for at least
    `min_seconds` and returns the best of `repeats` such runs. Rough: one thread, no prefetch
    control, and other work on the machine lowers it.
    """
    check_int("nbytes", nbytes, minimum=4)
    check_number("min_seconds", min_seconds)
    check_int("repeats", repeats)
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages once
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            dst.copy_(src)
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        best = max(best, 2 * src.nbytes * n / elapsed / 1e9)
    return best


class PeakMemory(TorchDispatchMode):
    """Count the bytes of new tensor storages that operations create while
    the mode is active.

    `with PeakMemory() as mem: f(x)` -> `mem.peak` (the most bytes alive at
    once, counting only storages created inside the block),
    `mem.allocated` (all bytes created), `mem.largest` (the largest single
    allocation). A storage counts until its last tensor is freed.
    Operations that write into an existing tensor (`out=`, in-place)
    allocate nothing and count nothing. It sees only the outputs of the
    operators PyTorch dispatches: memory a fused kernel uses inside (the
    tiles of `F.scaled_dot_product_attention`) is invisible to it.
    """

    def __init__(self):
        super().__init__()
        self.live = self.peak = self.allocated = self.largest = 0
        self._seen = {}  # data_ptr -> [nbytes, live tensors on it]

    def _release(self, ptr: int) -> None:
        entry = self._seen[ptr]
        entry[1] -= 1
        if entry[1] == 0:  # the storage's last tensor is gone
            self.live -= entry[0]
            del self._seen[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a.untyped_storage().data_ptr()
                  for a in tree_flatten((args, kwargs or {}))[0]
                  if isinstance(a, torch.Tensor)]
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
            if ptr in self._seen:  # a view of a counted storage
                self._seen[ptr][1] += 1  # one more holder
            elif size and ptr not in inputs:  # a new storage
                self._seen[ptr] = [size, 1]
                self.live += size
                self.allocated += size
                self.largest = max(self.largest, size)
                self.peak = max(self.peak, self.live)
            else:  # a view of a tensor made outside the block, or empty
                continue
            weakref.finalize(t, self._release, ptr)
        return out
