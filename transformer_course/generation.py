"""Generating text: one token at a time, each fed back in (Chapter 14).

Each step turns the last position's logits `(B, V)` into a next token:

- greedy: the most probable token (argmax);
- temperature: divide the logits by τ before the softmax; τ < 1 sharpens, τ > 1 flattens;
- top-k: keep the k largest logits (Fan et al. 2018);
- top-p (nucleus, Holtzman et al. 2019 §3.1): keep the smallest set of most probable tokens whose
  probability mass reaches p;
then sample from the softmax of what is left, with an explicit `torch.Generator` for reproducibility.
Order as in Hugging Face: temperature, then top-k, then top-p.

With the KV cache the prompt is run once and every later step feeds only the newest token: step t costs
O(t) attention work instead of recomputing all t positions (O(t^2)). Batches of prompts of different
lengths are padded on the LEFT, so every row's next token is at the last column.

A stop token (e.g. `<|endoftext|>`) ends a row: once a row has emitted it, every later position of that row
holds the stop token too, and generation ends early when every row has emitted it (as Hugging Face's
`generate` does with `eos_token_id`, except that it fills finished rows with `pad_token_id`).

Leaves out: beam search, repetition penalties, stop strings (several tokens), min-p. Speculative decoding, a
draft model proposing tokens that the target verifies: `speculative.py`.
"""
import torch

from .model import GPT
from .utils import check_bool, check_int, check_number, check_tensor, describe


def _check_logits(logits, shape=("...", "V")) -> None:
    check_tensor("logits", logits, shape, "float")
    if logits.shape[-1] == 0:
        raise ValueError(f"logits must hold at least one token's score (V >= 1), got shape {tuple(logits.shape)}")


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits `(..., V)` / temperature (> 0)."""
    _check_logits(logits)
    check_number("temperature", temperature)
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf
    `(..., V)` (ties with it are kept)."""
    _check_logits(logits)
    check_int("top_k", k)
    k = min(k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most probable tokens whose probability
    reaches p; the rest -> -inf `(..., V)`.

    Sorted by probability, a token is dropped when the tokens before it
    already hold mass >= p.
    """
    _check_logits(logits)
    check_number("top_p", p, "(0, 1]")
    if p == 1:
        # everything is kept (float rounding of the sum cannot drop one)
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    # mass of the strictly more probable tokens (0 for the first one)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop_sorted = mass_before >= p  # never drops the first token
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # vocab order
    return logits.masked_fill(drop, float("-inf"))


def _check_sampling_args(temperature, top_k, top_p, greedy):
    if check_bool("greedy", greedy):
        return
    check_number("temperature (use greedy=True for argmax decoding)", temperature)
    if top_k is not None:
        check_int("top_k", top_k)
    if top_p is not None:
        check_number("top_p", top_p, "(0, 1]")


def filtered_probs(logits: torch.Tensor, temperature=1.0, top_k=None, top_p=None) -> torch.Tensor:
    """logits `(B, V)` -> the sampling distribution `(B, V)` after temperature, top-k and top-p."""
    _check_sampling_args(temperature, top_k, top_p, greedy=False)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.softmax(logits, dim=-1)


def next_token_distribution(model: GPT, idx: torch.Tensor, temperature=1.0, top_k=None, top_p=None) -> torch.Tensor:
    """The distribution `(B, V)` the next token of each row of idx `(B, T)` would be sampled from."""
    _check_model(model)
    with torch.no_grad():
        logits, _ = model(idx)
    return filtered_probs(logits[:, -1], temperature, top_k, top_p)


def pick_next(logits: torch.Tensor, *, temperature=1.0, top_k=None,
              top_p=None, greedy=False, generator=None):
    """logits `(B, V)` of the last position -> next tokens `(B, 1)`."""
    _check_sampling_args(temperature, top_k, top_p, greedy)
    _check_logits(logits, ("B", "V"))
    if generator is not None and (
            not isinstance(generator, torch.Generator)
            or generator.device != logits.device):
        raise ValueError(f"generator must be None or a torch.Generator on "
                         f"{logits.device} (the logits' device), got "
                         f"{describe(generator)}")
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    probs = filtered_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, num_samples=1,
                             generator=generator)  # (B, 1)


def left_pad(sequences: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> idx `(B, T_max)` padded on the left with pad_id, and the padding
    mask `(B, T_max)` (True for real tokens)."""
    check_int("pad_id", pad_id, 0)
    if not isinstance(sequences, (list, tuple)) or not sequences or not all(
            isinstance(s, (list, tuple)) and s and all(isinstance(i, int) and not isinstance(i, bool) for i in s)
            for s in sequences):
        raise ValueError(f"sequences must be a non-empty list of non-empty lists of token ids (ints), "
                         f"got {describe(sequences)}")
    T = max(len(s) for s in sequences)
    idx = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), T, dtype=torch.bool)
    for row, s in enumerate(sequences):
        idx[row, T - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[row, T - len(s):] = True
    return idx, mask


def _check_model(model) -> None:
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a course GPT, got {describe(model)}")


def _check_generate_args(model, idx, max_new_tokens, padding_mask, use_cache, stop_token=None):
    _check_model(model)
    if stop_token is not None:
        check_int("stop_token", stop_token, 0, model.config.vocab_size - 1)
    device = model.tok_emb.weight.device
    check_tensor("idx (the prompts)", idx, ("B", "T"), torch.long, device)
    if 0 in idx.shape:
        raise ValueError(f"idx must hold at least one prompt of at least one token, got shape {tuple(idx.shape)}")
    check_int("max_new_tokens", max_new_tokens, 0)
    check_bool("use_cache", use_cache)
    T, context = idx.shape[1], model.config.context_length
    if T + max_new_tokens > context:
        raise ValueError(
            f"prompt of {T} tokens + max_new_tokens={max_new_tokens} = {T + max_new_tokens} exceeds the "
            f"context length {context}"
        )
    if padding_mask is not None:
        check_tensor("padding_mask", padding_mask, tuple(idx.shape), torch.bool, device)
        # Left padding: once a row's real tokens start, they continue to the end.
        if (padding_mask[:, :-1] & ~padding_mask[:, 1:]).any() or not padding_mask[:, -1].all():
            raise ValueError("padding_mask must pad on the LEFT (False... then True... in every row)")


def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    padding_mask: torch.Tensor | None = None,
    stop_token: int | None = None,
) -> torch.Tensor:
    """Extend the prompts idx `(B, T)` by max_new_tokens tokens -> `(B, T + max_new_tokens)`.

    padding_mask `(B, T)`: True for real tokens, for a batch of prompts padded on the left (see `left_pad`).
    stop_token: a row that emits it is finished; its later positions hold stop_token, and generation stops
    as soon as every row is finished, so the result may be shorter: `(B, T + n)`, n <= max_new_tokens.
    generator: a `torch.Generator` on the model's device, for reproducible sampling. The model runs in eval
    mode (no dropout) and is put back in its previous mode afterwards.
    """
    _check_sampling_args(temperature, top_k, top_p, greedy)
    _check_generate_args(model, idx, max_new_tokens, padding_mask, use_cache, stop_token)
    choose = dict(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, generator=generator,
                  stop_token=stop_token)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if use_cache:
                return _generate_cached(model, idx, max_new_tokens, padding_mask, choose)
            return _generate_uncached(model, idx, max_new_tokens, padding_mask, choose)
    finally:
        model.train(was_training)


def _pick(logits, finished, stop_token=None, **choose):
    """The next tokens `(B, 1)`; rows already finished `(B,)` get
    stop_token. Updates finished in place."""
    next_token = pick_next(logits, **choose)  # (B, 1)
    if stop_token is not None:
        next_token.masked_fill_(finished[:, None], stop_token)
        finished |= next_token[:, 0] == stop_token
    return next_token


def _grow(padding_mask, B, device):
    """Add one real-token column to the padding mask (None stays None)."""
    if padding_mask is None:
        return None
    return torch.cat([padding_mask, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)


def _generate_uncached(model, idx, max_new_tokens, padding_mask, choose):
    """Every step runs the whole sequence so far: simple, and O(t^2)
    attention work at step t."""
    B = idx.shape[0]
    # rows that emitted the stop token
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits, _ = model(idx, padding_mask=padding_mask)  # (B, T, V)
        next_token = _pick(logits[:, -1], finished, **choose)  # (B, 1)
        idx = torch.cat([idx, next_token], dim=1)
        padding_mask = _grow(padding_mask, B, idx.device)
        if finished.all():
            break
    return idx


def _generate_cached(model, idx, max_new_tokens, padding_mask, choose):
    """Run the prompt once, then feed one token per step; keys and
    values of the past come from the cache."""
    B, T = idx.shape
    if max_new_tokens == 0:
        return idx.clone()
    cache = model.new_cache(B, max_len=T + max_new_tokens)
    # rows that emitted the stop token
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    # the prompt: (B, T, V)
    logits, _ = model(idx, padding_mask=padding_mask, cache=cache)
    for step in range(max_new_tokens):
        next_token = _pick(logits[:, -1], finished, **choose)  # (B, 1)
        idx = torch.cat([idx, next_token], dim=1)
        padding_mask = _grow(padding_mask, B, idx.device)
        if finished.all():
            break
        if step < max_new_tokens - 1:
            logits, _ = model(next_token, padding_mask=padding_mask,
                              cache=cache)  # (B, 1, V)
    return idx
