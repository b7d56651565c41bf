"""Checkers for Chapter 11, "The transformer block". Each takes the reader's answer and never raises."""
import torch
import torch.nn.functional as F

from ..model import GPT, GPTConfig
from ..param_count import param_count
from .base import CheckResult, as_int, check_tensor, checker, run_with_timeout

# Mistral 7B (Jiang et al. 2023, Table 1): 32 layers, dim 4096, 32 query heads of 128, 8 key/value heads,
# SwiGLU hidden dim 14336, vocabulary 32000; RMSNorm, no biases, an untied LM head (as in Llama).
_MISTRAL = dict(n_layers=32, d_model=4096, d_ff=14336, n_heads=32, n_kv_heads=8, vocab_size=32000, tied=False,
                ffn="swiglu", norm="rmsnorm", bias=False)


def _perturbed_block(seed: int):
    """A GPT-2-flavoured course block with every weight moved away from its initial value, and an input."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig.gpt2_like(vocab_size=16, context_length=8, n_layers=1, n_heads=2, d_model=8)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return model.blocks[0], torch.randn(2, 5, 8, generator=g)


@checker
def check_pre_norm_block(fn) -> CheckResult:
    """`fn(x, norm1, attn, norm2, ffn)` -> the pre-norm block's output `(B, T, d_model)`."""
    for seed in (0, 1):
        block, x = _perturbed_block(seed)
        attn = lambda h, block=block: block.attn(h, causal=True)  # noqa: E731
        with torch.no_grad():
            got, problem = run_with_timeout(fn, x.clone(), block.norm1, attn, block.norm2, block.ffn)
            if problem is not None:
                return problem
            expected = block(x)
            h = block.norm1(x + attn(x))
            out_normed = x + block.norm1(attn(x))
            wrong = {
                "post-norm": block.norm2(h + block.ffn(h)),
                "no residual": block.ffn(block.norm2(attn(block.norm1(x)))),
                "one residual": x + block.ffn(block.norm2(attn(block.norm1(x)))),
                "norm on the output": out_normed + block.norm2(block.ffn(out_normed)),
            }
        hints = {
            "post-norm": "that is the post-norm block, norm(x + f(x)); a pre-norm block normalises a copy of x "
                         "before each sub-layer and adds the sub-layer's output to x itself",
            "no residual": "there is no residual connection: each sub-layer's output must be added to its input",
            "one residual": "the FFN's input must be x after the first residual addition, x + attn(norm1(x))",
            "norm on the output": "the norm goes before each sub-layer (on its input), not on its output",
        }
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            for name, value in wrong.items():
                if torch.allclose(got, value, atol=1e-5):
                    return CheckResult(False, hints[name])
        result = check_tensor(got, expected, name="your block's output", atol=1e-5)
        if not result.passed:
            return result
    return CheckResult(True, "x + attn(norm1(x)), then + ffn(norm2(.)): the residual stream runs straight through")


@checker
def check_mistral_params(answer) -> CheckResult:
    """`answer`: the pair (total, saved): Mistral 7B's parameter count from its published configuration, and how
    many parameters its 8 key/value heads save against multi-head attention (32 key/value heads)."""
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        n, _ = as_int(answer, "")
        if n is not None and n == param_count(**_MISTRAL):
            return CheckResult(False, "that total is right; now set the pair (total, saved), with the number of "
                                      "parameters the 8 key/value heads save against 32")
        return CheckResult(False, f"set a pair (total, saved) of two ints, got {type(answer).__name__}"
                                  + (f" of length {len(answer)}" if isinstance(answer, (tuple, list)) else ""))
    n, problem = as_int(answer[0], "the total, the first of the pair")
    if problem is not None:
        return problem
    problem = _check_mistral_total(n)
    if problem is not None:
        return problem
    saved, problem = as_int(answer[1], "the parameters saved, the second of the pair")
    if problem is not None:
        return problem
    problem = _check_mistral_saving(saved)
    if problem is not None:
        return problem
    return CheckResult(True, f"{n:,} parameters, {saved:,} fewer than with 32 key/value heads "
                             f"({saved / (n + saved):.0%} of the multi-head model), and "
                             f"{3 * 32 * 4096 * 14336 / n:.0%} sit in the SwiGLU FFNs")


def _check_mistral_total(n: int) -> CheckResult | None:
    """None if `n` is Mistral 7B's parameter count, else a hint about the typical mistake it matches."""
    expected = param_count(**_MISTRAL)
    if n == expected:
        return None
    mistakes = [
        (dict(n_kv_heads=32), "you gave every query head its own key and value head; Mistral has 8 key/value "
                              "heads for its 32 query heads (W_K and W_V are 8 * 128 wide)"),
        (dict(tied=True), "Mistral's LM head is a matrix of its own, not tied to the token table: count it"),
        (dict(ffn="gelu"), "a SwiGLU FFN has three matrices (gate, up, down), not two"),
        (dict(bias=True), "Mistral's Linear layers have no biases"),
        (dict(bias=True, norm="layernorm"), "Mistral has no biases, in its Linears or its norms (RMSNorm has a "
                                            "gain only)"),
    ]
    for change, hint in mistakes:
        if n == param_count(**{**_MISTRAL, **change}):
            return CheckResult(False, f"the total: {hint}")
    if n == expected - (2 * 32 + 1) * 4096:
        return CheckResult(False, "the total is close: you left out the norms, two RMSNorm gains of d_model per "
                                  "block and a final one")
    if n == expected - 4096:
        return CheckResult(False, "the total is close: you left out the final norm after the last block")
    if n == expected - 32000 * 4096:
        return CheckResult(False, "the total: you counted one vocabulary matrix; there are two (the token table "
                                  "and the head)")
    off = (n - expected) / expected
    return CheckResult(False, f"the total {n:,} is {abs(off):.1%} too {'high' if off > 0 else 'low'}; add up, per "
                              "block, W_Q and W_O (d_model x d_model each), W_K and W_V (d_model x h_kv * d_k "
                              "each), three FFN matrices and two norm gains, then the embeddings, head and final "
                              "norm")


def _check_mistral_saving(saved: int) -> CheckResult | None:
    """None if `saved` is what 8 instead of 32 key/value heads save in Mistral 7B, else a hint."""
    L, d_model, kv = 32, 4096, 8 * 128
    expected = L * 2 * d_model * (d_model - kv)
    if saved == expected:
        return None
    if saved == -expected:
        return CheckResult(False, "the saving has the wrong sign: give how many parameters fewer, a positive "
                                  "number")
    if saved == 2 * d_model * (d_model - kv):
        return CheckResult(False, "that is the saving of one block; Mistral has 32")
    if saved == L * d_model * (d_model - kv):
        return CheckResult(False, "both W_K and W_V shrink, not only one of them")
    if saved == L * 2 * d_model * d_model:
        return CheckResult(False, "that is all of multi-head attention's W_K and W_V; grouped-query attention "
                                  "keeps 8 key/value heads, so subtract what remains")
    if saved == L * 2 * d_model * kv:
        return CheckResult(False, "that is what the 8 key/value heads cost, not what they save against 32")
    return CheckResult(False, f"the saving {saved:,} is not right: per block, W_K and W_V go from "
                              "d_model x (32 * 128) to d_model x (8 * 128) each; multiply by the number of blocks")


def half_block_lens_reference(model: GPT, idx: torch.Tensor, targets: torch.Tensor,
                              final_norm: bool = True) -> list[float]:
    """Losses of the logit lens at 2L + 1 points: the embeddings, then after each attention and each FFN.

    `final_norm=False` leaves out `model.norm_f` before the head (the typical mistake the checker names)."""
    norm = model.norm_f if final_norm else torch.nn.Identity()
    with torch.no_grad():
        pos = torch.arange(idx.shape[1])
        x = model.tok_emb(idx) + model.pos_emb(pos)[None]
        readouts = [x]
        for block in model.blocks:
            x = x + block.attn(block.norm1(x), causal=True)
            readouts.append(x)
            x = x + block.ffn(block.norm2(x))
            readouts.append(x)
        return [F.cross_entropy(model.lm_head(norm(h)).flatten(0, 1), targets.flatten()).item()
                for h in readouts]


def _lens_case(seed: int):
    torch.manual_seed(seed)
    config = GPTConfig.gpt2_like(vocab_size=64, context_length=16, n_layers=3, n_heads=2, d_model=16)
    model = GPT(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    ids = torch.randint(0, 64, (3, 13), generator=g)
    return model, ids[:, :-1], ids[:, 1:]


@checker
def check_half_block_lens(fn) -> CheckResult:
    """`fn(model, idx, targets)` -> 2L + 1 losses: embeddings, after each attention, after each FFN."""
    for seed in (0, 1):
        model, idx, targets = _lens_case(seed)
        got, problem = run_with_timeout(fn, model, idx.clone(), targets.clone())
        if problem is not None:
            return problem
        expected = half_block_lens_reference(model, idx, targets)
        L = model.config.n_layers
        if isinstance(got, torch.Tensor):
            got = got.flatten().tolist()
        if not isinstance(got, (list, tuple)):
            return CheckResult(False, f"return a list of {2 * L + 1} losses, got {type(got).__name__}")
        try:
            got = [float(v.item() if isinstance(v, torch.Tensor) else v) for v in got]
        except (TypeError, ValueError, RuntimeError):
            return CheckResult(False, "return a list of numbers (one loss per readout point)")
        if len(got) == L + 1:
            return CheckResult(False, f"got {L + 1} losses, one per block boundary; read the stream between "
                                      f"the attention and the FFN of each block too ({2 * L + 1} points)")
        if len(got) != 2 * L + 1:
            return CheckResult(False, f"expected {2 * L + 1} losses for L = {L} (the embeddings, then after "
                                      f"each attention and each FFN), got {len(got)}")
        if any(v != v for v in got):
            return CheckResult(False, "your losses contain NaN")
        unnormed = half_block_lens_reference(model, idx, targets, final_norm=False)
        if all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(got, unnormed)):
            return CheckResult(False, "apply the model's final norm (model.norm_f) before the LM head: the "
                                      "head was trained on normalised vectors")
        if abs(got[-1] - expected[-1]) <= 1e-4 * max(1.0, abs(expected[-1])) and abs(got[0] - expected[0]) > 1e-3:
            return CheckResult(False, "your first readout is off: it is the token embedding plus the learned "
                                      "position embedding, before any block")
        for i, (a, b) in enumerate(zip(got, expected)):
            if abs(a - b) > 1e-4 * max(1.0, abs(b)):
                where = "the embeddings" if i == 0 else (f"after block {(i - 1) // 2}'s "
                                                          f"{'attention' if i % 2 else 'FFN'}")
                hint = " (is your attention causal?)" if i % 2 else ""
                return CheckResult(False, f"the loss at readout {i} ({where}) is {a:.4f}, expected "
                                          f"{b:.4f}{hint}")
    return CheckResult(True, "the lens reads the stream at every addition: 2L + 1 points")
