"""Multi-query and grouped-query attention: KV-cache memory and converting checkpoints (Chapter 7).

The attention itself lives in `attention.py`: one `Attention(d_model, n_heads, n_kv_heads)` is multi-head
(`n_kv_heads == n_heads`), grouped-query (`1 < n_kv_heads < n_heads`) or multi-query (`n_kv_heads == 1`)
attention, and `attention()` stacks each group's query heads as rows of one matmul against their shared key
head, so it never copies keys or values. This module adds what the chapter needs around it:

- `kv_cache_bytes`: the memory a KV cache holds, 2 (K and V) x L x h_kv x d_k x T x B x bytes per number;
- `repeat_kv`: the naive way to run grouped-query attention, copying each key/value head to its query heads
  (what Hugging Face's eager Llama attention does);
- `mean_pool_kv_heads` / `mha_to_gqa`: turning a multi-head checkpoint into a grouped-query one by averaging
  the key and value projection heads of each group (Ainslie et al. 2023, §2.1);

Uptraining a converted checkpoint is a recipe of the one training command:
`python -m transformer_course.train --config tiny-mqa` (and `tiny-control`, the multi-head control).

Leaves out: other conversions Ainslie et al. compare (choosing one head, random initialisation), multi-head
latent attention, and paged or quantised caches.
"""
import dataclasses

import torch

from .model import GPT, GPTConfig
from .utils import check_int, check_tensor, describe


def kv_cache_bytes(config, seq_len: int, batch_size: int = 1, dtype_bytes: int = 4) -> int:
    """Bytes a KV cache holds for `seq_len` tokens of `batch_size` sequences.

    2 (K and V) x L x h_kv x d_k x T x B x dtype_bytes. `config` is a `GPTConfig` or a mapping with
    `n_layers`, `n_heads`, `d_model` and optionally `n_kv_heads` (default n_heads) and `d_k`
    (default d_model / n_heads), e.g. a published model's numbers. float32 is 4 bytes, bfloat16 2.
    """
    if isinstance(config, dict):
        missing = {"n_layers", "n_heads"} - config.keys()
        if missing or ("d_model" not in config and "d_k" not in config):
            raise ValueError(f"config needs n_layers, n_heads and d_model (or d_k), got keys {sorted(config)}")
        n_layers, n_heads = config["n_layers"], check_int("n_heads", config["n_heads"])
        h_kv = n_heads if config.get("n_kv_heads") is None else config["n_kv_heads"]
        d_k = config["d_k"] if "d_k" in config else check_int("d_model", config["d_model"]) // n_heads
        if "d_k" not in config and config["d_model"] % n_heads:
            raise ValueError(f"d_model={config['d_model']} must be divisible by n_heads={n_heads}")
    elif isinstance(config, GPTConfig):
        n_layers, h_kv, d_k = config.n_layers, config.h_kv, config.d_k
    else:
        raise ValueError(f"config must be a GPTConfig or a dict of numbers, got {describe(config)}")
    for name, value in (("n_layers", n_layers), ("n_kv_heads", h_kv), ("d_k", d_k), ("seq_len", seq_len),
                        ("batch_size", batch_size), ("dtype_bytes", dtype_bytes)):
        check_int(name, value)
    return 2 * n_layers * h_kv * d_k * seq_len * batch_size * dtype_bytes


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Copy each key/value head `n_rep` times: `(B, h_kv, T, d_k)` -> `(B, h_kv * n_rep, T, d_k)`.

    Head g lands on heads g*n_rep ... (g+1)*n_rep - 1, the query heads that read it. With h_kv > 1 and
    n_rep > 1 the reshape materialises n_rep copies; with h_kv == 1 (or n_rep == 1) the result is a view of x
    (stride 0 across the repeated heads). `attention.attention` gets the same result by grouping the queries.
    """
    check_tensor("x", x, ("B", "h_kv", "T", "d_k"))
    check_int("n_rep", n_rep)
    B, h_kv, T, d_k = x.shape
    return x[:, :, None].expand(B, h_kv, n_rep, T, d_k).reshape(B, h_kv * n_rep, T, d_k)


def mean_pool_kv_heads(w: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """Average the heads of a key or value projection in groups of n_heads / n_kv_heads consecutive heads.

    w: a weight `(n_heads * d_k, d_in)` or bias `(n_heads * d_k,)`, rows head by head (as in `nn.Linear`).
    Returns `(n_kv_heads * d_k, d_in)` (or `(n_kv_heads * d_k,)`): new head g is the mean of old heads
    g*r ... (g+1)*r - 1 with r = n_heads / n_kv_heads, the query heads that will share it.
    """
    check_int("n_heads", n_heads)
    check_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
    if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.dim() not in (1, 2) or w.shape[0] % n_heads:
        raise ValueError(f"w must be a floating-point (n_heads*d_k, d_in) or (n_heads*d_k,) with n_heads={n_heads}, "
                         f"got {describe(w)}")
    d_k = w.shape[0] // n_heads
    grouped = w.reshape(n_kv_heads, n_heads // n_kv_heads, d_k, *w.shape[1:])  # (h_kv, r, d_k, [d_in])
    return grouped.mean(dim=1).reshape(n_kv_heads * d_k, *w.shape[1:])


def mha_to_gqa(model: GPT, n_kv_heads: int) -> GPT:
    """A copy of `model` with `n_kv_heads` key/value heads, made by mean-pooling its key and value heads.

    Query, output, FFN, norm and embedding weights are copied unchanged. Works from any number of key/value
    heads that `n_kv_heads` divides (MHA -> GQA, GQA -> MQA). The original model is not modified.
    """
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a course GPT, got {type(model).__name__}")
    c = model.config
    check_int("n_kv_heads", n_kv_heads)
    if c.h_kv % n_kv_heads:
        raise ValueError(f"the model's {c.h_kv} key/value heads must be a multiple of n_kv_heads={n_kv_heads}")
    new_config = dataclasses.replace(c, n_kv_heads=n_kv_heads)
    q_dim, kv_dim = c.n_heads * c.d_k, c.h_kv * c.d_k
    state = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if ".attn.qkv." in name:  # fused rows [q; k; v]
            q, k, v = t.split([q_dim, kv_dim, kv_dim], dim=0)
            t = torch.cat([q, mean_pool_kv_heads(k, c.h_kv, n_kv_heads),
                           mean_pool_kv_heads(v, c.h_kv, n_kv_heads)], dim=0)
        elif ".attn.k_proj." in name or ".attn.v_proj." in name:
            t = mean_pool_kv_heads(t, c.h_kv, n_kv_heads)
        state[name] = t.clone()
    new = GPT(new_config)
    new.load_state_dict(state)
    device = next(model.parameters()).device
    return new.to(device).train(model.training)
