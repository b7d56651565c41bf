import pytest
import torch

import transformer_course as tc
from transformer_course.notebook import _bucket


@pytest.mark.parametrize("diff, text", [
    (0.0, "identical (max |Δ| = 0)"),
    (3e-7, "max |Δ| < 1e-6"),
    (9.9e-7, "max |Δ| < 1e-6"),
    (1.2e-6, "max |Δ| < 1e-5"),
    (0.5, "max |Δ| < 1e0"),
])
def test_bucket_is_the_next_power_of_ten(diff, text):
    assert _bucket(diff) == text


def test_report_close_prints_bucket_and_fails_loudly(capsys):
    a = torch.zeros(3)
    assert tc.report_close(a, a + 2e-7, name="x") is None
    assert capsys.readouterr().out == "x: max |Δ| < 1e-6\n"
    with pytest.raises(AssertionError, match="exceeds atol"):
        tc.report_close(a, a + 1.0)
    with pytest.raises(AssertionError):
        tc.report_close(a, a + float("nan"))
    with pytest.raises(ValueError, match=r"\(3,\) vs \(2,\)"):
        tc.report_close(a, torch.zeros(2))


def test_show_source_displays_the_package_file(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj.data))
    tc.show_source(tc.seed_everything)
    assert shown[0].startswith("`transformer_course/utils.py`, lines ")
    assert "def seed_everything(seed: int)" in shown[0]
    with pytest.raises(ValueError, match="show_source needs"):
        tc.show_source(3)


def test_default_device_is_usable():
    assert torch.zeros(1, device=tc.default_device()).device.type == tc.default_device().type


def test_seed_everything_rejects_non_int():
    with pytest.raises(ValueError, match="seed must be an int"):
        tc.seed_everything("0")
    g1, g2 = tc.seed_everything(1), tc.seed_everything(1)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
