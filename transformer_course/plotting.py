"""Figures shared by the chapters. Display code only: core modules never import this one.

Leaves out: interactive plots (see `widgets.py`) and styling beyond `setup_notebook()`'s defaults.
"""
import matplotlib.pyplot as plt
import torch


def plot_pipeline(stages, title=None):
    """Draw a left-to-right chain of boxes, one per stage: `stages` is a list of `(name, detail)` strings.

    Returns the figure; used for "prompt → tokens → vectors → blocks → LM head → next token" with real shapes.
    """
    if not stages:
        raise ValueError("plot_pipeline needs at least one (name, detail) stage")
    n = len(stages)
    fig, ax = plt.subplots(figsize=(1.55 * n + 0.4, 2.0))
    ax.set_xlim(-0.1, n - 0.1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    for i, (name, detail) in enumerate(stages):
        ax.add_patch(plt.Rectangle((i, 0.18), 0.8, 0.64, facecolor=f"C{i % 10}", alpha=0.18,
                                   edgecolor=f"C{i % 10}", linewidth=1.5))
        ax.text(i + 0.4, 0.62, name, ha="center", va="center", fontsize=9, fontweight="bold", wrap=True)
        ax.text(i + 0.4, 0.36, detail, ha="center", va="center", fontsize=8, family="monospace")
        if i < n - 1:
            ax.annotate("", xy=(i + 1.0, 0.5), xytext=(i + 0.8, 0.5),
                        arrowprops={"arrowstyle": "->", "linewidth": 1.5})
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_distribution(probs, labels, k=10, title=None, ax=None, highlight=None):
    """Horizontal bars of the `k` most probable entries of a 1-D probability vector `probs` (V,).

    `labels[i]` names entry i (e.g. a token's text); `highlight` is an index drawn in a second colour.
    """
    probs = torch.as_tensor(probs).detach().float().cpu()
    if probs.dim() != 1:
        raise ValueError(f"probs must be 1-D (V,), got shape {tuple(probs.shape)}")
    if len(labels) != probs.numel():
        raise ValueError(f"labels has {len(labels)} entries but probs has {probs.numel()}")
    k = min(k, probs.numel())
    top = torch.topk(probs, k)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 0.28 * k + 0.9))
    names = [repr(labels[i])[1:-1] if isinstance(labels[i], str) else str(labels[i]) for i in top.indices.tolist()]
    colors = ["C1" if i == highlight else "C0" for i in top.indices.tolist()]
    ax.barh(range(k)[::-1], top.values.numpy(), color=colors)
    ax.set_yticks(range(k)[::-1], [f"'{n}'" for n in names], family="monospace")
    ax.set_xlabel("probability")
    ax.set_xlim(0, 1)
    ax.grid(axis="y", visible=False)
    if title:
        ax.set_title(title, fontsize=10)
    ax.figure.tight_layout()
    return ax
