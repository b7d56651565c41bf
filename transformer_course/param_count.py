"""How many parameters a decoder-only transformer has, as a formula (Chapter 11).

    total = V·d_model  (token table)  + n_positions·d_model  (learned positions, if any)
          + L · [ attention  +  FFN  +  norms ]  + final norm  + V·d_model  (LM head, if untied)

    attention = d_model·(h + 2·h_kv)·d_k  (W_Q, W_K, W_V)  +  h·d_k·d_model  (W_O)   [+ biases]
    FFN       = 2·d_model·d_ff  (GELU MLP: up, down)  or  3·d_model·d_ff  (SwiGLU: gate, up, down)   [+ biases]
    a norm    = d_model  (gain)  [+ d_model (LayerNorm's bias)]

`param_count` takes these numbers, `config_param_count` a `GPTConfig`; both count a tied LM head once, as
`GPT.num_parameters` does. Leaves out: encoder-decoder models, mixture of experts, buffers (RoPE tables).
"""
from .utils import check_bool, check_choice, check_config, check_int


def param_count(*, n_layers: int, d_model: int, d_ff: int, n_heads: int, n_kv_heads: int | None = None,
                vocab_size: int, tied: bool, ffn: str = "gelu", norm: str = "layernorm", bias: bool = True,
                n_positions: int = 0, final_norm: bool = True) -> int:
    """Parameters of a GPT with L = `n_layers` blocks (see the module docstring for the terms).

    `bias`: biases in every Linear and in LayerNorm (GPT-2) or none (Llama). `n_positions`: rows of a learned
    position table (0 for RoPE, ALiBi, sinusoidal). `d_ff=0`: blocks without FFN (and without its norm).
    `final_norm`: False for post-norm models such as GPT-1, which end without one.
    """
    L, d, V = check_int("n_layers", n_layers), check_int("d_model", d_model), check_int("vocab_size", vocab_size)
    h = check_int("n_heads", n_heads)
    h_kv = h if n_kv_heads is None else check_int("n_kv_heads", n_kv_heads, 1, h)
    check_int("d_ff", d_ff, 0)
    check_int("n_positions", n_positions, 0)
    check_bool("tied", tied), check_bool("bias", bias), check_bool("final_norm", final_norm)
    check_choice("ffn", ffn, ("gelu", "swiglu"))
    check_choice("norm", norm, ("layernorm", "rmsnorm"))
    if d % h or h % h_kv:
        raise ValueError(f"d_model={d} must be divisible by n_heads={h}, and n_heads by n_kv_heads={h_kv}")
    d_k = d // h
    b = 1 if bias else 0

    attention = d * (h + 2 * h_kv) * d_k + h * d_k * d + b * ((h + 2 * h_kv) * d_k + d)
    n_mats = 2 if ffn == "gelu" else 3
    ffn_params = n_mats * d * d_ff + b * ((n_mats - 1) * d_ff + d) if d_ff else 0
    one_norm = d * (2 if norm == "layernorm" and bias else 1)
    block = attention + ffn_params + (2 if d_ff else 1) * one_norm
    embeddings = V * d + n_positions * d
    return embeddings + L * block + (one_norm if final_norm else 0) + (0 if tied else V * d)


def config_param_count(config) -> int:
    """`param_count` of a `GPTConfig` (what `GPT(config).num_parameters()` returns)."""
    c = check_config(config)
    return param_count(n_layers=c.n_layers, d_model=c.d_model, d_ff=c.ffn_dim, n_heads=c.n_heads,
                       n_kv_heads=c.h_kv, vocab_size=c.vocab_size, tied=c.tie_weights, ffn=c.ffn, norm=c.norm,
                       bias=c.bias, n_positions=c.context_length if c.positional == "learned" else 0,
                       final_norm=c.norm_position == "pre")
