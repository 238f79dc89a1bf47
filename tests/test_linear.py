"""The weight-streaming Linear: same numbers as F.linear, and compiled into a reduction (no BLAS
call) exactly when it should be."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

from minirun.layers.linear import STREAM_MAX_ROWS, Linear, streams


def _layer(bias: bool) -> Linear:
    torch.manual_seed(0)
    layer = Linear(96, 136, bias=bias)  # sizes that are no multiple of a vector width
    layer.weight.data.normal_(0, 0.1)
    if bias:
        layer.bias.data.normal_(0, 0.1)
    return layer


def _norm_then_linear(layer: Linear):
    """A producer in front of the product, as in the decoder (RMSNorm feeds every projection)."""
    return lambda x: layer(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 3, STREAM_MAX_ROWS])
def test_compiled_streaming_matches_f_linear(rows, bias):
    layer = _layer(bias)
    x = torch.randn(rows, 1, 96)
    fn = _norm_then_linear(layer)
    expected = F.linear(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), layer.weight, layer.bias)
    with torch.no_grad():
        got = torch.compile(fn, dynamic=False)(x)
    assert got.shape == (rows, 1, 136)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows, blas", [(1, False), (STREAM_MAX_ROWS, False), (STREAM_MAX_ROWS + 1, True)])
def test_few_rows_compile_to_a_reduction_not_blas(rows, blas):
    layer = _layer(bias=False)
    with torch.no_grad():
        _, code = run_and_get_code(torch.compile(_norm_then_linear(layer), dynamic=False), torch.randn(rows, 96))
    calls_blas = any("extern_kernels.mm" in c or "extern_kernels.addmm" in c for c in code)
    assert calls_blas == blas


def test_eager_and_many_rows_use_f_linear():
    x = torch.randn(2, 96)
    assert not streams(x)  # eager: the broadcast form would materialise [N, M, K]
    torch.testing.assert_close(_layer(True)(x), F.linear(x, _layer(True).weight, _layer(True).bias))
