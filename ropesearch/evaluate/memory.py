"""Peak memory of a block of work: CUDA's allocator statistics, or on CPU the tensors alive at once.

torch keeps no allocator statistics on CPU, and process RSS mixes in the allocator's and the
interpreter's own habits, so on CPU `PeakMemory` counts tensor storage instead: every tensor an
operator returns inside the block is counted from its creation until its storage is freed
(a view adds nothing; a kernel's internal scratch space is not seen). Tensors that existed
before the block (weights, inputs) are not counted: the peak is what the work added.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _LiveStorage(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._counted: set[int] = set()

    def _release(self, key: int, size: int) -> None:
        self._counted.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu":
                storage = leaf.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self._counted:
                    self._counted.add(key)
                    self.live += size
                    weakref.finalize(storage, self._release, key, size).atexit = False
        self.peak = max(self.peak, self.live)
        return out


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.bytes`: the most memory the block held
    at once above what was allocated when it began."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.bytes = 0
        self._mode: _LiveStorage | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            self._mode = _LiveStorage()
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is None:
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._before
        else:
            self._mode.__exit__(*exc)
            self.bytes = self._mode.peak


class RowMemory:
    """GPU memory that one row of a batched call adds, measured on the first call at each length
    (`with measuring(length, rows): ...`), and how many rows fit `fraction` of the card after it."""

    def __init__(self, device: torch.device | str, fraction: float = 0.85):
        self.device = torch.device(device)
        self.fraction = fraction
        self.bytes: dict[int, int] = {}  # by length

    def rows(self, length: int) -> int:
        """Rows of `length` that fit what is free of the card's budget (0 or more; measured lengths only)."""
        total = torch.cuda.get_device_properties(self.device).total_memory
        return int((total * self.fraction - torch.cuda.memory_allocated(self.device)) // self.bytes[length])

    @contextlib.contextmanager
    def measuring(self, length: int, rows: int):
        if self.device.type != "cuda" or length in self.bytes:
            yield
            return
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        yield
        self.bytes[length] = max(1, (torch.cuda.max_memory_allocated(self.device) - before) // rows)

