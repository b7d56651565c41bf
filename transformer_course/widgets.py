"""Interactive explorers for readers running a chapter, each with a static PNG for the published site.

A stored widget cannot recompute without a kernel, so every explorer displays one bundle holding both the live
widget view and an `image/png` of representative settings; the site prefers the PNG (`_config.yml`).
Leaves out: anything that needs a server on the published site.
"""
import base64
import io

import matplotlib.pyplot as plt
import torch

from .plotting import plot_distribution


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _temperature_figure(logits, labels, temperatures, k):
    fig, axes = plt.subplots(1, len(temperatures), figsize=(3.3 * len(temperatures), 0.28 * k + 1.0), sharex=True)
    for ax, tau in zip(axes, temperatures):
        plot_distribution(torch.softmax(logits / tau, dim=-1), labels, k=k, ax=ax, title=f"temperature τ = {tau:g}")
    fig.tight_layout()
    return fig


def temperature_explorer(logits, labels, k=10, temperatures=(0.5, 1.0, 2.0)):
    """A slider over the sampling temperature τ that redraws the next-token distribution softmax(logits / τ).

    `logits` (V,) are the model's scores for the next token, `labels[i]` the text of token i. Displays the live
    widget (in a running notebook) together with a static PNG of `temperatures` side by side (on the site).
    """
    import ipywidgets as widgets
    from IPython.display import display

    logits = torch.as_tensor(logits).detach().float().cpu()
    if logits.dim() != 1:
        raise ValueError(f"logits must be 1-D (V,), got shape {tuple(logits.shape)}")
    if not temperatures or min(temperatures) <= 0:
        raise ValueError(f"temperatures must be positive, got {temperatures}")
    slider = widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.05, description="τ")
    out = widgets.Output()

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(5.5, 0.28 * k + 0.9))
            plot_distribution(torch.softmax(logits / slider.value, dim=-1), labels, k=k, ax=ax,
                              title=f"temperature τ = {slider.value:.2f}")
            plt.show()

    slider.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([slider, out])
    bundle = box._repr_mimebundle_()
    bundle["image/png"] = _png(_temperature_figure(logits, labels, temperatures, k))
    bundle["text/plain"] = f"temperature explorer (static view: τ = {', '.join(f'{tau:g}' for tau in temperatures)})"
    display(bundle, raw=True)
