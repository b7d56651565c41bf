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
The memory-bandwidth bound: decoding one token of a batch-1 model reads every weight once, so tokens/s
cannot exceed bandwidth / bytes of weights read per token. Bandwidth is measured here as the bytes moved
(read + write) by `torch.Tensor.copy_` of a 256 MB float32 tensor, best of 5 copies, at the same thread count.
Weights read per token: every parameter except the rows of the learned position table that are not used
(the tied embedding/head matrix is read whole by the head), 4 bytes each; KV-cache and activation traffic are
left out, so the bound is an upper limit. It only binds when the weights do not fit in the CPU's caches (the
script prints the L3 size the CPU reports; on a virtual machine that is the host's, shared with other tenants).

Speculative decoding (Leviathan et al. 2023; Chen et al. 2023; `transformer_course.speculative`): the shipped
`tiny` checkpoint as target, `small-tied` (same tokenizer) drafting k tokens per round, greedy, against `tiny`
alone with its KV cache. The script asserts that every speculative run gives exactly the target's greedy tokens.
At this size a forward pass is dominated by per-call overhead (Python, small kernels), not by reading weights, so
a pass over k + 1 tokens costs about as much as one over 1 token, and a draft pass about as much as a target
pass: the wall time says what that gives on this machine, and what carries over to large, memory-bound models is
the count of target passes per token and the weights read per token (target passes x target weights + draft
passes x draft weights, per token).
Run: .venv/bin/python benchmarks/generation.py [--new-tokens 200 --threads N --speculative-tokens 100]
"""
import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from common import add_threads_argument, fix_threads, machine, markdown_table
from transformer_course.checkpoints import load_checkpoint
from transformer_course.generation import generate
from transformer_course.hf import to_hf_state_dict
from transformer_course.model import GPT, GPTConfig
from transformer_course.speculative import speculative_generate

SIZE = dict(vocab_size=50257, context_length=1024, n_layers=12, n_heads=12, d_model=768)
EOT = 50256
PROMPT_LEN = 8
CHUNK = 10  # tokens per call of the uncached run
SPECULATIVE_PROMPT = "Once upon a time, there was"
SPECULATIVE_KS = (2, 4)


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


def memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second moved by copy_ of a float32 tensor of `megabytes` MB (read + write), best of repeats."""
    src = torch.rand(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: pages touched, caches flushed of anything else
    best = min(timed(lambda: dst.copy_(src))[1] for _ in range(repeats))
    return 2 * src.numel() * src.element_size() / best


def l3_cache() -> str:
    """The L3 cache size the CPU reports (Linux), or "unknown"."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def weight_bytes_per_token(model: GPT) -> int:
    """Bytes of weights one decoding step reads: every parameter but the unused learned-position rows."""
    unused = (model.config.context_length - 1) * model.config.d_model if model.config.positional == "learned" else 0
    return (model.num_parameters() - unused) * model.tok_emb.weight.element_size()


def speculative_rows(n: int, repeats: int, bandwidth: float) -> tuple[str, list[list]]:
    """`tiny` alone vs `tiny` verifying `small-tied`'s drafts: passes, acceptance, time and the bandwidth bound."""
    target, tokenizer, _ = load_checkpoint("tiny")
    draft, _, _ = load_checkpoint("small-tied")
    prompt = torch.tensor([tokenizer.encode(SPECULATIVE_PROMPT)])
    w_target, w_draft = weight_bytes_per_token(target), weight_bytes_per_token(draft)
    runs = {"tiny alone, `generate` (KV cache)": lambda: (generate(target, prompt, n, greedy=True), None)}
    for k in SPECULATIVE_KS:
        runs[f"tiny + small-tied draft, k={k}"] = lambda k=k: speculative_generate(target, draft, prompt, n, k,
                                                                                   greedy=True)
    for run in runs.values():
        run()  # warm-up
    times = {name: [] for name in runs}
    results = {}
    for _ in range(repeats):  # interleaved, as above
        for name, run in runs.items():
            results[name], seconds = timed(run)
            times[name].append(seconds)
    reference = results["tiny alone, `generate` (KV cache)"][0]
    rows = []
    for name, (tokens, stats) in results.items():
        assert torch.equal(tokens, reference), f"{name} generated different tokens"
        target_passes = n if stats is None else stats.target_passes
        draft_passes = 0 if stats is None else stats.draft_passes
        accepted = "" if stats is None else f"{stats.accepted}/{stats.drafted} = {stats.acceptance_rate:.2f}"
        read = (target_passes * w_target + draft_passes * w_draft) / n  # bytes of weights per token
        best = min(times[name])
        rows.append([name, f"{target_passes / n:.2f}", f"{draft_passes / n:.2f}", accepted, f"{best:.3f}",
                     f"{n / best:.0f}", f"{read / 1e6:.2f}", f"{bandwidth / read:.0f}",
                     f"{100 * n / best / (bandwidth / read):.0f}%"])
    header = (f"### Speculative decoding: `tiny` ({target.num_parameters() / 1e6:.2f}M parameters, "
              f"{w_target / 1e6:.2f} MB of weights per token) verifying `small-tied` "
              f"({draft.num_parameters() / 1e6:.2f}M, {w_draft / 1e6:.2f} MB)\n\n"
              f"Greedy, batch 1, prompt {SPECULATIVE_PROMPT!r} ({prompt.shape[1]} tokens), {n} new tokens; one "
              f"warm-up, then best of {repeats} interleaved runs. Every speculative run produced exactly the "
              f"target's greedy tokens. Weights this small stay in the CPU caches, so the DRAM bandwidth bound "
              f"does not bind here; the column shows how far per-call overhead keeps both paths from it.\n")
    return header, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens to generate (default %(default)s)")
    parser.add_argument("--no-cache-limit", type=float, default=120.0,
                        help="seconds after which the uncached run stops (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cached row (default %(default)s)")
    parser.add_argument("--speculative-tokens", type=int, default=100,
                        help="new tokens of the speculative-decoding table (default %(default)s)")
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

    bandwidth = memory_bandwidth()
    bound = bandwidth / weight_bytes_per_token(manual)  # tokens/s if every step only had to read the weights
    rows = []
    for name, results in runs.items():
        made = results[0][0].shape[1] - PROMPT_LEN
        seconds = [t for _, t in results]
        note = "" if made == n else f" (stopped at the {args.no_cache_limit:.0f} s limit)"
        rows.append([name + note, made, f"{min(seconds):.2f}", f"{made / min(seconds):.1f}",
                     f"{100 * made / min(seconds) / bound:.0f}%", ", ".join(f"{t:.2f}" for t in seconds)])
    with torch.no_grad():
        spec_header, spec_rows = speculative_rows(args.speculative_tokens, args.repeats, bandwidth)
    distinct = len(set(reference[0, PROMPT_LEN:].tolist()))

    print(f"### Greedy generation, GPT-2-small size ({manual.num_parameters() / 1e6:.0f}M parameters)\n")
    print(f"Random weights, float32, batch 1, prompt {PROMPT_LEN} tokens, {n} new tokens. One warm-up run per "
          f"row, then best of {args.repeats} timed runs (interleaved) with the cache, one run without; every run "
          f"produced the same tokens ({distinct} distinct new tokens: random weights repeat themselves), and "
          f"course and HF logits on the final sequence agree to {logits_diff:.1e}. "
          f"{threads}. {machine()}.\n")
    print(f"Memory bandwidth (copy_ of 256 MB, read + write, best of 5): {bandwidth / 1e9:.1f} GB/s; weights read "
          f"per token {weight_bytes_per_token(manual) / 1e6:.0f} MB, so the bandwidth bound for decoding is "
          f"{bound:.1f} tokens/s (the CPU reports an L3 cache of {l3_cache()}).\n")
    print(markdown_table(["model, method", "new tokens", "seconds (best)", "tokens/s", "% of bandwidth bound",
                          "every run (s)"], rows))
    print()
    print(spec_header)
    print(markdown_table(["model, method", "target passes / token", "draft passes / token", "accepted / drafted",
                          "seconds (best)", "tokens/s", "weights read / token (MB)", "bandwidth bound (tokens/s)",
                          "% of bound"], spec_rows))


if __name__ == "__main__":
    main()
