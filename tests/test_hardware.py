"""hardware.py (Chapter 15): cache sizes parsed from sysfs and lscpu output, a bandwidth that is a positive
number, and a peak-memory recorder whose counts follow from the shapes allocated."""
import pytest
import torch

from transformer_course import hardware
from transformer_course.hardware import CacheLevel, PeakMemory


def test_parse_size():
    assert hardware._parse_size("48K") == 48 * 1024
    assert hardware._parse_size("2048 KiB") == 2 * 1024**2
    assert hardware._parse_size("32 MiB") == 32 * 1024**2
    assert hardware._parse_size("1234") == 1234


def test_sysfs_layout(tmp_path):
    for i, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"), (2, "Unified", "1024K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert hardware.cache_levels(tmp_path) == [CacheLevel(1, "Data", 32768), CacheLevel(1, "Instruction", 32768),
                                               CacheLevel(2, "Unified", 1 << 20)]


def test_lscpu_fallback(monkeypatch, tmp_path):
    class Done:
        stdout = "L1d cache:   1.5 MiB (32 instances)\nL2 cache:    32 MiB (32 instances)\nL3 cache: 32 MiB (1 instance)\n"
    monkeypatch.setattr(hardware.subprocess, "run", lambda *a, **k: Done())
    levels = hardware.cache_levels(tmp_path / "missing")
    assert levels == [CacheLevel(1, "Data", 48 * 1024), CacheLevel(2, "Unified", 1 << 20),
                      CacheLevel(3, "Unified", 32 << 20)]


def test_no_source_gives_empty(monkeypatch, tmp_path):
    def missing(*a, **k):
        raise FileNotFoundError("lscpu")
    monkeypatch.setattr(hardware.subprocess, "run", missing)
    assert hardware.cache_levels(tmp_path / "missing") == []


def test_copy_bandwidth_positive_and_validated():
    assert hardware.copy_bandwidth(1 << 16, min_seconds=0.005, repeats=1) > 0
    with pytest.raises(ValueError, match="nbytes"):
        hardware.copy_bandwidth(0)
    with pytest.raises(ValueError, match="min_seconds"):
        hardware.copy_bandwidth(1024, min_seconds="fast")


def test_peak_memory_counts_live_tensors():
    x = torch.ones(1000)  # created outside: not counted
    with PeakMemory() as mem:
        a = x * 2  # 4000 bytes
        b = a + 1  # 4000 more, both alive
        del a
        c = b * 3  # a was freed: live stays at 8000
        b.mul_(2)  # in place: nothing new
    assert mem.allocated == 12000
    assert mem.peak == 8000
    assert mem.largest == 4000
    del b, c


def test_peak_memory_of_naive_attention_is_quadratic():
    q = torch.randn(1, 2, 64, 8)
    with torch.no_grad(), PeakMemory() as mem:
        torch.softmax(q @ q.transpose(-1, -2), -1) @ q
    assert mem.largest == 2 * 64 * 64 * 4  # one score matrix
    assert mem.peak >= 2 * mem.largest  # scores and probabilities alive together
