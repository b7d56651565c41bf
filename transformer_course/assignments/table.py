"""Points and requirements of every exercise, by id, and each chapter's preamble (written by tablegen).

Regenerate with `python -m transformer_course.assignments table > transformer_course/assignments/table.py`
after a chapter's exercises change (then restore any points you edited); tests/test_assignments_table.py
checks that this table and the notebooks agree.
"""

# id: chapter, the name the exercise defines, function or variable, checker (in exercises/), points, ids it
# requires (their definitions run first).
EXERCISES = {
    'ex-01-params': dict(chapter='01', name='count_parameters', kind='function', checker='ch01.check_count_parameters', points=2, requires=[]),
    'ex-01-temperature': dict(chapter='01', name='softmax_with_temperature', kind='function', checker='ch01.check_softmax_with_temperature', points=1, requires=[]),
    'ex-01-tokens': dict(chapter='01', name='tokens_processed', kind='function', checker='ch01.check_tokens_processed', points=2, requires=[]),
    'ex-02-encode': dict(chapter='02', name='encode', kind='function', checker='ch02.check_encode', points=1, requires=[]),
    'ex-02-specials': dict(chapter='02', name='train_with_specials', kind='function', checker='ch02.check_train_with_specials', points=2, requires=[]),
    'ex-02-run': dict(chapter='02', name='merges_for_run', kind='function', checker='ch02.check_merges_for_run', points=2, requires=[]),
    'ex-03-embedding-grad': dict(chapter='03', name='embedding_grad', kind='function', checker='ch03.check_embedding_grad', points=1, requires=[]),
    'ex-03-untie': dict(chapter='03', name='untie', kind='function', checker='ch03.check_untie', points=2, requires=[]),
    'ex-03-adam': dict(chapter='03', name='adam_updates', kind='function', checker='ch03.check_adam_updates', points=2, requires=[]),
    'ex-03-decay-shrink': dict(chapter='03', name='decay_shrink', kind='function', checker='ch03.check_decay_shrink', points=2, requires=[]),
    'ex-04-rope': dict(chapter='04', name='rope_interleaved', kind='function', checker='ch04.check_rope_interleaved', points=1, requires=[]),
    'ex-04-interpolation': dict(chapter='04', name='rope_cos_sin_interpolated', kind='function', checker='ch04.check_rope_interpolated', points=2, requires=[]),
    'ex-04-partial-pairs': dict(chapter='04', name='n_partial_pairs', kind='variable', checker='ch04.check_n_partial_pairs', points=2, requires=[]),
    'ex-05-attention': dict(chapter='05', name='single_head_attention', kind='function', checker='ch05.check_attention', points=1, requires=[]),
    'ex-05-prefix': dict(chapter='05', name='prefix_lm_mask', kind='function', checker='ch05.check_prefix_lm_mask', points=2, requires=[]),
    'ex-05-scale': dict(chapter='05', name='unit_variance_scale', kind='function', checker='ch05.check_unit_variance_scale', points=2, requires=[]),
    'ex-06-merge': dict(chapter='06', name='merge_heads', kind='function', checker='ch06.check_merge_heads', points=1, requires=[]),
    'ex-06-memory': dict(chapter='06', name='gpt2_saved_mib', kind='variable', checker='ch06.check_gpt2_saved_mib', points=2, requires=[]),
    'ex-06-params': dict(chapter='06', name='mha_parameters', kind='function', checker='ch06.check_mha_parameters', points=2, requires=[]),
    'ex-07-repeat': dict(chapter='07', name='repeat_kv', kind='function', checker='ch07.check_repeat_kv', points=1, requires=[]),
    'ex-07-budget': dict(chapter='07', name='fits_in_40gb', kind='variable', checker='ch07.check_fits_in_40gb', points=2, requires=[]),
    'ex-07-flops': dict(chapter='07', name='gqa_flops', kind='function', checker='ch07.check_gqa_flops', points=2, requires=[]),
    'ex-07-params': dict(chapter='07', name='extra_params_mha', kind='variable', checker='ch07.check_extra_params', points=2, requires=[]),
    'ex-08-window': dict(chapter='08', name='window_mask', kind='function', checker='ch08.check_window_mask', points=1, requires=[]),
    'ex-08-field': dict(chapter='08', name='earliest_input', kind='function', checker='ch08.check_earliest_input', points=2, requires=[]),
    'ex-08-scores': dict(chapter='08', name='banded_scores', kind='variable', checker='ch08.check_banded_scores', points=2, requires=[]),
    'ex-08-cache': dict(chapter='08', name='windowed_cache_bytes', kind='function', checker='ch08.check_windowed_cache_bytes', points=2, requires=[]),
    'ex-09-layernorm': dict(chapter='09', name='layer_norm', kind='function', checker='ch09.check_layer_norm', points=1, requires=[]),
    'ex-09-params': dict(chapter='09', name='norm_parameters', kind='function', checker='ch09.check_norm_parameters', points=2, requires=[]),
    'ex-09-eps': dict(chapter='09', name='rms_small', kind='variable', checker='ch09.check_rms_small', points=2, requires=[]),
    'ex-10-gelu': dict(chapter='10', name='gelu_tanh', kind='function', checker='ch10.check_gelu_tanh', points=1, requires=[]),
    'ex-10-llama-width': dict(chapter='10', name='llama_hidden_dim', kind='function', checker='ch10.check_llama_hidden_dim', points=2, requires=[]),
    'ex-10-share': dict(chapter='10', name='ffn_share', kind='function', checker='ch10.check_ffn_share', points=2, requires=[]),
    'ex-11-block': dict(chapter='11', name='pre_norm_block', kind='function', checker='ch11.check_pre_norm_block', points=1, requires=[]),
    'ex-11-mistral': dict(chapter='11', name='mistral_7b_params', kind='variable', checker='ch11.check_mistral_params', points=2, requires=[]),
    'ex-11-half-lens': dict(chapter='11', name='half_block_lens', kind='function', checker='ch11.check_half_block_lens', points=2, requires=[]),
    'ex-12-mean-pool': dict(chapter='12', name='mean_pool', kind='function', checker='ch12.check_mean_pool', points=1, requires=[]),
    'ex-12-unigram': dict(chapter='12', name='unigram_tagger', kind='function', checker='ch12.check_unigram_tagger', points=2, requires=[]),
    'ex-12-control': dict(chapter='12', name='control_task', kind='function', checker='ch12.check_control_task', points=2, requires=[]),
    'ex-13-schedule': dict(chapter='13', name='lr_1000', kind='variable', checker='ch13.check_lr_at_1000', points=1, requires=[]),
    'ex-13-initial-loss': dict(chapter='13', name='gpt2_initial_loss', kind='variable', checker='ch13.check_initial_loss', points=2, requires=[]),
    'ex-13-first-step': dict(chapter='13', name='first_adamw_step', kind='function', checker='ch13.check_first_adamw_step', points=2, requires=[]),
    'ex-13-accumulate': dict(chapter='13', name='accumulated_grads', kind='function', checker='ch13.check_accumulated_grads', points=2, requires=[]),
    'ex-14-min-p': dict(chapter='14', name='min_p_filter', kind='function', checker='ch14.check_min_p_filter', points=2, requires=[]),
    'ex-14-expected-tokens': dict(chapter='14', name='expected_tokens', kind='function', checker='ch14.check_expected_tokens', points=2, requires=[]),
    'ex-14-mistral-cache': dict(chapter='14', name='mistral_kv_bytes', kind='variable', checker='ch14.check_mistral_kv_bytes', points=2, requires=[]),
    'ex-15-skipped-tiles': dict(chapter='15', name='skipped_tiles', kind='function', checker='ch15.check_skipped_tiles', points=2, requires=[]),
    'ex-15-merge-blocks': dict(chapter='15', name='merge_blocks', kind='function', checker='ch15.check_merge_blocks', points=2, requires=[]),
    'ex-15-hbm-elements': dict(chapter='15', name='hbm_elements', kind='function', checker='ch15.check_hbm_elements', points=2, requires=[]),
}

NOTEBOOKS = {
    '01': '01_big_picture.ipynb',
    '02': '02_tokenization.ipynb',
    '03': '03_embeddings.ipynb',
    '04': '04_positional_encoding.ipynb',
    '05': '05_self_attention.ipynb',
    '06': '06_multi_head_attention.ipynb',
    '07': '07_mqa_gqa.ipynb',
    '08': '08_local_sparse_attention.ipynb',
    '09': '09_layer_norm.ipynb',
    '10': '10_feed_forward.ipynb',
    '11': '11_transformer_block.ipynb',
    '12': '12_heads.ipynb',
    '13': '13_training.ipynb',
    '14': '14_generation.ipynb',
    '15': '15_flash_attention.ipynb',
}

# The setup cell of each chapter: what a student's definitions run after.
PREAMBLES = {
    '01': """\
import math
import re

import matplotlib.pyplot as plt
import torch

import transformer_course as tc
from transformer_course import generation
from transformer_course.checkpoints import load_checkpoint
from transformer_course.data import held_out_split, synthetic_corpus
from transformer_course.generation import generate
from transformer_course.heads import SequenceClassificationHead, TokenClassificationHead
from transformer_course.model import GPT
from transformer_course.plotting import plot_distribution, plot_pipeline
from transformer_course.widgets import temperature_explorer

tc.setup_notebook()\
""",
    '02': """\
import hashlib
import inspect
import json
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import transformer_course as tc
from transformer_course import tokenization
from transformer_course.checkpoints import load_checkpoint
from transformer_course.data import synthetic_corpus
from transformer_course.tokenization import (EOT, BPETokenizer, get_stats,
                                             load_course_tokenizer, merge, split_text,
                                             to_hf_tokenizer, train_fast, train_naive)

tc.setup_notebook()\
""",
    '03': """\
import math
import re
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import transformer_course as tc
from transformer_course.checkpoints import load_checkpoint
from transformer_course.data import held_out_split, synthetic_corpus
from transformer_course.embedding import (
    TokenEmbedding, cosine_similarity_matrix, group_cosine, nearest_neighbours, pca_2d,
)
from transformer_course.model import GPT, GPTConfig
from transformer_course.positional import sinusoidal_encoding
from transformer_course.train import CONFIGS, course_data, load_results
from transformer_course.training import estimate_loss, lr_at

tc.setup_notebook()\
""",
    '04': """\
import dataclasses
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import transformer_course as tc
from transformer_course.attention import Attention, attention_weights
from transformer_course.checkpoints import load_checkpoint, resolve_checkpoint
from transformer_course.data import EOT, held_out_split, sentences
from transformer_course.model import GPT
from transformer_course.positional import (
    LearnedPositionalEmbedding,
    alibi_bias,
    alibi_bias_from_positions,
    alibi_slopes,
    apply_rope,
    interleaved_to_rotate_half,
    rope_cos_sin,
    rotate_half,
    rotate_half_to_interleaved,
    sinusoidal_encoding,
)
from transformer_course.train import CONFIGS, course_data

tc.setup_notebook()\
""",
    '05': """\
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import transformer_course as tc
from transformer_course import attention as attention_module
from transformer_course.attention import allowed_mask, attention, attention_weights
from transformer_course.checkpoints import load_checkpoint
from transformer_course.data import synthetic_corpus
from transformer_course.model import GPT
from transformer_course.train import CONFIGS

tc.setup_notebook()\
""",
    '06': """\
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.colors import to_rgb
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import transformer_course as tc
from transformer_course.attention import Attention, attention_weights
from transformer_course.checkpoints import load_checkpoint
from transformer_course.data import held_out_split

tc.setup_notebook()\
""",
    '07': """\
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.autograd import profiler_legacy
from torch.utils.flop_counter import FlopCounterMode

import transformer_course as tc
from transformer_course.attention import Attention, attention
from transformer_course.checkpoints import load_checkpoint
from transformer_course.data import held_out_split
from transformer_course import attention as attention_module
from transformer_course.gqa import kv_cache_bytes, mean_pool_kv_heads, mha_to_gqa, repeat_kv
from transformer_course.hf import from_hf
from transformer_course.model import GPT, GPTConfig, KVCache
from transformer_course.train import load_results
from transformer_course.training import held_out_loss

tc.setup_notebook()\
""",
    '08': """\
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import transformer_course as tc
from transformer_course.attention import attention, attention_weights
from transformer_course.checkpoints import load_checkpoint
from transformer_course.gqa import kv_cache_bytes
from transformer_course.model import GPT, GPTConfig
from transformer_course.sparse_attention import (
    RollingKVCache, banded_attention, causal_mask, fixed_mask, mask_to_bias, receptive_field,
    sliding_window_mask, strided_mask,
)
from transformer_course.tokenization import load_course_tokenizer
from transformer_course.train import course_data, load_results

tc.setup_notebook()\
""",
    '09': """\
import dataclasses
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

import transformer_course as tc
from transformer_course.block import Block
from transformer_course.checkpoints import load_checkpoint
from transformer_course.hf import from_hf, to_hf_state_dict
from transformer_course.model import GPT, GPTConfig
from transformer_course.norm import LayerNorm, RMSNorm
from transformer_course.tokenization import (
    COURSE_VOCAB_SIZE,
    load_course_tokenizer,
)
from transformer_course.train import CONFIGS, course_data, load_results

tc.setup_notebook()\
""",
    '10': """\
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from transformers import GPT2Config, LlamaConfig
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
from transformers.models.llama.modeling_llama import LlamaMLP

import transformer_course as tc
from transformer_course import memory
from transformer_course.block import Block
from transformer_course.checkpoints import load_checkpoint
from transformer_course.data import EOT, FACTS, count_facts, held_out_split
from transformer_course.feedforward import MLP, SwiGLU, swiglu_hidden_dim
from transformer_course.model import GPTConfig
from transformer_course.train import CONFIGS, course_data
from transformer_course.training import held_out_loss

tc.setup_notebook()\
""",
    '11': """\
import matplotlib.pyplot as plt
import torch

import transformer_course as tc
from transformer_course import lens
from transformer_course.block import Block
from transformer_course.checkpoints import load_checkpoint
from transformer_course.data import held_out_split
from transformer_course.hf import from_hf
from transformer_course.model import GPT, GPTConfig
from transformer_course.param_count import config_param_count, param_count
from transformer_course.train import CONFIGS, load_results

tc.setup_notebook()\
""",
    '12': """\
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import transformer_course as tc
from transformer_course import probe
from transformer_course.checkpoints import load_checkpoint
from transformer_course.heads import (LMHead, SequenceClassificationHead,
                                      TokenClassificationHead)
from transformer_course.labelled import (POS_TAGS, TOPICS, labelled_splits,
                                         to_batch, word_labels_to_tokens)
from transformer_course.model import GPT

tc.setup_notebook()\
""",
    '13': """\
import collections
import math
import textwrap
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import transformer_course as tc
from transformer_course import training
from transformer_course.checkpoints import load_checkpoint
from transformer_course.data import EOT, sentences
from transformer_course.model import GPT, GPTConfig
from transformer_course.tokenization import load_course_tokenizer
from transformer_course.train import (CONFIGS, DATA, course_data,
                                      load_results)
from transformer_course.training import (TrainConfig, get_batch, lr_at,
                                         make_optimizer, train_step)

tc.setup_notebook()\
""",
    '14': """\
import time

import matplotlib.pyplot as plt
import torch
from torch.utils.flop_counter import FlopCounterMode

import transformer_course as tc
from transformer_course import generation, gqa, speculative
from transformer_course.attention import LayerKVCache
from transformer_course.checkpoints import load_checkpoint
from transformer_course.generation import (filtered_probs, generate,
                                           left_pad, top_k_filter,
                                           top_p_filter)
from transformer_course.model import GPT, GPTConfig
from transformer_course.speculative import speculative_generate

tc.setup_notebook()\
""",
    '15': """\
import os

# triton.jit checks TRITON_INTERPRET (read from os.environ each time) when
# it decorates a function, and triton.language decorates its own helpers
# (tl.zeros, tl.max, ...) when it is imported; torch imports triton too
# (torch.utils.flop_counter does). So set it before importing torch: then
# the Triton kernel below runs on the CPU, in Triton's interpreter.
os.environ["TRITON_INTERPRET"] = "1"

import math
import textwrap

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.autograd import profiler_legacy
from torch.utils.flop_counter import FlopCounterMode

import transformer_course as tc
from transformer_course import flash, hardware
from transformer_course.attention import attention
from transformer_course.flash import (flash_attention, online_softmax,
                                      tiled_attention_backward,
                                      tiled_attention_forward,
                                      triton_attention)
from transformer_course.model import GPT, GPTConfig

try:
    import triton
    HAVE_TRITON = True
except ImportError:  # no wheels for macOS or Windows
    HAVE_TRITON = False

tc.setup_notebook()\
""",
}


def chapter_exercises(chapter: str) -> list:
    """The ids of a chapter's exercises, in the order of the chapter."""
    return [key for key, entry in EXERCISES.items() if entry['chapter'] == chapter]
