"""Chapter 6's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import time

import torch

from transformer_course.attention import Attention
from transformer_course.exercises import ch06


def merge_heads(x):
    B, h, T, d_k = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d_k)


def mha_parameters(d_model, n_heads, d_k, d_v):
    qk, v = n_heads * d_k, n_heads * d_v
    return (d_model * qk + qk) * 2 + (d_model * v + v) + (v * d_model + d_model)


# Per layer: two float32 (8, 12, 1024, 1024) tensors of 4 MiB per (sequence, head), i.e. 2 x 384 MiB, plus a
# bool (1024, 1024) causal mask of 1 MiB; 12 layers: 12 x 769 = 9228 MiB. test_saved_tensors_are_measured
# checks what autograd really keeps on the package's Attention.
GPT2_SAVED_MIB = 9228


def test_reference_answers_pass():
    assert ch06.check_merge_heads(merge_heads).passed
    assert ch06.check_merge_heads(ch06.reference_merge_heads).passed
    assert ch06.check_gpt2_saved_mib(GPT2_SAVED_MIB).passed
    assert ch06.check_gpt2_saved_mib(9228.0).passed
    assert ch06.check_gpt2_saved_mib(torch.tensor(9228)).passed
    assert ch06.check_mha_parameters(mha_parameters).passed


def test_split_then_merge_is_the_identity():
    x = torch.randn(2, 5, 12)
    assert torch.equal(merge_heads(ch06.reference_split_heads(x, 3)), x)


def test_parameter_reference_matches_the_module_and_the_formula():
    for d, h in [(64, 4), (48, 6), (128, 8)]:
        torch.manual_seed(0)
        module = sum(p.numel() for p in Attention(d, h).parameters())
        assert ch06.reference_mha_parameters(d, h, d // h, d // h) == module == 4 * d * d + 4 * d
    # d_model 48, 6 heads, d_k 12, d_v 4: W_q and W_k 48x72 + 72 each, W_v 48x24 + 24, W_o 24x48 + 48.
    assert ch06.reference_mha_parameters(48, 6, 12, 4) == 2 * (48 * 72 + 72) + (48 * 24 + 24) + (24 * 48 + 48)


def _measured_saved_square_bytes(B, T, d_model, h):
    """Bytes of the distinct (..., T, T) tensors autograd saves in one forward of the package's Attention."""
    torch.manual_seed(0)
    layer = Attention(d_model, h)
    x = torch.randn(B, T, d_model, requires_grad=True)
    saved = {}

    def pack(t):
        if tuple(t.shape[-2:]) == (T, T):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(saved.values())


def test_saved_tensors_are_measured():
    for B, T, d_model, h in [(1, 16, 24, 3), (2, 20, 32, 4), (3, 12, 32, 8)]:
        assert _measured_saved_square_bytes(B, T, d_model, h) == ch06.saved_square_bytes(B, h, T)


def test_gpt2_hints():
    def hint(answer):
        result = ch06.check_gpt2_saved_mib(answer)
        assert not result.passed
        return result.message

    assert "one float32 (B, h, T, T) tensor per layer" in hint(4608)
    assert "one float32 (B, h, T, T) tensor per layer" in hint(4620)
    assert "one more (..., T, T) tensor" in hint(9216)
    assert "every float tensor the forward writes" in hint(27648)
    assert "every tensor the forward writes" in hint(12 * (8 * 12 * 25 + 2))
    assert "10^6" in hint(9228 * 2**20 / 1e6)
    assert "bytes; give MiB" in hint(9228 * 2**20)
    assert "GiB" in hint(9228 / 1024)
    assert "one layer" in hint(769)
    assert "left out the batch" in hint(12 * (2 * 12 * 4 + 1))
    assert "pack() receives" in hint(1234)
    for answer in (4608, 9216, 27648, 769, 1234):
        assert "9228" not in hint(answer) and "9,228" not in hint(answer)
    assert "return a number" in hint("9228")
    assert "finite" in hint(float("inf"))


def test_parameter_hints():
    def hint(fn):
        result = ch06.check_mha_parameters(fn)
        assert not result.passed
        return result.message

    assert "4 d_model^2 + 4 d_model" in hint(lambda d, h, dk, dv: 4 * d * d + 4 * d)
    assert "left out the biases" in hint(lambda d, h, dk, dv: 2 * d * h * dk + 2 * d * h * dv)
    assert "not d_model x d_model" in hint(
        lambda d, h, dk, dv: (d + 1) * (2 * h * dk + h * dv) + d * d + d)
    assert "output projection" in hint(lambda d, h, dk, dv: (d + 1) * (2 * h * dk + h * dv))
    assert "W_v projects to h*d_v" in hint(lambda d, h, dk, dv: (d + 1) * 3 * h * dk + h * dk * d + d)
    assert "that counts one head" in hint(lambda d, h, dk, dv: (d + 1) * (2 * dk + dv) + dv * d + d)
    assert "bias has d_model entries" in hint(
        lambda d, h, dk, dv: (d + 1) * (2 * h * dk + h * dv) + h * dv * d + h * dv)
    assert "one by one" in hint(lambda d, h, dk, dv: 7)
    assert "return an int" in hint(lambda *a: "lots")
    assert ch06.check_mha_parameters(lambda *a: float(mha_parameters(*a))).passed


def test_merge_heads_hints():
    no_reshape = ch06.check_merge_heads(lambda x: x.transpose(1, 2))
    assert not no_reshape.passed and "side by side" in no_reshape.message
    direct = ch06.check_merge_heads(lambda x: x.reshape(x.shape[0], x.shape[2], -1))
    assert not direct.passed and "mixes tokens" in direct.message
    interleaved = ch06.check_merge_heads(lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], -1))
    assert not interleaved.passed and "interleaves" in interleaved.message


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    for check in (ch06.check_merge_heads, ch06.check_mha_parameters):
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: [1, 2]):
            result = check(answer)
            assert not result.passed and result.message
        started = time.monotonic()
        hung = check(hang)
        assert not hung.passed and "did not finish" in hung.message
        assert time.monotonic() - started < 15
    for answer in (None, float("nan"), [9228], {"mib": 9228}, True, boom, torch.zeros(2)):
        result = ch06.check_gpt2_saved_mib(answer)
        assert not result.passed and result.message
    nan = ch06.check_merge_heads(lambda x: torch.full((x.shape[0], x.shape[2], x.shape[1] * x.shape[3]), float("nan")))
    assert not nan.passed and "NaN" in nan.message
    ints = ch06.check_merge_heads(lambda x: merge_heads(x).long())
    assert not ints.passed and "dtype" in ints.message
