"""The feed-forward network as a key-value memory (Chapter 10).

Geva et al. (2021) read an FFN `act(x W_up) W_down` (x a row vector) as a memory: each of the d_ff columns of
`W_up` is a *key* that fires on some inputs, and the matching row of `W_down` is the *value* it adds to the
residual stream. This module holds what Chapter 10 needs to measure that reading on small models:

- `memory_facts()`: fictional facts ("The capital of Kelkainova is Lummethholm.") in groups of 16 per number of
  occurrences (0, 1, 2, 4, ... 256), so recall can be plotted against exposures with 16 facts per point.
- `memory_data(tokenizer)`: train/validation token ids for the width sweep (`train.py`'s `DATA`): a fresh
  sample of the course generator with the course's own facts removed, the memory facts planted in the
  training split only; the validation split is fact-free text.
- `epochs(...)`: how often a run reads its split; a fact's exposures are its occurrences there x epochs.
- `recall(model, tokenizer, facts)`: does greedy decoding after the prompt give exactly the answer?
- `without_ffn(model, layer)`: a copy of the model whose FFN in one layer is switched off (zero ablation).
- `ffn_output_mean` / `with_mean_ffn(model, layer, mean)`: the mean ablation, where the FFN's output is
  replaced by its mean over some text, so the residual stream keeps its usual offset.
- `key_activations` / `top_value_tokens`: the hidden units most active on a token, and the tokens that their
  value vectors promote through the LM head.

Leaves out: causal tracing and knowledge editing (Meng et al. 2022), attention's role in extraction
(Geva et al. 2023), resample and per-position mean ablations, real-world facts.
"""
import copy
import random
from dataclasses import dataclass

import torch
import torch.nn as nn

from .data import EOT, FACT_RELATIONS, FACTS, synthetic_corpus
from .model import GPT
from .utils import check_int, describe

OCCURRENCES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)  # how often a group's facts are stated in the training split
FACTS_PER_GROUP = 16  # 4 relations x 4 facts per number of occurrences
FILLER_CHARS = 9_200_000  # the fact-free text around them: ~2.3M tokens, so ~1 epoch of the sweep's recipes
FILLER_SEED = 10
TRAIN_TOKENS = 2_077_992  # len(memory_data(course tokenizer)[0]), pinned by tests/test_memory.py


@dataclass(frozen=True)
class MemoryFact:
    """A fictional fact stated `occurrences` times in the training split of `memory_data`."""

    subject: str
    relation: str  # a key of data.FACT_RELATIONS
    answer: str
    occurrences: int

    @property
    def prompt(self) -> str:
        return FACT_RELATIONS[self.relation].format(subject=self.subject)

    @property
    def sentence(self) -> str:
        return f"{self.prompt} {self.answer}."


_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v", "w")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th", "m")
_SHAPES = {  # (subject, answer) endings by relation, so a name reads as a country, a town, a river, a cat
    "capital": (("ia", "and", "ova"), ("mark", "ford", "holm")),
    "birthplace": (("", "", ""), ("by", "wick", "ton")),
    "river": (("ton", "stead", "ham"), ("", "", "")),
    "pet": (("", "", ""), ("kin", "ette", "bell")),
}
_FIRST_NAMES = ("Ada", "Corin", "Edda", "Fabian", "Greta", "Ivo", "Lena", "Milo", "Nora", "Otto", "Petra",
                "Rufus", "Selma", "Tobias", "Una", "Viggo")
_TITLES = ("Professor", "Captain", "Doctor", "Mayor")


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(_ONSETS[int(rng.random() * len(_ONSETS))] + _VOWELS[int(rng.random() * len(_VOWELS))]
                   + _CODAS[int(rng.random() * len(_CODAS))] for _ in range(syllables))


def memory_facts(seed: int = 0) -> list[MemoryFact]:
    """`FACTS_PER_GROUP` facts for each count in `OCCURRENCES` (160 facts), every name new to the course.

    Subjects and answers are made of random syllables (seeded, the same on every machine); no name is used
    twice or occurs in the course corpus's fact table. Ordered by occurrences, then relation.
    """
    check_int("seed", seed, 0)
    rng, used = random.Random(seed), {w for f in FACTS for w in (f.subject + " " + f.answer).split()}
    relations = list(FACT_RELATIONS)

    def fresh(ending: str) -> str:
        while True:
            name = (_word(rng, 2) + ending).capitalize()
            if name not in used and len(name) <= 11:
                used.add(name)
                return name

    facts = []
    for n in OCCURRENCES:
        for i in range(FACTS_PER_GROUP):
            relation = relations[i % len(relations)]
            subject_end, answer_end = (s[int(rng.random() * 3)] for s in _SHAPES[relation])
            subject = fresh(subject_end)
            if relation == "birthplace":
                subject = f"{_FIRST_NAMES[int(rng.random() * 16)]} {subject}"
            elif relation == "pet":
                subject = f"{_TITLES[int(rng.random() * 4)]} {subject}"
            facts.append(MemoryFact(subject, relation, fresh(answer_end), n))
    return facts


def memory_text(seed: int = 0) -> tuple[str, str]:
    """(train text, validation text) for the width sweep, as strings.

    The filler is `synthetic_corpus(FILLER_CHARS, FILLER_SEED)` with every document that states a course fact
    dropped; its last 10 % of documents is the validation text (no fact at all). Each statement of a memory
    fact is a document of its own ("The capital of Brovenia is Tessmark."), inserted at a random document
    boundary of the training part.
    """
    check_int("seed", seed, 0)
    course = [f.sentence for f in FACTS]
    docs = [d for d in synthetic_corpus(FILLER_CHARS, FILLER_SEED).split(EOT) if not any(s in d for s in course)]
    n_val = len(docs) // 10
    train, val = docs[:-n_val], docs[-n_val:]
    rng = random.Random(seed + 1)
    statements = [f.sentence for f in memory_facts(seed) for _ in range(f.occurrences)]
    slots = sorted((int(rng.random() * (len(train) + 1)), s) for s in statements)
    out, prev = [], 0
    for at, sentence in slots:  # insert in order of position: one pass, no shifting of indices
        out += train[prev:at] + [sentence]
        prev = at
    out += train[prev:]
    return EOT.join(out), EOT.join(val)


def memory_data(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """`memory_text()` as token ids (train_ids, val_ids): the `DATA` entry of the width-sweep recipes."""
    train, val = memory_text()
    return tuple(torch.tensor(tokenizer.encode(t, allowed_special="all"), dtype=torch.long) for t in (train, val))


def epochs(train_tokens: int, steps: int, batch_size: int, block_size: int) -> float:
    """How many times a run reads its training split: steps * batch_size * block_size / train_tokens.

    A fact stated n times in the split is seen about n * epochs times (its exposures). The windows are drawn
    at random, so one statement may be read a few times more or less than that.
    """
    for name, value in (("train_tokens", train_tokens), ("steps", steps), ("batch_size", batch_size),
                        ("block_size", block_size)):
        check_int(name, value)
    return steps * batch_size * block_size / train_tokens


def _check_model(model) -> GPT:
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a course GPT, got {describe(model)}")
    return model


def recall(model: GPT, tokenizer, facts) -> torch.Tensor:
    """Bool `(len(facts),)`: does greedy decoding after "<|endoftext|>" + prompt give exactly " " + answer?

    Checked in one forward pass per fact (teacher forcing): greedy decoding reproduces the answer exactly
    when the model's most likely next token is the right one at every answer position, given the right
    tokens before it. `facts`: objects with `.prompt` and `.answer` (`MemoryFact` or `data.Fact`).
    """
    model, was_training = _check_model(model), model.training
    model.eval()
    hits = []
    for fact in facts:
        prompt = tokenizer.encode(EOT + fact.prompt, allowed_special="all")
        answer = tokenizer.encode(" " + fact.answer)
        ids = torch.tensor([prompt + answer])  # (1, T)
        with torch.no_grad():
            logits, _ = model(ids[:, :-1])  # (1, T - 1, V): position t predicts token t + 1
        predicted = logits[0, len(prompt) - 1:].argmax(-1)  # the predictions of the answer tokens
        hits.append(predicted.tolist() == answer)
    model.train(was_training)
    return torch.tensor(hits, dtype=torch.bool)


def without_ffn(model: GPT, layer: int) -> GPT:
    """A copy of `model` whose block `layer` has no FFN: x + ffn(norm2(x)) becomes x (a zero ablation)."""
    model = copy.deepcopy(_check_model(model))
    check_int("layer", layer, 0, model.config.n_layers - 1)
    model.blocks[layer].ffn = None  # Block.forward skips a missing FFN, as in a d_ff = 0 model
    return model


class _ConstantFFN(nn.Module):
    """An FFN that ignores its input and outputs the same vector `mean` `(d_model,)` at every position."""

    def __init__(self, mean: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean.expand_as(x)  # (B, T, d_model)


def _check_ids(ids) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dim() not in (1, 2) or ids.is_floating_point():
        raise ValueError(f"ids must be a tensor of token ids, (T,) or (N, T), got {describe(ids)}")
    return ids


def _output_of(model: GPT, module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Run `ids` `(N, T)` through the model (eval, no grad) and return what `module`, a part of it, output."""
    seen = {}
    hook = module.register_forward_hook(lambda m, inputs, output: seen.update(out=output))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(ids)
    finally:
        hook.remove()
        model.train(was_training)
    return seen["out"]


def _check_ffn_layer(model, layer: int, need_fc: bool = False):
    model = _check_model(model)
    check_int("layer", layer, 0, model.config.n_layers - 1)
    ffn = model.blocks[layer].ffn
    if ffn is None or isinstance(ffn, _ConstantFFN) or (need_fc and not hasattr(ffn, "fc")):
        kind = "GELU FFN" if need_fc else "FFN"
        raise ValueError(f"layer {layer} has no {kind} (ffn={model.config.ffn!r}, d_ff={model.config.ffn_dim})")
    return model


def ffn_output_mean(model: GPT, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The mean of block `layer`'s FFN output over every position of `ids` `(N, T)`: `(d_model,)`.

    One vector for all positions (not a mean per position); `ids` are rows of at most context_length tokens.
    """
    model = _check_ffn_layer(model, layer)
    ids = _check_ids(ids)
    ids = ids[None] if ids.dim() == 1 else ids
    out = _output_of(model, model.blocks[layer].ffn, ids)  # (N, T, d_model)
    return out.reshape(-1, out.shape[-1]).mean(0)


def with_mean_ffn(model: GPT, layer: int, mean: torch.Tensor) -> GPT:
    """A copy of `model` whose block `layer` adds `mean` `(d_model,)` instead of ffn(norm2(x)) (mean ablation).

    Unlike `without_ffn`, the residual stream keeps the FFN's average contribution, so later layers see
    inputs of their usual size; what is lost is only what the FFN computes from the token in front of it.
    """
    check_int("layer", layer, 0, _check_model(model).config.n_layers - 1)
    d_model = model.config.d_model
    if not isinstance(mean, torch.Tensor) or mean.shape != (d_model,) or not mean.is_floating_point():
        raise ValueError(f"mean must be a float tensor of shape ({d_model},) (d_model), got {describe(mean)}")
    if model.blocks[layer].ffn is None:
        raise ValueError(f"layer {layer} has no FFN to replace (d_ff={model.config.ffn_dim})")
    model = copy.deepcopy(model)
    model.blocks[layer].ffn = _ConstantFFN(mean)
    return model


def key_activations(model: GPT, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The memory coefficients of block `layer`'s FFN: ids `(T,)` -> `(T, d_ff)`, or `(N, T)` -> `(N, T, d_ff)`.

    Geva et al.'s reading of FFN(x) = gelu(x W_up) W_down: column i of W_up (`ffn.fc.weight[i]`, as nn.Linear
    stores the transpose) is key i, gelu(x · k_i) its coefficient, and row i of W_down (`ffn.proj.weight[:, i]`)
    the value it adds. GELU (`MLP`) models only.
    """
    model = _check_ffn_layer(model, layer, need_fc=True)
    ids = _check_ids(ids)
    pre = _output_of(model, model.blocks[layer].ffn.fc, ids[None] if ids.dim() == 1 else ids)  # (N, T, d_ff)
    act = torch.nn.functional.gelu(pre, approximate="tanh")
    return act[0] if ids.dim() == 1 else act


def top_value_tokens(model: GPT, layer: int, unit: int, tokenizer, k: int = 5) -> list[str]:
    """The k tokens that value vector `unit` of block `layer` promotes most: top of LM-head · v_i (Geva §4)."""
    ffn = _check_ffn_layer(model, layer, need_fc=True).blocks[layer].ffn
    check_int("unit", unit, 0, ffn.proj.weight.shape[1] - 1)
    check_int("k", k)
    value = ffn.proj.weight[:, unit].detach()  # (d_model,)
    scores = model.lm_head.weight.detach() @ value  # (V,): how much adding v_i raises each token's logit
    return [tokenizer.decode([i]) for i in scores.topk(k).indices.tolist()]
