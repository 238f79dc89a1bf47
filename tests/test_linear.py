"""The weight-streaming Linear: same numbers as F.linear, and compiled into a reduction (no BLAS
call) exactly when it should be; packed oneDNN products: same numbers, a copy per live weight."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

from minirun.layers import linear
from minirun.layers.linear import STREAM_MAX_ROWS, Linear, kernel_for, product_kernel, set_plan

needs_onednn = pytest.mark.skipif(not linear.packing_available(), reason="this torch build has no oneDNN")
PACKED = {False: {1: "packed"}, True: {STREAM_MAX_ROWS: "stream", STREAM_MAX_ROWS + 1: "packed"}}  # by compiled


@pytest.fixture(autouse=True)
def default_plans():
    """Every float32/bfloat16 plan at the module's default, whatever an engine's tuning left behind, and restored."""
    keys = [(dtype, compiled) for dtype in (torch.float32, torch.bfloat16, torch.float16) for compiled in (False, True)]
    before = {key: linear.current_plan(*key) for key in keys}
    for dtype, compiled in keys:
        set_plan(dtype, compiled, None)
    yield
    for (dtype, compiled), plan in before.items():
        set_plan(dtype, compiled, plan)


@pytest.fixture(params=[False, True], ids=["blas", "packed"])
def packed(request):
    """Run the test with float32 products beyond streaming on F.linear, then on packed weights (when oneDNN is there)."""
    if request.param and not linear.packing_available():
        pytest.skip("this torch build has no oneDNN")
    if request.param:
        for compiled, plan in PACKED.items():
            set_plan(torch.float32, compiled, plan)
    return request.param


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
    assert _calls(code) == (("packed" if packed else "blas") if library else "reduction")


def _calls(code: list[str]) -> str:
    """What a compiled product became: a BLAS call, the packed custom op, or neither (a reduction)."""
    if any("extern_kernels.mm" in c or "extern_kernels.addmm" in c for c in code):
        return "blas"
    return "packed" if any("minirun.packed_linear" in c for c in code) else "reduction"


@needs_onednn
def test_a_plan_picks_the_kernel_by_row_count():
    """Each product takes the entry of the next measured row count up (the largest one's beyond)."""
    set_plan(torch.float32, True, {1: "library", 4: "packed", 16: "stream"})
    assert [product_kernel(torch.float32, m, True) for m in (1, 2, 4, 5, 16, 300)] == \
        ["library", "packed", "packed", "stream", "stream", "stream"]
    layer = _layer(bias=False)
    with torch.no_grad():
        made = [_calls(run_and_get_code(torch.compile(_norm_then_linear(layer), dynamic=False), torch.randn(m, 96))[1])
                for m in (1, 3, 8)]
    assert made == ["blas", "packed", "reduction"]
    assert product_kernel(torch.float32, 1, False) == "library"  # the eager plan is another one


def test_a_plan_names_real_kernels_and_eager_products_never_stream():
    with pytest.raises(ValueError, match="unknown product kernels"):
        set_plan(torch.float32, True, {1: "gemv"})
    with pytest.raises(ValueError, match="cannot stream"):
        set_plan(torch.float32, False, {1: "stream"})


@needs_onednn
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_products_match_f_linear(dtype, tolerance, bias):
    """Packed products equal F.linear; a dtype this CPU cannot pack (bfloat16 without AVX-512, as on
    an AMD EPYC Zen 3) stays on F.linear under the same plan."""
    expected = "packed" if linear.packing_available(dtype) else "library"
    layer = _layer(bias).to(dtype)
    for compiled, plan in PACKED.items():
        set_plan(dtype, compiled, plan)
    with torch.inference_mode():
        for rows in (1, 5, 200):
            x = torch.randn(rows, 96, dtype=dtype)
            assert kernel_for(x) == expected
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=tolerance, atol=tolerance)
        compiled = torch.compile(lambda x: layer(x) * 2, dynamic=False)(x)
        torch.testing.assert_close(compiled, 2 * F.linear(x, layer.weight, layer.bias), rtol=tolerance, atol=tolerance)


@needs_onednn
def test_a_dtype_this_cpu_cannot_pack_keeps_f_linear():
    """float16 packing needs avx512_fp16 or avx_ne_convert: where the CPU lacks them, asking for
    packed float16 products leaves them on F.linear instead of failing at the first product."""
    layer = _layer(bias=True).to(torch.float16)
    set_plan(torch.float16, False, {1: "packed"})
    x = torch.randn(5, 96, dtype=torch.float16)
    assert kernel_for(x) == ("packed" if linear.packing_available(torch.float16) else "library")
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-2, atol=1e-2)


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
    assert kernel_for(x) == ("packed" if packed else "library")  # eager: the broadcast would materialise [N, M, K]
    torch.testing.assert_close(_layer(True)(x), F.linear(x, _layer(True).weight, _layer(True).bias))


def test_gpu_products_stream_only_when_asked_and_only_when_compiled(monkeypatch):
    """A GPU keeps cuBLAS by default; `set_device_stream_rows(n)` streams products of up to n rows
    inside compiled graphs only (eager, the broadcast would materialise [N, M, K])."""
    one, five = torch.empty(1, 1, 96, device="meta"), torch.empty(5, 96, device="meta")
    try:
        for compiling in (False, True):
            monkeypatch.setattr(torch.compiler, "is_compiling", lambda compiling=compiling: compiling)
            assert kernel_for(one) == kernel_for(five) == "library"
        linear.set_device_stream_rows(1)
        assert kernel_for(one) == "stream" and kernel_for(five) == "library"
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
        assert kernel_for(one) == "library"
        with pytest.raises(ValueError, match="0 or more"):
            linear.set_device_stream_rows(-1)
    finally:
        linear.set_device_stream_rows(0)
