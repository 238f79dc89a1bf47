"""The one-command GPU check refuses cleanly without CUDA. (Its `--quick` CPU dry run of every
section takes ~8 minutes on 2 cores, too long for this suite; the sections call the functions the
other tests cover: run_encoded, run_bench, the loader.)"""
from __future__ import annotations

import pytest

from minirun.bench import gpu
from minirun.errors import MinirunError


def test_refuses_without_cuda(tmp_path):
    with pytest.raises(MinirunError, match="no CUDA GPU is visible: run this on the GPU machine"):
        gpu.main(["--out", str(tmp_path)])
    with pytest.raises(MinirunError, match="full-size checks need a GPU"):
        gpu.main(["--device", "cpu", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
