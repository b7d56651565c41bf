"""Converting Hugging Face GPT-1, GPT-2 and Llama (and Mistral) weights to and from the course GPT (Chapters 1, 9, 11).

`from_hf(model_or_state_dict, hf_config)` takes objects you already have (an `OpenAIGPTLMHeadModel`,
`GPT2LMHeadModel`, `LlamaForCausalLM`, `MistralForCausalLM`, or their state dict plus config); it never
downloads anything. GPT-1 is GPT-2's layout with post-norm blocks and no final norm.

Two things to know when reading the mapping:
- GPT-2's linear layers are `Conv1D` modules that store the weight as (in, out), the transpose of
  `nn.Linear`'s (out, in); every GPT-2 matrix is transposed on the way in.
- GPT-2 computes q, k, v with one matrix (`c_attn`) whose output columns are [q | k | v], the layout of our
  fused `qkv`; Llama has three (`q_proj`, `k_proj`, `v_proj`) which we stack. Llama's checkpoints already use
  the rotate-half RoPE layout, so no permutation is needed.

Leaves out: other architectures (GPT-NeoX, Falcon, ...), RoPE scaling variants, quantised weights.
"""
import torch

from .model import GPT, GPTConfig
from .utils import check_int, describe

GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # the tanh approximation our MLP uses
GPT1_ACTIVATIONS = ("gelu",)  # OpenAIGPT's "gelu" is gelu_new, the tanh approximation
# Embedding and final-norm names of GPT-2 and of GPT-1 (whose post-norm blocks need no final norm).
_GPT_NAMES = {"pre": ("wte", "wpe", "ln_f"), "post": ("tokens_embed", "positions_embed", None)}


def _config_dict(hf_config) -> dict:
    d = hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config
    if not isinstance(d, dict) or "model_type" not in d:
        raise ValueError("hf_config has no model_type; pass a transformers config (GPT2Config, LlamaConfig, ...)")
    return d


def _require(condition: bool, message: str):
    if not condition:
        raise ValueError(f"unsupported Hugging Face config: {message}")


def _rope_theta(d: dict) -> float:
    rope = d.get("rope_parameters") or {}
    _require(rope.get("rope_type", "default") == "default", f"RoPE scaling {rope.get('rope_type')!r}")
    return float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))


def config_from_hf(hf_config) -> GPTConfig:
    """The `GPTConfig` describing a Hugging Face GPT-2, Llama or Mistral config (object or its `to_dict()`)."""
    d = _config_dict(hf_config)
    kind = d["model_type"]
    try:
        if kind == "gpt2":
            _require(d.get("activation_function") in GPT2_ACTIVATIONS, f"activation {d.get('activation_function')!r}")
            _require(d.get("scale_attn_weights", True), "scale_attn_weights=False")
            _require(not d.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=True")
            _require(not d.get("add_cross_attention", False), "add_cross_attention=True")
            return GPTConfig.gpt2_like(
                vocab_size=d["vocab_size"], context_length=d["n_positions"], n_layers=d["n_layer"],
                n_heads=d["n_head"], d_model=d["n_embd"], d_ff=d.get("n_inner"), norm_eps=d["layer_norm_epsilon"],
                tie_weights=d.get("tie_word_embeddings", True), dropout=d.get("resid_pdrop", 0.0),
            )
        if kind in ("llama", "mistral"):
            d_model = check_int("hidden_size", d["hidden_size"])
            n_heads = check_int("num_attention_heads", d["num_attention_heads"])
            _require(d.get("hidden_act", "silu") == "silu", f"hidden_act {d.get('hidden_act')!r}")
            _require(d.get("head_dim") in (None, d_model // n_heads), f"head_dim {d.get('head_dim')} != hidden/heads")
            _require(d.get("attention_bias", False) == d.get("mlp_bias", False), "attention_bias != mlp_bias")
            return GPTConfig.llama_like(
                vocab_size=d["vocab_size"], context_length=d["max_position_embeddings"],
                n_layers=d["num_hidden_layers"], n_heads=n_heads, n_kv_heads=d.get("num_key_value_heads") or n_heads,
                d_model=d_model, d_ff=d["intermediate_size"], rope_theta=_rope_theta(d), norm_eps=d["rms_norm_eps"],
                bias=d.get("attention_bias", False), tie_weights=d.get("tie_word_embeddings", False),
                dropout=d.get("attention_dropout", 0.0),
                attention_window=d.get("sliding_window") if kind == "mistral" else None,
            )
        if kind == "openai-gpt":
            _require(d.get("afn") in GPT1_ACTIVATIONS, f"afn {d.get('afn')!r}")
            return GPTConfig.gpt2_like(
                vocab_size=d["vocab_size"], context_length=d["n_positions"], n_layers=d["n_layer"],
                n_heads=d["n_head"], d_model=d["n_embd"], norm_eps=d["layer_norm_epsilon"], norm_position="post",
                tie_weights=d.get("tie_word_embeddings", True), dropout=d.get("resid_pdrop", 0.0),
            )
    except KeyError as e:
        raise ValueError(f"hf_config lacks {e.args[0]!r}, which a {kind} config has") from None
    raise ValueError(f"from_hf supports model_type openai-gpt, gpt2, llama and mistral, got {kind!r}")


def _gpt2_to_course(sd: dict, n_layers: int, norm_position: str = "pre") -> tuple[dict, dict]:
    """GPT-2's names (or GPT-1's, `norm_position="post"`) -> the course's; returns (ours, unused entries)."""
    wte, wpe, ln_f = _GPT_NAMES[norm_position]
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {"tok_emb.weight": sd.pop(f"{wte}.weight"), "pos_emb.weight": sd.pop(f"{wpe}.weight")}
    pairs = [("ln_1", "norm1"), ("ln_2", "norm2")]
    linears = [("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.out_proj"), ("mlp.c_fc", "ffn.fc"),
               ("mlp.c_proj", "ffn.proj")]
    for i in range(n_layers):
        for hf, ours in pairs:
            out[f"blocks.{i}.{ours}.weight"] = sd.pop(f"h.{i}.{hf}.weight")
            out[f"blocks.{i}.{ours}.bias"] = sd.pop(f"h.{i}.{hf}.bias")
        for hf, ours in linears:
            out[f"blocks.{i}.{ours}.weight"] = sd.pop(f"h.{i}.{hf}.weight").t()  # Conv1D (in, out) -> (out, in)
            out[f"blocks.{i}.{ours}.bias"] = sd.pop(f"h.{i}.{hf}.bias")
        for buffer in ("attn.bias", "attn.masked_bias"):  # causal-mask buffers of older transformers versions
            sd.pop(f"h.{i}.{buffer}", None)
    if ln_f is not None:
        out["norm_f.weight"], out["norm_f.bias"] = sd.pop(f"{ln_f}.weight"), sd.pop(f"{ln_f}.bias")
    out["lm_head.weight"] = sd.pop("lm_head.weight", out["tok_emb.weight"])
    return out, sd


def _llama_to_course(sd: dict, n_layers: int, bias: bool) -> tuple[dict, dict]:
    sd = dict(sd)
    out = {"tok_emb.weight": sd.pop("model.embed_tokens.weight")}
    names = ["weight", "bias"] if bias else ["weight"]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        for name in names:
            out[f"blocks.{i}.attn.qkv.{name}"] = torch.cat(
                [sd.pop(f"{p}self_attn.{x}_proj.{name}") for x in "qkv"], dim=0
            )  # [q; k; v] rows: (h*d_k + 2*h_kv*d_k, ...)
            out[f"blocks.{i}.attn.out_proj.{name}"] = sd.pop(f"{p}self_attn.o_proj.{name}")
            for hf, ours in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
                out[f"blocks.{i}.ffn.{ours}.{name}"] = sd.pop(f"{p}mlp.{hf}.{name}")
        out[f"blocks.{i}.norm1.weight"] = sd.pop(f"{p}input_layernorm.weight")
        out[f"blocks.{i}.norm2.weight"] = sd.pop(f"{p}post_attention_layernorm.weight")
    out["norm_f.weight"] = sd.pop("model.norm.weight")
    out["lm_head.weight"] = sd.pop("lm_head.weight", out["tok_emb.weight"])
    return out, sd


def from_hf(hf_model_or_state_dict, hf_config=None) -> GPT:
    """A course `GPT` with the weights of a Hugging Face GPT-2 / Llama / Mistral causal LM.

    Pass the model itself (its `.config` is used unless hf_config is given) or a state dict and its config.
    """
    if isinstance(hf_model_or_state_dict, torch.nn.Module):
        hf_config = hf_model_or_state_dict.config if hf_config is None else hf_config
        state_dict = hf_model_or_state_dict.state_dict()
    elif isinstance(hf_model_or_state_dict, dict):
        if hf_config is None:
            raise ValueError("from_hf(state_dict, hf_config): a state dict needs its Hugging Face config")
        state_dict = hf_model_or_state_dict
    else:
        raise ValueError(
            f"from_hf takes a Hugging Face model or a state dict, got {type(hf_model_or_state_dict).__name__}"
        )
    config = config_from_hf(hf_config)
    wrong = {k: describe(v) for k, v in state_dict.items() if not isinstance(v, torch.Tensor)}
    if wrong:
        raise ValueError(f"the state dict must map names to tensors, got {dict(list(wrong.items())[:3])}")
    state_dict = {k: v.detach() for k, v in state_dict.items()}
    try:
        if config.positional == "learned":  # GPT-2 or GPT-1
            ours, leftover = _gpt2_to_course(state_dict, config.n_layers, config.norm_position)
        else:
            ours, leftover = _llama_to_course(state_dict, config.n_layers, config.bias)
    except KeyError as e:
        raise ValueError(f"the state dict lacks {e.args[0]!r}, which the config says it should have") from None
    if leftover:
        raise ValueError(f"state dict entries not used by the conversion: {sorted(leftover)[:5]}")
    model = GPT(config)
    try:
        model.load_state_dict(ours)
    except RuntimeError as exc:  # a tensor whose shape does not fit the config
        raise ValueError(f"the state dict does not fit its config: {exc}") from None
    return model


def to_hf_state_dict(model: GPT) -> dict:
    """The inverse of `from_hf` for GPT-2-like and Llama-like course models: a state dict for
    `GPT2LMHeadModel` (`OpenAIGPTLMHeadModel` when post-norm) or `LlamaForCausalLM` (`load_state_dict` into a
    model built from the matching config)."""
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a course GPT, got {describe(model)}")
    c, sd = model.config, {k: v.detach().clone() for k, v in model.state_dict().items()}
    if c.ffn_dim == 0:
        raise ValueError("model has no FFN (d_ff=0); GPT-2, GPT-1 and Llama blocks always have one")
    if (c.positional, c.norm, c.ffn) == ("learned", "layernorm", "gelu") and c.bias:
        wte, wpe, ln_f = _GPT_NAMES[c.norm_position]
        out = {f"transformer.{wte}.weight": sd["tok_emb.weight"], f"transformer.{wpe}.weight": sd["pos_emb.weight"],
               "lm_head.weight": sd["lm_head.weight"]}
        if ln_f is not None:
            out[f"transformer.{ln_f}.weight"], out[f"transformer.{ln_f}.bias"] = sd["norm_f.weight"], sd["norm_f.bias"]
        names = [("ln_1", "norm1", False), ("ln_2", "norm2", False), ("attn.c_attn", "attn.qkv", True),
                 ("attn.c_proj", "attn.out_proj", True), ("mlp.c_fc", "ffn.fc", True), ("mlp.c_proj", "ffn.proj", True)]
        for i in range(c.n_layers):
            for hf, ours, conv1d in names:
                w = sd[f"blocks.{i}.{ours}.weight"]
                out[f"transformer.h.{i}.{hf}.weight"] = w.t().contiguous() if conv1d else w
                out[f"transformer.h.{i}.{hf}.bias"] = sd[f"blocks.{i}.{ours}.bias"]
        return out
    if (c.positional, c.norm, c.ffn) == ("rope", "rmsnorm", "swiglu"):
        out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["norm_f.weight"],
               "lm_head.weight": sd["lm_head.weight"]}
        q_dim, kv_dim = c.n_heads * c.d_k, c.h_kv * c.d_k
        for i in range(c.n_layers):
            p = f"model.layers.{i}."
            for name in (["weight", "bias"] if c.bias else ["weight"]):
                q, k, v = sd[f"blocks.{i}.attn.qkv.{name}"].split([q_dim, kv_dim, kv_dim], dim=0)
                out.update({f"{p}self_attn.q_proj.{name}": q, f"{p}self_attn.k_proj.{name}": k,
                            f"{p}self_attn.v_proj.{name}": v,
                            f"{p}self_attn.o_proj.{name}": sd[f"blocks.{i}.attn.out_proj.{name}"]})
                for hf, ours in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
                    out[f"{p}mlp.{hf}.{name}"] = sd[f"blocks.{i}.ffn.{ours}.{name}"]
            out[f"{p}input_layernorm.weight"] = sd[f"blocks.{i}.norm1.weight"]
            out[f"{p}post_attention_layernorm.weight"] = sd[f"blocks.{i}.norm2.weight"]
        return out
    raise ValueError(
        f"to_hf_state_dict needs a GPT-2-like (learned, layernorm, gelu, bias) or Llama-like (rope, rmsnorm, "
        f"swiglu) config, got positional={c.positional}, norm={c.norm}, ffn={c.ffn}, bias={c.bias}"
    )
