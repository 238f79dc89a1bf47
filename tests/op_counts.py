"""Counting the aten ops a piece of Python runs: the scalar reads among them make a GPU's host wait."""
from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SCALAR_READS = (torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default,
                torch.ops.aten.is_nonzero.default)


class OpCounts(TorchDispatchMode):
    """Counts the aten ops run under it; SCALAR_READS wait for the device (.item(), int(t), if t:)."""

    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count[func] += 1
        return func(*args, **(kwargs or {}))

    def scalar_reads(self) -> int:
        return sum(self.count[op] for op in SCALAR_READS)
