"""Run-time kernel calibration: measured once per machine kind, cached on disk, and both prefill kernels exact."""
from __future__ import annotations

import json

import pytest
import torch

import minirun
from minirun.engine import session as session_module
from minirun.engine.generate import left_padded
from minirun.engine.session import Session, cache_size
from minirun.layers import calibrate, flex, linear


@pytest.fixture
def calibrating(tmp_path, monkeypatch):
    """Calibration on, into an empty cache directory, with no answers remembered in this process."""
    monkeypatch.setenv("MINIRUN_CALIBRATE", "1")
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path))
    monkeypatch.setattr(calibrate, "_memo", {})
    return tmp_path / "calibration.json"


def test_measured_once_per_machine_and_cached_on_disk(calibrating, monkeypatch):
    calls = []

    def measure():
        calls.append(1)
        return {"value": len(calls), "ms": [1.0]}

    assert calibrate.measured("probe", {"dtype": torch.float32}, measure, default=-1) == 1
    entry = json.loads(calibrating.read_text())
    (key,) = entry
    assert calibrate.cpu_facts()["cpu"] in key and "torch " + torch.__version__ in key and "dtype=torch.float32" in key
    assert entry[key]["ms"] == [1.0] and entry[key]["value"] == 1

    monkeypatch.setattr(calibrate, "_memo", {})  # a later process: reads the file, measures nothing
    assert calibrate.measured("probe", {"dtype": torch.float32}, measure, default=-1) == 1 and calls == [1]

    facts = calibrate.cpu_facts()
    monkeypatch.setattr(calibrate, "cpu_facts", lambda: {**facts, "cpu": "Intel Xeon Platinum"})
    assert calibrate.measured("probe", {"dtype": torch.float32}, measure, default=-1) == 2  # another kind measures again
    assert len(json.loads(calibrating.read_text())) == 2


def test_disabled_calibration_uses_defaults_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRUN_CALIBRATE", "0")
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path))
    assert calibrate.measured("probe", {}, lambda: pytest.fail("measured while disabled"), default=7) == 7
    assert not (tmp_path / "calibration.json").exists()


def test_stream_threshold_is_measured_on_the_weights(calibrating):
    flex.set_compiled(True)
    try:
        weights = [torch.randn(96, 64) for _ in range(3)]
        limit = calibrate.stream_max_rows(weights, rows=(1, 2))
    finally:
        flex.set_compiled(False)
    (entry,) = json.loads(calibrating.read_text()).values()
    assert limit in (0, 1, 2) and entry["value"] == limit
    assert set(entry["ms_blas_vs_stream"]) == {"1", "2"}  # BLAS and streaming timed at each row count


@pytest.mark.skipif(not linear.packing_available(), reason="this torch build has no oneDNN")
def test_packed_products_are_measured_on_the_weights(calibrating):
    weights = [torch.randn(96, 64) for _ in range(3)]
    chosen = calibrate.packed_linear(weights, rows=(1, 16))
    (entry,) = json.loads(calibrating.read_text()).values()
    assert entry["value"] is chosen
    assert set(entry["ms_blas_vs_packed"]) == {"1", "16"}  # both kernels timed at each row count
    assert chosen == all(packed < blas for blas, packed in entry["ms_blas_vs_packed"].values())


def test_tune_packs_only_what_was_measured_faster_and_fits(checkpoint_dirs, calibrating, monkeypatch):
    llm = minirun.load(checkpoint_dirs["llama3"])
    before = linear.is_packed(torch.float32)
    try:
        for faster, fits in [(True, True), (False, True), (True, False)]:
            monkeypatch.setattr(calibrate, "packed_linear", lambda weights, faster=faster: faster)
            monkeypatch.setattr(session_module, "fits_twice", lambda model, fits=fits: fits)
            session_module.tune(llm.model)
            assert linear.is_packed(torch.float32) == (faster and fits and linear.packing_available())
    finally:
        linear.set_packed(torch.float32, before)


def test_a_small_model_fits_twice(checkpoint_dirs):
    assert session_module.fits_twice(minirun.load(checkpoint_dirs["llama3"]).model)


def test_prefill_attention_kernel_is_measured(calibrating):
    flex.set_compiled(True)
    try:
        kernel = calibrate.prefill_attention(torch.float32, 3, 4, 2, 16, 64)
    finally:
        flex.set_compiled(False)
    (key, entry), = json.loads(calibrating.read_text()).items()
    assert kernel in ("sdpa", "flex") and entry["value"] == kernel and set(entry["ms"]) == {"sdpa", "flex"}
    assert "rows=4" in key  # rows are measured at the next power of two


def test_tune_sets_the_measured_threshold(checkpoint_dirs, calibrating, monkeypatch):
    llm = minirun.load(checkpoint_dirs["llama3"])
    monkeypatch.setattr(calibrate, "stream_max_rows", lambda weights: len(weights) + 1)
    before = linear.stream_max_rows(torch.float32)
    flex.set_compiled(True)
    try:
        session_module.tune(llm.model)
        assert linear.stream_max_rows(torch.float32) == llm.config.num_layers + 1
    finally:
        flex.set_compiled(False)
        linear.set_stream_max_rows(torch.float32, before)


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_both_prefill_kernels_give_the_eager_logits(checkpoint_dirs, monkeypatch, kernel):
    """A shared head then two padded rows: SDPA over the written slots and block-sparse FlexAttention agree."""
    llm = minirun.load(checkpoint_dirs["qwen3"])
    g = torch.Generator().manual_seed(1)
    head = torch.randint(3, 320, (70,), generator=g).tolist()
    rows = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (150, 40)]
    layout = left_padded(rows, llm.pad_id, llm.device, start=len(head))

    def prefill() -> torch.Tensor:
        session = Session(llm.model, 2, cache_size(len(head) + layout.length + 1))
        session.prefill(torch.tensor([head]), torch.arange(len(head))[None], torch.zeros((1, len(head)), dtype=torch.int32))
        return session.prefill(layout.tokens, layout.positions, layout.segments)

    eager = prefill()
    monkeypatch.setattr(calibrate, "prefill_attention", lambda *shape: kernel)
    flex.set_compiled(True)
    try:
        compiled = prefill()
    finally:
        flex.set_compiled(False)
    assert (compiled - eager).abs().max().item() <= 1e-4
