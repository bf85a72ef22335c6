"""Every setting of a run as frozen dataclasses, and the stable hashes that key caches and name runs.

A hash covers the settings *and* fingerprints of the content they point at (probe files, concept
file text, weight files), so editing a concept file or swapping a checkpoint can never reuse a
stale cache entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipeval.errors import ClipevalError

# The original CLIP-Dissect defaults (similarity.py of Trustworthy-ML-Lab/CLIP-dissect).
SIMILARITY_DEFAULTS: dict[str, dict[str, float]] = {
    "soft_wpmi": dict(top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97),
    "wpmi": dict(top_k=28, a=2.0, lam=0.6, min_prob=1e-7),
    "rank_reorder": dict(p=3, top_fraction=0.05, scale_p=0.5, seed=0),
    "cos_similarity_cubed": dict(min_norm=1e-3),
    "cos_similarity": dict(),
}
POOLING_MODES = ("mean", "max")
# The precision models run in: part of the settings (results differ slightly with it). 'auto' is
# resolved per device before a config is made (clipeval.compute.device.resolve_dtype).
MODEL_DTYPES = ("float32", "bfloat16", "float16")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DTYPE_CHOICES = ("auto", *MODEL_DTYPES)

# Default images per forward pass. CPU: 16 was fastest on 2 cores (bench/bench_dissect.py). CUDA: large
# batches keep the GPU busy (the H200 limits were measured at 512); 256 leaves room for two
# models and their activations, and an out-of-memory error halves it anyway.
DEFAULT_BATCH = {"cpu": 16, "cuda": 256}
# (image, question) rows per language-model call: 8 on the CPU (bench/bench_vqa.py), 256 on an H200
# (the measurement: 19,200 questions in 51 s at batch 256 with blip2-opt-2.7b in fp16).
DEFAULT_VQA_BATCH = {"cpu": 8, "cuda": 256}


def check_dtype(dtype: str) -> None:
    if dtype not in MODEL_DTYPES:
        raise ClipevalError(f"model dtype must be one of {', '.join(MODEL_DTYPES)}, not {dtype!r}")


# what each similarity parameter may be: (lowest, highest, whether the ends are allowed, integer)
SIMILARITY_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "top_k": (1, 1e9, True, True),
    "a": (0, 1e6, False, False),
    "lam": (0, 1e6, True, False),
    "min_prob": (0, 1, False, False),
    "p_start": (0, 1, False, False),
    "p_end": (0, 1, False, False),
    "p": (1, 1e6, True, False),
    "top_fraction": (0, 1, False, False),
    "scale_p": (0, 1e6, False, False),
    "seed": (0, 2**31 - 1, True, True),
    "min_norm": (0, 1e6, False, False),
}


def stable_hash(*parts: Any, length: int = 12) -> str:
    """sha256 over a canonical JSON encoding of `parts` (dataclasses become dicts)."""

    def encode(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return {"__type__": type(obj).__name__, **{k: encode(v) for k, v in dataclasses.asdict(obj).items()}}
        if isinstance(obj, (list, tuple)):
            return [encode(x) for x in obj]
        if isinstance(obj, dict):
            return {str(k): encode(v) for k, v in obj.items()}
        return obj

    text = json.dumps(encode(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_fingerprint(path: str | os.PathLike | None) -> str:
    """Cheap identity of a file: absolute path, size and modification time."""
    if not path:
        return ""
    p = Path(path)
    if not p.exists():
        return f"missing:{p}"
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class TargetConfig:
    """The network being dissected: a built-in name, a timm or torchvision model name."""

    name: str = "efficientnet_lite0"
    weights: str | None = None  # local checkpoint path; None = shipped weights or the library's cache


@dataclass(frozen=True)
class ProbeConfig:
    """One or more image folders, merged in the order given."""

    paths: tuple[str, ...] = ()
    on_bad_image: str = "skip"  # 'skip' (count and go on) or 'fail'

    def __post_init__(self):
        if self.on_bad_image not in ("skip", "fail"):
            raise ClipevalError(f"on_bad_image must be 'skip' or 'fail', not {self.on_bad_image!r}")


@dataclass(frozen=True)
class ConceptConfig:
    """A built-in concept set name (see clipeval.datasets.concepts.BUILTIN) or a text file path."""

    source: str = "common-10k"


@dataclass(frozen=True)
class ImageTextConfig:
    """An image-text model. backend 'open_clip': arch + pretrained tag or checkpoint path.
    backend 'conse': arch names the ImageNet classifier, text side is the shipped MiniLM."""

    backend: str = "conse"
    arch: str = "efficientnet_lite1"
    pretrained: str = ""
    top_t: int = 10  # ConSE: number of classes mixed into an image embedding
    image_size: int | None = None  # resize to this square first (the paper showed evaluators 128 px)
    text_encoder: str = (
        "minilm"  # ConSE: the sentence encoder, 'minilm' (all-MiniLM-L6-v2) or 'mpnet' (all-mpnet-base-v2)
    )

    def __post_init__(self):
        if self.backend not in ("open_clip", "conse"):
            raise ClipevalError(f"unknown image-text backend {self.backend!r}; use 'open_clip' or 'conse'")
        if self.text_encoder not in ("minilm", "mpnet"):
            raise ClipevalError(f"unknown text encoder {self.text_encoder!r}; use 'minilm' or 'mpnet'")
        if self.image_size is not None and not 16 <= self.image_size <= 4096:
            raise ClipevalError(f"image size {self.image_size} is outside 16..4096 pixels")
        if not 1 <= self.top_t <= 1000:
            raise ClipevalError(f"ConSE top_t={self.top_t} is outside 1..1000")

    def describe(self) -> str:
        if self.backend == "open_clip":
            return f"OpenCLIP {self.arch} ({self.pretrained or 'random weights'})"
        text = "all-mpnet-base-v2" if self.text_encoder == "mpnet" else "all-MiniLM-L6-v2"
        return f"ConSE offline stand-in ({self.arch} classifier + {text}, top {self.top_t}) - not CLIP"


@dataclass(frozen=True)
class SimilarityConfig:
    fn: str = "soft_wpmi"
    params: tuple[tuple[str, float], ...] = ()  # overrides of SIMILARITY_DEFAULTS[fn]

    def __post_init__(self):
        if self.fn not in SIMILARITY_DEFAULTS:
            raise ClipevalError(
                f"unknown similarity function {self.fn!r}; choose one of {', '.join(SIMILARITY_DEFAULTS)}"
            )
        unknown = {k for k, _ in self.params} - set(SIMILARITY_DEFAULTS[self.fn])
        if unknown:
            raise ClipevalError(
                f"{self.fn} has no parameter(s) {sorted(unknown)}; it takes {sorted(SIMILARITY_DEFAULTS[self.fn])}"
            )
        for name, value in self.params:
            lo, hi, ends, integer = SIMILARITY_RANGES[name]
            inside = lo <= value <= hi if ends else lo < value < hi or (value == hi and hi == 1)
            if not math.isfinite(value) or not inside or (integer and value != int(value)):
                kind = "an integer" if integer else "a number"
                span = f"[{lo:g}, {hi:g}]" if ends else f"({lo:g}, {hi:g}{']' if hi == 1 else ')'}"
                raise ClipevalError(f"--sim-param {name}={value:g}: {name} must be {kind} in {span}")

    def kwargs(self) -> dict[str, float]:
        out = dict(SIMILARITY_DEFAULTS[self.fn])
        out.update(dict(self.params))
        return out


@dataclass(frozen=True)
class DissectConfig:
    """Everything that determines a CLIP-Dissect run's results."""

    target: TargetConfig = field(default_factory=TargetConfig)
    layers: tuple[str, ...] = ()
    pooling: str = "mean"
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    concepts: ConceptConfig = field(default_factory=ConceptConfig)
    image_text: ImageTextConfig = field(default_factory=ImageTextConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    k: int = 5  # top-k activating images kept per neuron
    n_runner_ups: int = 5  # best concepts kept per neuron (the label is the first)
    n_contrast: int = 10  # lowest-activation and random images kept per neuron (contrast evaluator)
    seed: int = 0
    dtype: str = "float32"  # of the target and labelling model; the device is not a setting (not hashed)

    def __post_init__(self):
        check_dtype(self.dtype)
        if self.pooling not in POOLING_MODES:
            raise ClipevalError(f"pooling must be one of {POOLING_MODES}, not {self.pooling!r}")
        if not self.layers:
            raise ClipevalError("no layers given; `clipeval layers --target NAME` lists them")
        if len(set(self.layers)) != len(self.layers):
            raise ClipevalError(f"layer listed twice in {list(self.layers)}")
        if self.k < 1:
            raise ClipevalError(f"k must be at least 1, not {self.k}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "DissectConfig":
        d = json.loads(text)
        return DissectConfig(
            target=TargetConfig(**d["target"]),
            layers=tuple(d["layers"]),
            pooling=d["pooling"],
            probe=ProbeConfig(paths=tuple(d["probe"]["paths"]), on_bad_image=d["probe"]["on_bad_image"]),
            concepts=ConceptConfig(**d["concepts"]),
            image_text=ImageTextConfig(**d["image_text"]),
            similarity=SimilarityConfig(
                fn=d["similarity"]["fn"], params=tuple(tuple(p) for p in d["similarity"]["params"])
            ),
            **{k: d[k] for k in ("k", "n_runner_ups", "n_contrast", "seed")},
            dtype=d.get("dtype", "float32"),  # runs stored before --dtype ran in float32
        )


# The VQA question (BLIP-2 OPT's prompt format around the paper's question): here, not in models/vqa.py,
# so that the CLI, the glossary and the README quote the value used without importing torch
DEFAULT_PROMPT = 'Question: Is this image related to "{label}"? Answer:'


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluator pass over a run (thresholds are NOT here: they apply at query time)."""

    evaluator: str
    image_text: ImageTextConfig | None = None  # CP / ES / contrast
    vqa_model: str = ""  # VQA: hub id or local folder
    prompt: str = DEFAULT_PROMPT
    k: int = 5
    baselines: bool = True
    constant_label: str = ""  # '' = the run's most frequent label
    seed: int = 0
    dtype: str = "float32"  # of the evaluator's model (the device is stored with it, not hashed)

    def __post_init__(self):
        check_dtype(self.dtype)
