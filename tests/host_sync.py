"""A dispatch mode that records what a CUDA graph could not capture, checkable on a CPU."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: ops that read a tensor on the host or whose output shape depends on tensor values
READS_BACK = {
    aten._local_scalar_dense.default,  # .item(), bool(), float(), int()
    aten.nonzero.default,
    aten.masked_select.default,
    aten.lift_fresh.default,  # a tensor from Python data: a host-to-device copy on a GPU
}
BOOL_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}


class HostSyncDetector(TorchDispatchMode):
    """Records the aten ops of a block that would stall a GPU or break a CUDA-graph capture:
    reading values back to the host, boolean-mask indexing, tensors made from Python data."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func in BOOL_INDEXED and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        )
        if func in READS_BACK or bool_index:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))
