"""A layer's output pooled to one value per unit, by the layer's layout, and the forward hook that records it."""

from __future__ import annotations

from typing import Callable

import torch

from clipeval.errors import ClipevalError


def pool(output: torch.Tensor, mode: str, layer: str, layout: str | None = None) -> torch.Tensor:
    """One value per neuron, as a fresh tensor (never a view of `output`).

    `layout` (from clipeval.models.targets.layer_layouts) says where the channels are:
      nchw         (B,C,H,W): spatial mean/max
      nhwc         (B,H,W,C) (timm Swin stages, Linear layers inside ConvNeXt blocks): spatial mean/max
      tokens:cls:P (B,T,C) the class token first, then P-1 more prefix tokens and the patch tokens: the
                   class token, whatever the mode (`tokens:cls` alone: P = 1)
      tokens:avg:P (B,T,C) P prefix (class, register) tokens the model's head does not read, then the patch
                   tokens: mean/max over the patch tokens (P = 0: every token is a patch)
      flat         (B,C): as it is
    None picks the plain guess by rank (4-D channels-first, 3-D class token first), for in-memory use."""
    if not torch.is_tensor(output):
        raise ClipevalError(f"layer {layer!r} returns {type(output).__name__}, not a tensor")
    layout = layout or {4: "nchw", 3: "tokens:cls", 2: "flat"}.get(output.dim(), "")
    expected = {"nchw": 4, "nhwc": 4, "tokens": 3, "flat": 2}.get(layout.split(":")[0])
    if expected is None or output.dim() != expected:
        raise ClipevalError(
            f"layer {layer!r} outputs shape {tuple(output.shape)}, which cannot be pooled per neuron"
            + (f" as layout {layout!r}" if layout else "")
        )
    reduce = (lambda x, dims: x.mean(dim=dims)) if mode == "mean" else (lambda x, dims: x.amax(dim=dims))
    if layout == "nchw":
        out = reduce(output, (2, 3))
    elif layout == "nhwc":
        out = reduce(output, (1, 2))
    elif layout.startswith("tokens:cls"):
        out = output[:, 0]
    elif layout.startswith("tokens:avg:"):
        n_prefix = int(layout.rsplit(":", 1)[1])
        if output.shape[1] <= n_prefix:
            raise ClipevalError(
                f"layer {layer!r} has {output.shape[1]} tokens, no patch token after {n_prefix} prefix tokens"
            )
        out = reduce(output[:, n_prefix:], (1,))
    else:
        out = output
    # a copy, taken inside the hook: a later in-place op (Linear -> ReLU(inplace=True) in torchvision's
    # VGG/AlexNet classifiers) would otherwise change the recorded values before they are read
    return out.detach().to(torch.float32, copy=True)


def pooling_hook(current: dict, layer: str, mode: str, layout: str | None = None) -> Callable:
    """A forward hook that puts `layer`'s pooled output (a float32 copy) into current[layer], once per forward."""

    def hook(_module, _inputs, output):
        if layer in current:
            raise ClipevalError(f"layer {layer!r} runs more than once per forward pass; pick another")
        current[layer] = pool(output, mode, layer, layout)

    return hook
