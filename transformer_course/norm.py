"""LayerNorm and RMSNorm, written out (Chapter 9).

LayerNorm (Ba et al. 2016) centres each token's vector and scales it to unit variance, then
applies a learned gain and bias. RMSNorm (Zhang & Sennrich 2019) skips the centring and the
bias: it divides by the root mean square only. Both normalise over the last dimension, one
token at a time, and put eps inside the square root as `nn.LayerNorm` / `nn.RMSNorm` do:

    LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias   (var divides by d)
    RMSNorm(x)   = x / sqrt(mean(x^2) + eps) * weight

`impl="fused"` computes the same with PyTorch's `F.layer_norm` / `F.rms_norm` (a
`GPTConfig.norm_impl`), the way `attn_impl="sdpa"` sits beside the written-out attention.
`F.layer_norm` is one native kernel; on CPU (PyTorch 2.13) `F.rms_norm` runs the same six
operations as the written-out RMSNorm (Chapter 9 lists them).

Leaves out: normalising over several trailing dimensions, mixed-precision upcasting, BatchNorm.
Pre-norm vs post-norm is a property of the block (`block.py`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import check_bool, check_choice, check_config, check_input, check_int, check_number

IMPLS = ("manual", "fused")


class LayerNorm(nn.Module):
    """x `(..., d)` -> `(..., d)`: mean 0, variance 1 per vector, then `* weight + bias`."""

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True, impl: str = "manual"):
        super().__init__()
        self.eps = check_number("eps", eps)
        self.weight = nn.Parameter(torch.ones(check_int("d", d)))
        self.bias = nn.Parameter(torch.zeros(d)) if check_bool("bias", bias) else None
        self.impl = check_choice("impl", impl, IMPLS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("x", x, self.weight)
        if self.impl == "fused":
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
        var = x.var(dim=-1, keepdim=True, unbiased=False)  # (..., 1) biased, as nn.LayerNorm
        x_hat = (x - mean) / torch.sqrt(var + self.eps)  # (..., d)
        out = x_hat * self.weight
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={bias}, impl={self.impl}"


class RMSNorm(nn.Module):
    """x `(..., d)` -> `(..., d)`: divided by its root mean square, then `* weight`.

    No centring, no bias.
    """

    def __init__(self, d: int, eps: float = 1e-5, impl: str = "manual"):
        super().__init__()
        self.eps = check_number("eps", eps)
        self.weight = nn.Parameter(torch.ones(check_int("d", d)))
        self.impl = check_choice("impl", impl, IMPLS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("x", x, self.weight)
        if self.impl == "fused":
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # (..., 1): 1 / sqrt(mean(x^2) + eps)
        inv_rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return x * inv_rms * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, impl={self.impl}"


def make_norm(config) -> nn.Module:
    """The norm a `GPTConfig` asks for: LayerNorm (bias if config.bias) or RMSNorm, d_model."""
    check_config(config)
    if config.norm == "layernorm":
        return LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias,
                         impl=config.norm_impl)
    return RMSNorm(config.d_model, eps=config.norm_eps, impl=config.norm_impl)
