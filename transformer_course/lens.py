"""Looking inside the stack of blocks: the residual stream, the logit lens, block ablation (Chapter 11).

    x_0 = embeddings,  x_l = block_l(x_{l-1})          the residual stream after l blocks, (B, T, d_model)
    logit lens:  logits_l = lm_head(norm_f(x_l))        read every x_l with the model's own final norm and head
    ablation:    x_l = x_{l-1}                           skip block l (the residual path carries x on)

The lens (nostalgebraist 2020) asks what the model would predict if it stopped after l blocks; at l = L it
is the model's own output. Ablation asks what the model loses without one block. Both run the unchanged
`GPT.features` with forward hooks on the blocks, so every positional scheme and norm works as in the model.
Leaves out: the tuned lens (Belrose et al. 2023: a trained affine map per layer before the head), attention
and FFN ablated separately, activation patching.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .model import GPT
from .utils import check_ids, check_int, check_tensor, describe


def _check(model, idx, targets=None):
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a course GPT, got {describe(model)}")
    check_tensor("idx", idx, ("B", "T"), torch.long)
    if targets is not None:
        check_tensor("targets", targets, tuple(idx.shape), torch.long)
        check_ids("targets", targets, model.config.vocab_size)


@contextmanager
def _hooks(blocks, hook):
    handles = [block.register_forward_hook(hook) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def residual_stream(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """The stream before the first block and after each block: L + 1 tensors `(B, T, d_model)`."""
    _check(model, idx)
    states = []
    first = model.blocks[0].register_forward_pre_hook(lambda block, args: states.append(args[0]))
    try:
        with _hooks(model.blocks, lambda block, args, out: states.append(out)):
            model.features(idx)
    finally:
        first.remove()
    return states


def _scores(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Mean cross-entropy and top-1 accuracy of logits `(B, T, V)` against targets `(B, T)`."""
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return dict(loss=loss, accuracy=accuracy)


@torch.no_grad()
def logit_lens(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> list[dict]:
    """Loss and accuracy of `lm_head(norm_f(x_l))` for l = 0..L: one dict(loss, accuracy) per stage.

    idx, targets `(B, T)` (targets: the next token at every position). Stage L is the model's output.
    """
    _check(model, idx, targets)
    was_training = model.training
    model.eval()
    try:
        return [_scores(model.lm_head(model.norm_f(x)), targets) for x in residual_stream(model, idx)]
    finally:
        model.train(was_training)


@torch.no_grad()
def ablate_block(model: GPT, idx: torch.Tensor, layer: int) -> torch.Tensor:
    """Logits `(B, T, V)` of the model with block `layer` skipped (its input passed on unchanged)."""
    _check(model, idx)
    check_int("layer", layer, 0, model.config.n_layers - 1)
    with _hooks([model.blocks[layer]], lambda block, args, out: args[0]):
        return model(idx)[0]


@torch.no_grad()
def block_ablation(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> list[dict]:
    """Loss and accuracy of the model without block l, for l = 0..L-1: one dict(loss, accuracy) each."""
    _check(model, idx, targets)
    was_training = model.training
    model.eval()
    try:
        return [_scores(ablate_block(model, idx, layer), targets) for layer in range(model.config.n_layers)]
    finally:
        model.train(was_training)
