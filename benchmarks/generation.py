"""Greedy generation of 200 tokens on a GPT-2-small-sized model: the course model with and without its KV
cache, and Hugging Face `generate` on the same weights.

GPT-2 small's shape (V=50257, context 1024, L=12, h=12, d_model=768, 124M parameters) with random weights,
float32, eval mode, under `torch.no_grad()`, batch 1, a prompt of 8 tokens. The course model is converted
with `transformer_course.hf.to_hf_state_dict` and loaded into `GPT2LMHeadModel`; before any time is reported
the script asserts that every run produced exactly the same tokens and that the two models' logits on the
generated sequence agree (< 1e-4).

`min_new_tokens=200` keeps Hugging Face from stopping at <|endoftext|> (id 50256) by banning that token
before 200 tokens; the course model has no stop token, so if it ever chose 50256 the token assert would fail
rather than hide the difference.

Each row has one untimed warm-up run first (for the uncached row a 20-token one: the same code, so the same
kernels). The rows with a cache then run `--repeats` times, interleaved, and report the fastest run (noise on a
shared machine only ever adds time); every run's time is listed beside it. The uncached course run is cut
into calls of 10 tokens, each continuing the previous output (without a cache every step recomputes the
whole sequence anyway, so this is the same work); if it passes
`--no-cache-limit` seconds it stops there and the table reports the tokens it actually generated.
Run: .venv/bin/python benchmarks/generation.py [--new-tokens 200 --threads N]
"""
import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from common import add_threads_argument, fix_threads, machine, markdown_table
from transformer_course.generation import generate
from transformer_course.hf import to_hf_state_dict
from transformer_course.model import GPT, GPTConfig

SIZE = dict(vocab_size=50257, context_length=1024, n_layers=12, n_heads=12, d_model=768)
EOT = 50256
PROMPT_LEN = 8
CHUNK = 10  # tokens per call of the uncached run


def course_models() -> tuple[GPT, GPT]:
    """The same random weights with manual attention and with attn_impl="sdpa"."""
    torch.manual_seed(0)
    manual = GPT(GPTConfig.gpt2_like(**SIZE)).eval()
    sdpa = GPT(GPTConfig.gpt2_like(**SIZE, attn_impl="sdpa")).eval()
    sdpa.load_state_dict(manual.state_dict())
    return manual, sdpa


def hf_model(course: GPT, attn_implementation: str) -> GPT2LMHeadModel:
    c = course.config
    config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.context_length, n_layer=c.n_layers,
                        n_head=c.n_heads, n_embd=c.d_model, layer_norm_epsilon=c.norm_eps, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=attn_implementation)
    model = GPT2LMHeadModel(config).eval()
    model.load_state_dict(to_hf_state_dict(course))
    assert model.config._attn_implementation == attn_implementation, model.config._attn_implementation
    return model


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def course_cached(model: GPT, prompt: torch.Tensor, n: int):
    return timed(lambda: generate(model, prompt, n, greedy=True, use_cache=True))


def course_uncached(model: GPT, prompt: torch.Tensor, n: int, limit_s: float = float("inf")):
    """Generate up to n tokens without the cache, CHUNK at a time, stopping once limit_s has passed."""
    idx, t0 = prompt, time.perf_counter()
    while idx.shape[1] - prompt.shape[1] < n and time.perf_counter() - t0 < limit_s:
        step = min(CHUNK, n - (idx.shape[1] - prompt.shape[1]))
        idx = generate(model, idx, step, greedy=True, use_cache=False)
    return idx, time.perf_counter() - t0


def hf_generate(model: GPT2LMHeadModel, prompt: torch.Tensor, n: int):
    return timed(lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                        max_new_tokens=n, min_new_tokens=n, pad_token_id=EOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens to generate (default %(default)s)")
    parser.add_argument("--no-cache-limit", type=float, default=120.0,
                        help="seconds after which the uncached run stops (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cached row (default %(default)s)")
    add_threads_argument(parser)
    args = parser.parse_args()
    threads = fix_threads(args.threads)
    n = args.new_tokens

    with torch.no_grad():
        manual, sdpa = course_models()
        hf_sdpa, hf_eager = hf_model(manual, "sdpa"), hf_model(manual, "eager")
        prompt = torch.randint(SIZE["vocab_size"], (1, PROMPT_LEN), generator=torch.Generator().manual_seed(0))
        cached_rows = {
            "course GPT, KV cache (manual attention)": lambda k: course_cached(manual, prompt, k),
            "course GPT, KV cache (attn_impl=\"sdpa\")": lambda k: course_cached(sdpa, prompt, k),
            "HF `generate` (sdpa)": lambda k: hf_generate(hf_sdpa, prompt, k),
            "HF `generate` (eager)": lambda k: hf_generate(hf_eager, prompt, k),
        }
        for run in cached_rows.values():
            run(n)  # warm-up
        # Repeats interleaved over the rows, so a burst of other work on the machine hits all rows alike.
        runs = {name: [] for name in cached_rows}
        for _ in range(args.repeats):
            for name, run in cached_rows.items():
                runs[name].append(run(n))
        uncached = "course GPT, no cache (manual attention)"
        course_uncached(manual, prompt, 20)  # warm-up
        runs[uncached] = [course_uncached(manual, prompt, n, args.no_cache_limit)]
        final = runs["course GPT, KV cache (manual attention)"][0][0]  # (1, PROMPT_LEN + n)
        logits_diff = (manual(final)[0] - hf_eager(final).logits).abs().max().item()  # same weights?

    assert logits_diff < 1e-4, f"course and HF logits differ by {logits_diff:.2e}"
    reference = final
    assert reference.shape == (1, PROMPT_LEN + n), reference.shape
    for name, results in runs.items():
        for tokens, _ in results:
            assert torch.equal(tokens, reference[:, :tokens.shape[1]]), f"{name} generated different tokens"
            assert tokens.shape[1] == reference.shape[1] or name == uncached, f"{name} stopped early"

    rows = []
    for name, results in runs.items():
        made = results[0][0].shape[1] - PROMPT_LEN
        seconds = [t for _, t in results]
        note = "" if made == n else f" (stopped at the {args.no_cache_limit:.0f} s limit)"
        rows.append([name + note, made, f"{min(seconds):.2f}", f"{made / min(seconds):.1f}",
                     ", ".join(f"{t:.2f}" for t in seconds)])
    distinct = len(set(reference[0, PROMPT_LEN:].tolist()))

    print(f"### Greedy generation, GPT-2-small size ({manual.num_parameters() / 1e6:.0f}M parameters)\n")
    print(f"Random weights, float32, batch 1, prompt {PROMPT_LEN} tokens, {n} new tokens. One warm-up run per "
          f"row, then best of {args.repeats} timed runs (interleaved) with the cache, one run without; every run "
          f"produced the same tokens ({distinct} distinct new tokens: random weights repeat themselves), and "
          f"course and HF logits on the final sequence agree to {logits_diff:.1e}. "
          f"{threads}. {machine()}.\n")
    print(markdown_table(["model, method", "new tokens", "seconds (best)", "tokens/s", "every run (s)"], rows))


if __name__ == "__main__":
    main()
