"""Chapter 11's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import time

import pytest
import torch
import torch.nn.functional as F

from transformer_course.exercises import ch11


def pre_norm_block(x, norm1, attn, norm2, ffn):
    x = x + attn(norm1(x))
    return x + ffn(norm2(x))


def half_block_lens(model, idx, targets):
    """Written independently of the checker's reference: hooks on the sub-layers of the unchanged model."""
    points = []
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, args: points.append(args[0]))]
    for block in model.blocks:
        # x after the attention addition is the input of norm2; after the FFN addition, the block's output
        hooks.append(block.norm2.register_forward_pre_hook(lambda m, args: points.append(args[0])))
        hooks.append(block.register_forward_hook(lambda m, args, out: points.append(out)))
    with torch.no_grad():
        model.features(idx)
        losses = [F.cross_entropy(model.lm_head(model.norm_f(h)).flatten(0, 1), targets.flatten()).item()
                  for h in points]
    for h in hooks:
        h.remove()
    return losses


# Mistral 7B from its Table 1 (Jiang et al. 2023), counted by hand: per block W_Q, W_O 4096^2 each, W_K, W_V
# 4096 x 1024 each, three 4096 x 14336 FFN matrices, two gains; token table and head 32000 x 4096 each; final norm.
PER_BLOCK = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
MISTRAL = 32 * PER_BLOCK + 2 * 32000 * 4096 + 4096
# With 32 key/value heads W_K and W_V would be 4096 x 4096 each: 32 blocks x 2 matrices x 4096 x (4096 - 1024) more.
SAVED = 32 * 2 * 4096 * (4096 - 1024)


def test_reference_answers_pass():
    assert ch11.check_pre_norm_block(pre_norm_block).passed
    assert ch11.check_mistral_params((MISTRAL, SAVED)).passed
    assert MISTRAL == 7_241_732_096 and SAVED == 805_306_368  # pinned: the hand counts above
    assert ch11.check_mistral_params([float(MISTRAL), float(SAVED)]).passed
    assert ch11.check_mistral_params((torch.tensor(MISTRAL), torch.tensor(SAVED))).passed
    assert ch11.check_half_block_lens(half_block_lens).passed


def test_pre_norm_block_hints():
    def message(fn):
        result = ch11.check_pre_norm_block(fn)
        assert not result.passed
        return result.message

    def post(x, n1, a, n2, f):
        x = n1(x + a(x))
        return n2(x + f(x))

    def no_residual(x, n1, a, n2, f):
        return f(n2(a(n1(x))))

    def one_residual(x, n1, a, n2, f):
        return x + f(n2(a(n1(x))))

    def norm_after(x, n1, a, n2, f):
        x = x + n1(a(x))
        return x + n2(f(x))

    assert "post-norm" in message(post)
    assert "no residual" in message(no_residual)
    assert "first residual" in message(one_residual)
    assert "before each sub-layer" in message(norm_after)
    assert "shape" in message(lambda x, *rest: x[:, :-1])


def test_mistral_hints():
    def message(answer):
        result = ch11.check_mistral_params(answer)
        assert not result.passed
        return result.message

    def total(n):
        return message((n, SAVED))

    mha = MISTRAL + SAVED
    assert "8 key/value" in total(mha)
    assert "not tied" in total(MISTRAL - 32000 * 4096)
    assert "three matrices" in total(MISTRAL - 32 * 4096 * 14336)
    assert "no biases" in total(MISTRAL + 32 * (4096 + 2 * 1024 + 4096 + 2 * 14336 + 4096))
    assert "norms" in total(MISTRAL - 65 * 4096)
    assert "final norm" in total(MISTRAL - 4096)
    assert "too high" in total(MISTRAL + 10**9)
    assert "int" in total("7.24B")
    # the saving, once the total is right
    assert "one block" in message((MISTRAL, SAVED // 32))
    assert "both W_K and W_V" in message((MISTRAL, SAVED // 2))
    assert "wrong sign" in message((MISTRAL, -SAVED))
    assert "all of multi-head" in message((MISTRAL, 32 * 2 * 4096 * 4096))
    assert "cost, not what they save" in message((MISTRAL, 32 * 2 * 4096 * 1024))
    assert "not right" in message((MISTRAL, SAVED + 1))
    assert "int" in message((MISTRAL, None))
    # the total alone: right, but the pair is asked for
    assert "pair" in message(MISTRAL) and "right" in message(MISTRAL)
    assert "pair" in message(MISTRAL + 1)


def test_half_block_lens_hints():
    def message(fn):
        result = ch11.check_half_block_lens(fn)
        assert not result.passed
        return result.message

    def boundaries_only(model, idx, targets):
        return half_block_lens(model, idx, targets)[::2]

    def no_final_norm(model, idx, targets):
        points = []
        hooks = [model.blocks[0].register_forward_pre_hook(lambda m, args: points.append(args[0]))]
        for block in model.blocks:
            hooks.append(block.norm2.register_forward_pre_hook(lambda m, args: points.append(args[0])))
            hooks.append(block.register_forward_hook(lambda m, args, out: points.append(out)))
        with torch.no_grad():
            model.features(idx)
        for h in hooks:
            h.remove()
        return [F.cross_entropy(model.lm_head(h).flatten(0, 1), targets.flatten()).item() for h in points]

    def not_causal(model, idx, targets):
        with torch.no_grad():
            x = model.tok_emb(idx) + model.pos_emb(torch.arange(idx.shape[1]))[None]
            out = [x]
            for b in model.blocks:
                x = x + b.attn(b.norm1(x), causal=False)
                out.append(x)
                x = x + b.ffn(b.norm2(x))
                out.append(x)
            return [F.cross_entropy(model.lm_head(model.norm_f(h)).flatten(0, 1), targets.flatten()).item()
                    for h in out]

    assert "block boundary" in message(boundaries_only)
    assert "final norm" in message(no_final_norm)
    assert "causal" in message(not_causal)
    assert "list" in message(lambda *a: 3.0)


@pytest.mark.parametrize("check", [ch11.check_pre_norm_block, ch11.check_half_block_lens])
def test_function_checkers_never_crash(check):
    def raises(*args):
        raise RuntimeError("boom")

    def hangs(*args):
        time.sleep(60)

    for answer in (None, 3, "x", raises, lambda *a: None, lambda *a: float("nan"), lambda *a: [math.nan] * 7):
        result = check(answer)
        assert not result.passed and result.message
    started = time.perf_counter()
    assert not check(hangs).passed
    assert time.perf_counter() - started < 30


def test_value_checker_never_crashes():
    for answer in (None, math.nan, "7241732096", True, [MISTRAL], {}, -1, 7.5e9, (MISTRAL, SAVED, 0),
                   (math.nan, SAVED), (MISTRAL, math.nan), (True, True), (MISTRAL, "805306368"), torch.ones(2)):
        result = ch11.check_mistral_params(answer)
        assert not result.passed and result.message
