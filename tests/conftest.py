"""Shared fixtures: small random-weight checkpoints and the real default model."""
from __future__ import annotations

import os

import pytest
from checkpoints import ARCHS, write_checkpoint
from smollm2_fixture import smollm2_dir, smollm2_f32_dir, smollm2_gguf  # noqa: F401  (session fixtures)


@pytest.fixture(scope="session")
def checkpoint_dirs(tmp_path_factory) -> dict:
    """One random-weight checkpoint per architecture variant, written once per session."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: write_checkpoint(arch, root / arch) for arch in ARCHS}


@pytest.fixture(params=list(ARCHS))
def arch_dir(request, checkpoint_dirs):
    return request.param, checkpoint_dirs[request.param]


# Kernel calibration (layers/calibrate.py) times kernels for tens of seconds per shape on a new
# machine: the suite runs on the defaults, and test_calibrate.py measures on purpose.
os.environ["MINIRUN_CALIBRATE"] = "0"  # a developer's MINIRUN_CALIBRATE=1 must not time kernels into ~/.cache
# The suite checks the CPU path and fakes a GPU where it needs one (patching torch.cuda); on a GPU machine the
# commands' default device (auto) would otherwise move its runs to the GPU. GPU checks: bench/gpu.sh.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
