"""Speculative decoding: a small draft model proposes, the target model verifies (Chapter 14).

Leviathan, Kalman & Matias 2023, "Fast Inference from Transformers via Speculative Decoding" (§2.3,
Algorithm 1); Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative Sampling"
(Algorithm 2). One round, from a sequence of n tokens:

1. the draft model proposes k tokens x_1..x_k one at a time, sampling each from its own distribution q_i;
2. the target model scores all k + 1 positions in ONE forward pass: p_1..p_{k+1};
3. x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)), in order; at the first rejection the
   round ends with a token sampled from the residual norm(max(0, p_i - q_i)); if all k are accepted, a bonus
   token is sampled from p_{k+1}.

Each round emits between 1 and k + 1 tokens for one target pass, and every emitted token is distributed
exactly as if sampled from the target alone: P(x) = q(x) min(1, p(x)/q(x)) + P(reject) residual(x)
= min(p, q)(x) + (p - min(p, q))(x) = p(x) (Leviathan et al. 2023, Appendix A.1). Sampling options
(temperature, top-k, top-p) apply to both models' logits, so the output follows the target's filtered
distribution. Greedy decoding is the one-hot limit: a drafted token is kept iff it is the target's argmax,
and the first mismatch is replaced by the target's argmax, so the tokens equal the target's greedy `generate`
(up to float rounding where the top two logits nearly tie: the verification pass groups the sums differently).

With the KV cache (the default) each model keeps its cache between rounds; rejected positions are rolled
back by setting the cache's `length` (the entries past it are overwritten by the next write).

Leaves out: batches (B = 1 only: rows would accept different numbers of tokens), tree drafts (several
candidates per position), adapting k during generation, a stop token, and draft heads (Medusa, EAGLE).
"""
from dataclasses import dataclass

import torch

from .generation import _check_generate_args, _check_sampling_args, filtered_probs, pick_next
from .model import GPT, KVCache
from .utils import check_int, check_tensor, describe


@dataclass
class SpeculativeStats:
    """What one `speculative_generate` call cost: forward passes of each model and drafted/accepted tokens."""

    generated: int = 0  # new tokens returned
    target_passes: int = 0  # one per round: the target scores the k drafted tokens + 1 at once
    draft_passes: int = 0  # one per drafted token
    drafted: int = 0  # tokens the draft proposed
    accepted: int = 0  # of those, kept by the target
    rejected: int = 0  # rounds that ended at a rejected draft (<= target_passes)

    @property
    def acceptance_rate(self) -> float:
        """accepted / drafted (drafted tokens after a rejection count as not accepted); nan if none drafted."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def examined_acceptance_rate(self) -> float:
        """accepted / (accepted + rejected): the share of the drafted tokens the target examined that it kept,
        an estimate of Leviathan et al.'s per-token acceptance probability alpha; nan if none examined."""
        examined = self.accepted + self.rejected
        return self.accepted / examined if examined else float("nan")

    @property
    def target_passes_per_token(self) -> float:
        """Target forward passes per generated token: 1 for plain decoding, 1/(k+1) at best."""
        return self.target_passes / self.generated if self.generated else float("nan")


def _check_distributions(p, q):
    check_tensor("p (the target's distribution)", p, ("V",), "float")
    check_tensor(f"q (the draft's distribution, like p: {describe(p)})", q, tuple(p.shape), p.dtype, p.device)


def acceptance_probability(p: torch.Tensor, q: torch.Tensor, drafted: int) -> float:
    """min(1, p(x) / q(x)) for the drafted token x; p, q `(V,)` probability vectors, q(x) > 0."""
    _check_distributions(p, q)
    check_int("drafted", drafted, 0, p.shape[0] - 1)
    if not q[drafted] > 0:
        raise ValueError(f"drafted={drafted} has draft probability q[drafted]={q[drafted].item()}: a drafted "
                         f"token must have been possible under q")
    return min(1.0, (p[drafted] / q[drafted]).item())


def residual_distribution(p: torch.Tensor,
                          q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) `(V,)`: what a rejection samples from. Where
    p <= q everywhere (so p == q and a rejection has probability 0), p."""
    _check_distributions(p, q)
    residual = (p - q).clamp_min(0)  # (V,)
    # = total variation distance between p and q = P(reject)
    mass = residual.sum()
    return residual / mass if mass > 0 else p


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, drafted: int,
                       generator=None) -> tuple[bool, int]:
    """One verification step: (True, drafted) with probability
    min(1, p(x)/q(x)), else (False, a token sampled from
    `residual_distribution(p, q)`). p, q `(V,)`; generator: a
    `torch.Generator` on p's device."""
    ratio = acceptance_probability(p, q, drafted)  # checks p, q, drafted
    _check_generator(generator, p.device)
    if ratio >= 1:  # p(x) >= q(x): always kept, no draw needed
        return True, drafted
    u = torch.rand((), generator=generator, device=p.device).item()
    if u < ratio:
        return True, drafted
    residual = residual_distribution(p, q)
    token = torch.multinomial(residual, 1, generator=generator).item()
    return False, token


def _check_generator(generator, device) -> None:
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device != device):
        raise ValueError(f"generator must be None or a torch.Generator on {device}, got {describe(generator)}")


def _check_models(target, draft, idx, max_new_tokens, k, use_cache):
    for name, model in (("target", target), ("draft", draft)):
        if not isinstance(model, GPT):
            raise ValueError(f"{name} must be a course GPT, got {describe(model)}")
    _check_generate_args(target, idx, max_new_tokens, None, use_cache)  # idx, max_new_tokens, target context
    check_int("k (tokens drafted per round)", k)
    t, d = target.config, draft.config
    if d.vocab_size != t.vocab_size:
        raise ValueError(f"draft has vocab_size {d.vocab_size} but target has {t.vocab_size}: the two models "
                         f"must share one vocabulary (and tokenizer)")
    if draft.tok_emb.weight.device != target.tok_emb.weight.device:
        raise ValueError(f"draft is on {draft.tok_emb.weight.device} but target on {target.tok_emb.weight.device}")
    if idx.shape[0] != 1:
        raise ValueError(f"idx must hold one prompt (batch size 1; speculative_generate does not batch), "
                         f"got shape {tuple(idx.shape)}")
    end = idx.shape[1] + max_new_tokens
    if end > d.context_length:
        raise ValueError(f"prompt of {idx.shape[1]} tokens + max_new_tokens={max_new_tokens} = {end} exceeds the "
                         f"draft's context length {d.context_length}")


def _truncate(cache: KVCache | None, length: int) -> None:
    """Forget every cached position from `length` on (they are overwritten by the next update)."""
    if cache is not None:
        for layer in cache.layers:
            layer.length = min(layer.length, length)


def _logits_of_new(model: GPT, seq: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Logits `(1, T_new, V)` at the positions of seq `(1, n)` the cache does not hold yet (all without one)."""
    if cache is None:
        return model(seq)[0]  # (1, n, V)
    return model(seq[:, cache.length:], cache=cache)[0]  # (1, n - cached, V)


def speculative_generate(
    target: GPT,
    draft: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    k: int = 4,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> tuple[torch.Tensor, SpeculativeStats]:
    """Extend the prompt idx `(1, T)` by max_new_tokens tokens of the target's distribution, drafting k
    tokens per round with `draft` -> (tokens `(1, T + max_new_tokens)`, `SpeculativeStats`).

    Batch size 1 only. target and draft must share the vocabulary (only vocab_size can be checked: the
    tokenizer is the caller's). Sampling options as in `generate`, applied to both models; generator: a
    `torch.Generator` on the models' device. Near the end a round drafts fewer tokens, so no draft is wasted
    past max_new_tokens. Both models run in eval mode and are put back in their previous modes afterwards.
    """
    _check_sampling_args(temperature, top_k, top_p, greedy)
    _check_models(target, draft, idx, max_new_tokens, k, use_cache)
    _check_generator(generator, idx.device)
    modes = target.training, draft.training
    target.eval()
    draft.eval()
    try:
        with torch.no_grad():
            return _speculate(target, draft, idx, max_new_tokens, k, use_cache, greedy, generator,
                              dict(temperature=temperature, top_k=top_k, top_p=top_p))
    finally:
        target.train(modes[0])
        draft.train(modes[1])


def _speculate(target, draft, idx, max_new_tokens, k, use_cache, greedy,
               generator, choose):
    # k: tokens drafted per round (gamma in Leviathan et al.)
    stats = SpeculativeStats(generated=max_new_tokens)
    end = idx.shape[1] + max_new_tokens
    target_cache = target.new_cache(1, end) if use_cache else None
    draft_cache = draft.new_cache(1, end) if use_cache else None
    tokens = idx.clone()  # (1, n): everything accepted so far
    while tokens.shape[1] < end:
        n = tokens.shape[1]
        k_now = min(k, end - n - 1)  # the round emits <= k_now + 1 tokens

        # 1. Draft k_now tokens, one draft pass each; q[i] is the
        # distribution x_i was sampled from.
        seq, q = tokens, []  # seq (1, n + i)
        for _ in range(k_now):
            logits = _logits_of_new(draft, seq, draft_cache)[:, -1]  # (1,V)
            if greedy:
                x = pick_next(logits, greedy=True)  # (1, 1)
            else:
                q.append(filtered_probs(logits, **choose)[0])  # (V,)
                x = torch.multinomial(q[-1], 1, generator=generator)
                x = x[None]  # (1, 1)
            seq = torch.cat([seq, x], dim=1)
        stats.draft_passes += k_now
        stats.drafted += k_now

        # 2. One target pass scores every drafted position and the one
        # after: p_1..p_{k_now+1}, logits (1, k_now + 1, V).
        target_logits = _logits_of_new(target, seq, target_cache)
        target_logits = target_logits[:, -(k_now + 1):]
        stats.target_passes += 1

        # 3. Accept in order; the first rejection ends the round with a
        # residual sample.
        new = []
        for i, x in enumerate(seq[0, n:].tolist()):
            if greedy:  # one-hot p, q: kept iff x is the target's argmax
                best = pick_next(target_logits[:, i], greedy=True).item()
                accepted, token = best == x, best
            else:
                p = filtered_probs(target_logits[:, i], **choose)[0]  # (V,)
                # float32 for both (the models may differ in dtype)
                accepted, token = accept_or_resample(
                    p.float(), q[i].float(), x, generator)
            new.append(token)
            if not accepted:
                stats.rejected += 1
                break
        else:  # all k_now accepted: a bonus token from p_{k_now+1}
            new.append(pick_next(target_logits[:, k_now], greedy=greedy,
                                 generator=generator, **choose).item())
        stats.accepted += len(new) - 1
        new = torch.tensor([new], device=tokens.device)
        tokens = torch.cat([tokens, new], dim=1)

        # 4. Roll back: each cache keeps only positions still in `tokens`
        # (the newest token is fed next round). The target cached
        # n + k_now positions, the draft n + k_now - 1.
        _truncate(target_cache, tokens.shape[1] - 1)
        _truncate(draft_cache, tokens.shape[1] - 1)
    return tokens, stats
