"""The weight-streaming Linear: same numbers as F.linear, and compiled into a reduction (no BLAS
call) exactly when it should be; packed oneDNN products: same numbers, a copy per live weight."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

from minirun.layers import linear
from minirun.layers.linear import STREAM_MAX_ROWS, Linear, streams

needs_onednn = pytest.mark.skipif(not linear.packing_available(), reason="this torch build has no oneDNN")


@pytest.fixture(autouse=True)
def default_threshold():
    """The module's default streaming threshold, whatever an engine's tuning left behind."""
    before = linear.stream_max_rows(torch.float32)
    linear.set_stream_max_rows(torch.float32, STREAM_MAX_ROWS)
    yield
    linear.set_stream_max_rows(torch.float32, before)


@pytest.fixture(params=[False, True], ids=["blas", "packed"])
def packed(request):
    """Run the test with packed float32 products off and on (when oneDNN is there), restoring the setting."""
    if request.param and not linear.packing_available():
        pytest.skip("this torch build has no oneDNN")
    before = linear.is_packed(torch.float32)
    linear.set_packed(torch.float32, request.param)
    yield request.param
    linear.set_packed(torch.float32, before)


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


@pytest.mark.parametrize("rows, library", [(1, False), (STREAM_MAX_ROWS, False), (STREAM_MAX_ROWS + 1, True)])
def test_few_rows_compile_to_a_reduction_not_a_library_call(rows, library, packed):
    layer = _layer(bias=False)
    with torch.no_grad():
        _, code = run_and_get_code(torch.compile(_norm_then_linear(layer), dynamic=False), torch.randn(rows, 96))
    calls_blas = any("extern_kernels.mm" in c or "extern_kernels.addmm" in c for c in code)
    calls_packed = any("minirun.packed_linear" in c for c in code)
    assert (calls_blas, calls_packed) == ((library and not packed), (library and packed))


@needs_onednn
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_products_match_f_linear(dtype, tolerance, bias):
    layer = _layer(bias).to(dtype)
    before = linear.is_packed(dtype)
    linear.set_packed(dtype, True)
    try:
        with torch.inference_mode():
            for rows in (1, 5, 200):
                x = torch.randn(rows, 96, dtype=dtype)
                torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=tolerance,
                                           atol=tolerance)
            compiled = torch.compile(lambda x: layer(x) * 2, dynamic=False)(x)
            torch.testing.assert_close(compiled, 2 * F.linear(x, layer.weight, layer.bias), rtol=tolerance,
                                       atol=tolerance)
    finally:
        linear.set_packed(dtype, before)


@needs_onednn
def test_a_dtype_this_cpu_cannot_pack_keeps_f_linear():
    """float16 packing needs avx512_fp16 or avx_ne_convert: where the CPU lacks them, asking for
    packed float16 products leaves them on F.linear instead of failing at the first product."""
    layer = _layer(bias=True).to(torch.float16)
    before = linear.is_packed(torch.float16)
    linear.set_packed(torch.float16, True)
    try:
        assert linear.is_packed(torch.float16) == linear.packing_available(torch.float16)
        x = torch.randn(5, 96, dtype=torch.float16)
        with torch.inference_mode():
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-2, atol=1e-2)
    finally:
        linear.set_packed(torch.float16, before)


@needs_onednn
def test_packed_copy_follows_the_weight():
    """Written in place, the weight is packed again; a new layer (maybe at a freed one's address) gets
    its own copy, never a stale one."""
    x = torch.randn(4, 96)
    for seed in range(3):
        layer = _layer(bias=False)
        layer.weight.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
        first = linear.packed_copy(layer.weight)
        assert linear.packed_copy(layer.weight) is first  # made once
        torch.testing.assert_close(linear.packed_linear(x, layer.weight, None), F.linear(x, layer.weight))
        with torch.no_grad():
            layer.weight.mul_(-2)  # a tracked write: the version counter moves
        assert linear.packed_copy(layer.weight) is not first
        torch.testing.assert_close(linear.packed_linear(x, layer.weight, None), F.linear(x, layer.weight))
        del layer


def test_eager_products_never_stream(packed):
    x = torch.randn(2, 96)
    assert not streams(x)  # eager: the broadcast form would materialise [N, M, K]
    torch.testing.assert_close(_layer(True)(x), F.linear(x, _layer(True).weight, _layer(True).bias))
