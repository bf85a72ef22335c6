"""Where a command's models run: one device and one dtype, decided once by the CLI (`--device`,
`--dtype`) and passed down. Nothing below the CLI picks a device on its own; library calls that are
given none run on the CPU in float32, as before these options existed.

Also the two things every batch loop needs on a GPU: host-to-device copies that do not block (from
pinned memory), and halving the batch when CUDA runs out of memory.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

from clipeval.config import DEFAULT_BATCH, DEFAULT_VQA_BATCH, DEVICE_CHOICES, DTYPE_CHOICES
from clipeval.errors import ClipevalError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_workers(device: torch.device) -> int:
    """Decoding processes: none on the CPU (they compete with the forward pass for the same cores; 0
    was fastest on 2 cores), on a GPU all but one core, at most 8, so decoding overlaps the GPU."""
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def cuda_unavailable_reason() -> str:
    built = torch.version.cuda
    if not built:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    return f"this torch ({torch.__version__}) is built for CUDA {built}, but no CUDA GPU is visible"


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """'auto' (a GPU when one is visible, else the CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not m:
        raise ClipevalError(f"unknown device {spec!r}: use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ClipevalError(
            f"--device {text}: CUDA is not available ({cuda_unavailable_reason()}); "
            f"use --device cpu, or --device auto to take a GPU only where there is one"
        )
    index = int(m.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ClipevalError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto': float32 on the CPU; on a GPU bfloat16 where it supports it (same range as float32, so no
    overflow in activations), else float16."""
    if isinstance(spec, torch.dtype):
        if spec not in DTYPES.values():
            raise ClipevalError(f"unsupported dtype {spec}; use one of {', '.join(DTYPE_CHOICES)}")
        return spec
    text = (spec or "auto").strip().lower()
    if text == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if text not in DTYPES:
        raise ClipevalError(f"unknown dtype {spec!r}: use one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[text]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Placement:
    """The device and dtype every model of one command runs in. Inputs are cast to `dtype` on the
    device; outputs come back as float32 (similarity functions and metrics always run in float32)."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @classmethod
    def resolve(
        cls, device: str | torch.device | None = "cpu", dtype: str | torch.dtype | None = "auto"
    ) -> "Placement":
        dev = resolve_device(device)
        return cls(dev, resolve_dtype(dtype, dev))

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def batch_size(self, given: int | None = None) -> int:
        return given or DEFAULT_BATCH["cuda" if self.is_cuda else "cpu"]

    def vqa_batch_size(self, given: int | None = None) -> int:
        return given or DEFAULT_VQA_BATCH["cuda" if self.is_cuda else "cpu"]

    def workers(self, given: int | None = None) -> int:
        return default_workers(self.device) if given is None else given

    def info(self) -> dict:
        """Stored with each run and evaluation (the device is not hashed: results do not depend on which
        GPU made them beyond float rounding; the dtype is, in the settings)."""
        out = {"device": str(self.device), "dtype": self.dtype_name}
        if self.is_cuda:
            out["gpu"] = torch.cuda.get_device_name(self.device)
        return out

    def module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move a model's weights to this device and dtype."""
        return module.to(device=self.device, dtype=self.dtype)

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """A CPU batch (pinned where the loader pins) onto the device without blocking the host, then cast
        to the model dtype there (casting on the GPU is cheaper than copying float32 and casting on the CPU)."""
        batch = batch.to(self.device, non_blocking=self.is_cuda)
        return batch.to(self.dtype) if batch.is_floating_point() else batch


CPU = Placement()


def is_oom(e: BaseException) -> bool:
    """A CUDA out-of-memory error (torch raises torch.cuda.OutOfMemoryError; some kernels a RuntimeError
    whose message says so)."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "CUDA out of memory" in str(e)


T = TypeVar("T")


class OomHalving:
    """Runs a function over consecutive row ranges of a batch, at most `size` rows at a time. On a CUDA
    out-of-memory error the size is halved (and kept for later batches), the failed range retried, and a
    line logged; one row that does not fit is an error."""

    def __init__(self, size: int, what: str = "images", log: Callable[[str], None] | None = None):
        if size < 1:
            raise ClipevalError(f"batch size must be at least 1, not {size}")
        self.size, self.what = int(size), what
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.halvings = 0

    def run(self, fn: Callable[[int, int], T], n: int) -> list[T]:
        """[fn(start, stop) for consecutive ranges covering 0..n]."""
        out: list[T] = []
        start = 0
        while start < n:
            stop = min(n, start + self.size)
            failed = False
            try:
                out.append(fn(start, stop))
            except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
                if not is_oom(e):
                    raise
                failed = True  # retried below, outside the handler, so the traceback's tensors are freed first
            if not failed:
                start = stop
                continue
            if stop - start <= 1:
                raise ClipevalError(
                    f"CUDA out of memory on a single one of the {self.what}: the models do not fit "
                    "this GPU; use a smaller --dtype (bfloat16/float16), another GPU, or --device cpu"
                )
            self.size = max(1, (stop - start) // 2)
            self.halvings += 1
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.log(f"CUDA out of memory on a batch of {stop - start} {self.what}: retrying in batches of {self.size}")
        return out
