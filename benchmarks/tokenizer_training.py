"""Training byte-level BPE: the course's naive and fast trainers, and Hugging Face `tokenizers`, side by side.

Two corpora of about 200 KB, both available offline:
- prose: the documentation topics that ship with CPython (`pydoc_data.topics`, the text behind `help("if")`),
  taken in the sorted order of their names, joined by blank lines, whole topics until at least 200,000
  characters (English prose with short code examples; the text depends on the Python version, printed below);
- synthetic: `transformer_course.data.synthetic_corpus(200_000, seed=0)`, the course's own corpus.
Held-out text for compression: the prose topics after the training ones (about 100,000 characters) and
`synthetic_corpus(100_000, seed=1)`.

For each corpus and vocabulary size V (counting the 256 bytes, the merges and "<|endoftext|>"):
- `train_naive` (recounts every pair after every merge) once, stopped after `--naive-limit` seconds: a
  stopped run is reported as "> limit", a measured lower bound, never an extrapolation;
- `train_fast` (incremental pair counts and a heap), the fastest of `--repeats` runs; the script asserts
  that it learned exactly the merges of every naive run that finished;
- Hugging Face `BpeTrainer` with the `ByteLevel` pre-tokenizer (GPT-2's split pattern and byte alphabet) and
  the same V, the fastest of `--repeats` runs. It is Rust and uses its own thread pool (rayon: one thread
  per logical CPU unless RAYON_NUM_THREADS says otherwise); our trainers are single-threaded Python.
  Its trainer would merge the pieces of "<|endoftext|>" found in the text ("<|", "endoftext"), so it is given
  the documents between them, one per item: the same text our trainers count.
Compression is bytes of UTF-8 per token on the training text and on the held-out text. "Shared merges" is
how many of the V - 257 merges both our trainers and Hugging Face's learned (ties are broken differently).

A second table trains on minbpe's own test text (`../shared/data/taylorswift.txt`, V = 512), beside the
repository, so a reader's clone skips it with a message. It times `train_naive` imported from the package
(so `import torch` has filled the process with ~150,000 long-lived objects) against the same function in a
fresh process where `torch` is an empty stub (no torch objects at all), in interleaved rounds, and once more
with the trainer's garbage-collector pause undone, the state before it existed.

The synthetic corpus has a small closed vocabulary: after 1435 merges every distinct chunk of it is a single
token, so V = 4096 cannot be reached; our trainers say so with a ValueError (reported in the table) and its
largest row is V = 1024 instead, the size of the course tokenizer.
About 4 minutes on 2 CPU cores shared with other work (237 s at a load average of 4 to 7), most of it the
naive trainer.
Run: .venv/bin/python benchmarks/tokenizer_training.py [--naive-limit 90 --repeats 3]
"""
import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pydoc_data.topics
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from common import machine, markdown_table
from transformer_course.data import synthetic_corpus
from transformer_course import tokenization
from transformer_course.tokenization import EOT, gpt2_bytes_to_unicode, train_fast, train_naive

TRAIN_CHARS, HELD_OUT_CHARS = 200_000, 100_000
MINBPE_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "taylorswift.txt"
# The same trainer in a process without torch: `torch` is an empty stub module, so importing the package
# creates none of torch's objects (nothing here calls torch). Prints the seconds of one train_naive run.
TORCH_FREE = """
import sys, time, types
class Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = Stub(self.__name__ + "." + name)
        sys.modules[sub.__name__] = sub
        setattr(self, name, sub)
        return sub
    def __call__(self, *args, **kwargs):
        return self
    def __mro_entries__(self, bases):
        return (object,)
sys.modules["torch"] = Stub("torch")
from transformer_course.tokenization import train_naive
text = open(sys.argv[1], encoding="utf-8").read()
start = time.perf_counter()
train_naive(text, int(sys.argv[2]))
print(time.perf_counter() - start)
assert "__version__" not in vars(sys.modules["torch"])
"""
RUNS = [("prose", 512), ("prose", 4096), ("synthetic", 512), ("synthetic", 1024), ("synthetic", 4096)]


def prose_corpus() -> tuple[str, str]:
    """(training text, held-out text): whole pydoc topics, in sorted order, until each reaches its size."""
    topics = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)]
    parts, i = [], 0
    for size in (TRAIN_CHARS, HELD_OUT_CHARS):
        chosen = []
        while sum(map(len, chosen)) + 2 * len(chosen) < size:
            chosen.append(topics[i])
            i += 1
        parts.append("\n\n".join(chosen))
    return parts[0], parts[1]


def corpora() -> dict[str, tuple[str, str]]:
    return {"prose": prose_corpus(),
            "synthetic": (synthetic_corpus(TRAIN_CHARS, seed=0), synthetic_corpus(HELD_OUT_CHARS, seed=1))}


class _Stopped(Exception):
    pass


def _stop(signum, frame):
    raise _Stopped


def timed_naive(text: str, vocab_size: int, limit: float):
    """(seconds, tokenizer), or (None, None) if it ran past `limit` seconds and was stopped."""
    if not hasattr(signal, "setitimer"):  # Windows: no timer signal, run to the end
        start = time.perf_counter()
        tok = train_naive(text, vocab_size)
        return time.perf_counter() - start, tok
    previous = signal.signal(signal.SIGALRM, _stop)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        start = time.perf_counter()
        tok = train_naive(text, vocab_size)
        return time.perf_counter() - start, tok
    except _Stopped:
        return None, None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def best_of(repeats: int, fn):
    """(fastest seconds, result of the last call)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def train_hf(text: str, vocab_size: int) -> Tokenizer:
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex, then bytes
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(text.split(EOT), trainer=trainer)  # one document per item, as ours skips EOT
    return hf


def hf_merges(hf: Tokenizer) -> set[tuple[str, str]]:
    merges = json.loads(hf.to_str())["model"]["merges"]
    return {tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges}


def our_merges(tok) -> set[tuple[str, str]]:
    b2u = gpt2_bytes_to_unicode()
    spell = ["".join(b2u[b] for b in piece) for piece in tok.vocab]
    return {(spell[a], spell[b]) for a, b in tok.merges}


def bytes_per_token(text: str, n_tokens: int) -> str:
    return f"{len(text.encode('utf-8')) / n_tokens:.3f}"


def seconds(t: float) -> str:
    return f"{t:.3f}" if t < 1 else f"{t:.1f}"


def time_naive(text: str, vocab_size: int, gc_paused: bool = True) -> float:
    """Seconds of one `train_naive` run in this process; `gc_paused=False` undoes its collector pause."""
    pause = tokenization._gc_paused
    if not gc_paused:
        tokenization._gc_paused = contextlib.nullcontext
    try:
        start = time.perf_counter()
        train_naive(text, vocab_size)
        return time.perf_counter() - start
    finally:
        tokenization._gc_paused = pause


def minbpe_table(rounds: int, vocab_size: int = 512) -> str:
    """The naive trainer on minbpe's test text: here (torch imported), torch-free, and without the GC pause."""
    if not MINBPE_TEXT.is_file():
        return (f"Skipped the minbpe test text: {MINBPE_TEXT} is not there (it sits beside the repository "
                f"on the course's own machines, not in a clone).")
    text = MINBPE_TEXT.read_text(encoding="utf-8")
    times = {"package, torch imported": [], "same trainer, torch-free process": [],
             "package, torch imported, GC pause undone": []}
    for _ in range(rounds):  # interleaved, so a burst of load hits every row alike
        times["package, torch imported"].append(time_naive(text, vocab_size))
        out = subprocess.run([sys.executable, "-c", TORCH_FREE, str(MINBPE_TEXT), str(vocab_size)], check=True,
                             capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        times["same trainer, torch-free process"].append(float(out.stdout))
        times["package, torch imported, GC pause undone"].append(time_naive(text, vocab_size, gc_paused=False))
    free = statistics.median(times["same trainer, torch-free process"])
    rows = [[name, f"{statistics.median(t):.1f}", f"{min(t):.1f}–{max(t):.1f}", f"{statistics.median(t) / free:.2f}"]
            for name, t in times.items()]
    t_fast, _ = best_of(rounds, lambda: train_fast(text, vocab_size))
    rows.append(["`train_fast` (same merges)", seconds(t_fast), "", f"{t_fast / free:.3f}"])
    head = (f"### minbpe's test text: `{MINBPE_TEXT.name}`, {len(text.encode('utf-8')):,} bytes, V = {vocab_size}"
            f"\n\n`train_naive`, median of {rounds} interleaved rounds.\n")
    return head + "\n" + markdown_table(["trainer, process", "median (s)", "range (s)", "x torch-free"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--naive-limit", type=float, default=90.0,
                        help="stop a naive run after this many seconds (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fast trainers; the fastest counts")
    parser.add_argument("--minbpe-rounds", type=int, default=3,
                        help="interleaved rounds on minbpe's test text (default %(default)s; 0 skips it)")
    args = parser.parse_args()
    if args.naive_limit <= 0 or args.repeats < 1 or args.minbpe_rounds < 0:
        parser.error("--naive-limit must be > 0, --repeats >= 1 and --minbpe-rounds >= 0")

    t_start = time.perf_counter()
    texts = corpora()
    time_rows, compression_rows, notes = [], [], []
    for name, vocab_size in RUNS:
        train, held_out = texts[name]
        n_merges = vocab_size - 257
        try:
            t_fast, fast = best_of(args.repeats, lambda: train_fast(train, vocab_size))
        except ValueError as exc:
            t_hf, hf = best_of(args.repeats, lambda: train_hf(train, vocab_size))
            time_rows.append([name, vocab_size, n_merges, "not run", "ValueError", "—", seconds(t_hf)])
            notes.append(f"{name}, V = {vocab_size}: `train_fast` raised ValueError: {exc}. Hugging Face "
                         f"stopped silently at V = {hf.get_vocab_size()}.")
            continue
        t_naive, naive = timed_naive(train, vocab_size, args.naive_limit)
        if naive is not None:
            assert list(naive.merges) == list(fast.merges), f"{name}, V={vocab_size}: trainers disagree"
            naive_cell, ratio = seconds(t_naive), f"{t_naive / t_fast:.0f}×"
        else:
            naive_cell, ratio = f"> {args.naive_limit:g} (stopped)", f"> {args.naive_limit / t_fast:.0f}×"
        t_hf, hf = best_of(args.repeats, lambda: train_hf(train, vocab_size))
        assert hf.get_vocab_size() == vocab_size, (name, vocab_size, hf.get_vocab_size())
        time_rows.append([name, vocab_size, n_merges, naive_cell, seconds(t_fast), ratio, seconds(t_hf)])

        ours_ids = [fast.encode(t) for t in (train, held_out)]
        hf_ids = [hf.encode(t).ids for t in (train, held_out)]
        assert fast.decode(ours_ids[1]) == held_out
        assert hf.decode(hf_ids[1], skip_special_tokens=False) == held_out
        shared = len(our_merges(fast) & hf_merges(hf))
        compression_rows.append([name, vocab_size,
                                 bytes_per_token(train, len(ours_ids[0])), bytes_per_token(train, len(hf_ids[0])),
                                 bytes_per_token(held_out, len(ours_ids[1])),
                                 bytes_per_token(held_out, len(hf_ids[1])), f"{shared} of {n_merges}"])

    lengths = {k: f"{len(v[0].encode('utf-8')):,} / {len(v[1].encode('utf-8')):,}" for k, v in texts.items()}
    print("### Training byte-level BPE: naive vs fast trainer vs Hugging Face `tokenizers`\n")
    print(f"{machine()}; Python {platform.python_version()}'s pydoc topics; tokenizers {tokenizers.__version__} "
          f"(rayon threads: {os.environ.get('RAYON_NUM_THREADS', f'default, {os.cpu_count()} logical CPUs')}). "
          f"Training / held-out bytes: prose {lengths['prose']}, synthetic {lengths['synthetic']}. "
          f"Naive: one run, stopped after {args.naive_limit:g} s; fast and Hugging Face: fastest of "
          f"{args.repeats}. Every naive run that finished learned exactly the fast trainer's merges.\n")
    print(markdown_table(["corpus", "V", "merges", "naive (s)", "fast (s)", "naive / fast",
                          "Hugging Face (s)"], time_rows))
    print()
    print(markdown_table(["corpus", "V", "bytes/token train, ours", "train, HF", "held-out, ours",
                          "held-out, HF", "shared merges"], compression_rows))
    for note in notes:
        print(f"\n{note}")
    if args.minbpe_rounds > 0:
        print("\n" + minbpe_table(args.minbpe_rounds))
    print(f"\n_{time.perf_counter() - t_start:.0f} s in all._")


if __name__ == "__main__":
    main()
