import json

import pytest
import torch

import transformer_course as tc
from transformer_course.notebook import _tolerance


@pytest.mark.parametrize("atol, text", [
    (1e-5, "1e-5"), (1e-6, "1e-6"), (2e-4, "2e-4"), (3.3e-5, "3.3e-05"), (0.01, "0.01"), (0.5, "0.5"),
])
def test_tolerance_is_printed_short(atol, text):
    assert _tolerance(atol) == text


def test_report_close_prints_the_tolerance_not_the_difference(capsys):
    a = torch.zeros(3)
    for delta in (0.0, 2e-9, 2e-7, 9e-6):  # differences of different orders print the same line
        assert tc.report_close(a, a + delta, name="x") is None
        assert capsys.readouterr().out == "x: agree to within 1e-5\n"
    tc.report_close(a, a + 0.3, name="y", atol=0.5)
    assert capsys.readouterr().out == "y: agree to within 0.5\n"
    with pytest.raises(AssertionError, match="exceeds atol"):
        tc.report_close(a, a + 1.0)
    with pytest.raises(AssertionError):
        tc.report_close(a, a + float("nan"))
    with pytest.raises(ValueError, match=r"\(3,\) vs \(2,\)"):
        tc.report_close(a, torch.zeros(2))
    with pytest.raises(ValueError, match="atol must be a number >= 0, got '1e-5'"):
        tc.report_close(a, a, atol="1e-5")
    tc.report_close(a, a.clone(), name="same ops", atol=0)
    assert capsys.readouterr().out == "same ops: identical\n"
    with pytest.raises(AssertionError, match="exceeds atol = 0"):
        tc.report_close(a, a + 1e-30, atol=0)


def test_report_close_logs_actual_differences_when_asked(tmp_path, monkeypatch, capsys):
    log = tmp_path / "diffs.jsonl"
    monkeypatch.setenv("TC_LOG_DIFFS", str(log))
    tc.report_close(torch.zeros(2), torch.tensor([0.0, 3e-7]), name="x")
    tc.report_close(torch.zeros(2), torch.zeros(2), atol=1e-3)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows == [{"name": "x", "diff": pytest.approx(3e-7), "atol": 1e-5}, {"name": None, "diff": 0.0, "atol": 1e-3}]
    assert capsys.readouterr().out == "x: agree to within 1e-5\nagree to within 0.001\n"


def test_show_source_displays_the_package_file(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj.data))
    tc.show_source(tc.seed_everything)
    assert shown[0].startswith("`transformer_course/utils.py`, lines ")
    assert "def seed_everything(seed: int)" in shown[0]
    from transformer_course.training import estimate_loss  # wrapped by @torch.no_grad()

    tc.show_source(estimate_loss)
    assert shown[1].startswith("`transformer_course/training.py`, lines ") and "def estimate_loss(" in shown[1]
    with pytest.raises(ValueError, match="show_source needs"):
        tc.show_source(3)


def test_default_device_is_usable():
    assert torch.zeros(1, device=tc.default_device()).device.type == tc.default_device().type


def test_seed_everything_rejects_non_int():
    with pytest.raises(ValueError, match="seed must be an int"):
        tc.seed_everything("0")
    g1, g2 = tc.seed_everything(1), tc.seed_everything(1)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
