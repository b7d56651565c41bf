"""`param_count` against the module (`GPT.num_parameters`) and against Hugging Face models built on the meta
device from published configurations (no weights, no download)."""
import itertools

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OpenAIGPTConfig, OpenAIGPTLMHeadModel

from transformer_course.model import GPT, GPTConfig
from transformer_course.param_count import config_param_count, param_count


def hf_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied matrix is one Parameter, counted once


@pytest.mark.parametrize("flavour,tie,bias,n_kv,d_ff,position", list(itertools.product(
    ("gpt2", "llama"), (True, False), (True, False), (4, 2, 1), (None, 0, 40), ("pre", "post"))))
def test_formula_equals_the_module(flavour, tie, bias, n_kv, d_ff, position):
    make = GPTConfig.gpt2_like if flavour == "gpt2" else GPTConfig.llama_like
    config = make(vocab_size=97, context_length=24, n_layers=3, n_heads=4, n_kv_heads=n_kv, d_model=32, d_ff=d_ff,
                  tie_weights=tie, bias=bias, norm_position=position)
    assert config_param_count(config) == GPT(config).num_parameters()


def test_gpt2_small_is_124m():
    """GPT-2 small's configuration (openai-community/gpt2 config.json; Radford et al. 2019, Table 2)."""
    with torch.device("meta"):
        hf = GPT2LMHeadModel(GPT2Config())  # the defaults are GPT-2 small: 12 layers, 768, 12 heads, 50257, 1024
    n = param_count(n_layers=12, d_model=768, d_ff=3072, n_heads=12, vocab_size=50257, tied=True, n_positions=1024)
    assert n == hf_count(hf) == 124_439_808


def test_llama2_7b_is_6_74b():
    """Llama 2 7B (meta-llama/Llama-2-7b-hf config.json): 32 layers, 4096, 32 heads, SwiGLU 11008, 32000, untied."""
    config = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    n = param_count(n_layers=32, d_model=4096, d_ff=11008, n_heads=32, vocab_size=32000, tied=False, ffn="swiglu",
                    norm="rmsnorm", bias=False)
    assert n == hf_count(hf) == 6_738_415_616


def test_gpt1_post_norm_has_no_final_norm():
    with torch.device("meta"):
        hf = OpenAIGPTLMHeadModel(OpenAIGPTConfig())  # GPT-1: 12 layers, 768, 12 heads, 40478 tokens, 512 positions
    n = param_count(n_layers=12, d_model=768, d_ff=3072, n_heads=12, vocab_size=40478, tied=True, n_positions=512,
                    final_norm=False)
    assert n == hf_count(hf)


def test_refusals_name_the_argument():
    good = dict(n_layers=2, d_model=8, d_ff=32, n_heads=2, vocab_size=10, tied=True)
    for name, value in (("n_layers", 0), ("d_model", 8.0), ("d_ff", -1), ("tied", "yes"), ("ffn", "relu"),
                        ("n_kv_heads", 3), ("norm", None)):
        with pytest.raises(ValueError, match=name):
            param_count(**{**good, name: value})
    with pytest.raises(ValueError, match="divisible"):
        param_count(**{**good, "d_model": 9})
    with pytest.raises(ValueError, match="config"):
        config_param_count({"n_layers": 2})
