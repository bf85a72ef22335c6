"""The demo's probe image set, assembled offline from images that install from package registries.

Sources, in manifest order:
  procedural    colours, shapes and textures drawn here from a seeded RNG (exact labels)
  scikit-image  the photos bundled in skimage/data (a fixed list; nothing is fetched)
  scikit-learn  china.jpg and flower.jpg from load_sample_images' folder, if sklearn is importable
  mvtb-data     the photos of PyPI's mvtb-data, if installed
  openclipart   Debian openclipart-png clip art (size="full" only), unpacked without root

The result is a folder with `manifest.csv` (see clipeval.datasets.probe) and `BUILD_INFO.json`.
Building twice gives the same manifest and the same file bytes (given the same package versions).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw

from clipeval.compute.progress import bar
from clipeval.datasets.probe import MANIFEST, MANIFEST_COLUMNS, load_rgb, size_problem
from clipeval.errors import ClipevalError

# Imported inside the functions that use them: the packages that ship the demo's sample photos, only when
# the demo probe is built.

BUILD_INFO = "BUILD_INFO.json"
FORMAT = 1  # bump when the selection or rendering changes, so older builds are rebuilt
SIZES = ("small", "full")
DEFAULT_ASSETS_DIR = Path(__file__).resolve().parents[2] / ".assets"

PHOTO_MAX_SIDE = 512  # CLIP-style models look at ~224 px; larger copies only cost disk
CLIPART_MAX_SIDE = 256
OPENCLIPART_TARGET = 2100
OPENCLIPART_MAX_PIXELS = 16_000_000  # a few files are 100-600 megapixels: slow, gigabytes, and bombs to PIL
OPENCLIPART_SUBPATH = Path("usr/share/openclipart/png")  # inside the .deb
SYSTEM_OPENCLIPART = Path("/") / OPENCLIPART_SUBPATH  # where `apt-get install openclipart-png` puts it

PROCEDURAL_LICENSE = "generated (public domain)"
OPENCLIPART_LICENSE = "public domain (openclipart.org, Debian openclipart-png)"
MVTB_LICENSE = "MIT (PyPI mvtb-data, Peter Corke)"
SKLEARN_LICENSE = "CC BY 2.0 ({}, Flickr; scikit-learn sample image)"

PALETTE = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (250, 220, 30),
    "green": (40, 160, 60),
    "blue": (30, 80, 220),
    "purple": (130, 50, 170),
    "pink": (245, 150, 190),
    "brown": (125, 80, 40),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "cyan": (30, 200, 220),
}
SHAPES = (
    "circle",
    "ellipse",
    "square",
    "rectangle",
    "triangle",
    "diamond",
    "pentagon",
    "hexagon",
    "star",
    "cross",
    "ring",
    "arrow",
    "heart",
    "crescent",
)
TEXTURES = (
    "stripes",
    "checkerboard",
    "polka dots",
    "grid",
    "zigzag",
    "waves",
    "concentric circles",
    "plaid",
    "noise",
    "gradient",
)
# images per label: (colours, shapes, textures)
PROCEDURAL_COUNTS = {"full": (20, 25, 30), "small": (1, 2, 1)}
CANVAS = 224
COLOUR_JITTER = 15

# (file in skimage/data, label, terms as its docstring states them)
_SK = "scikit-image sample data"
SKIMAGE_IMAGES = (
    ("astronaut.png", "astronaut", f"public domain (NASA; {_SK})"),
    ("brick.png", "brick wall", f"CC0 (CC0Textures; {_SK})"),
    ("camera.png", "photographer", f"CC0 (Lav Varshney; {_SK})"),
    ("cell.png", "cell", f"CC0 ({_SK})"),
    ("chelsea.png", "cat", f"CC0 (Stefan van der Walt; {_SK})"),
    ("clock_motion.png", "clock", f"public domain (Stefan van der Walt; {_SK})"),
    ("coffee.png", "coffee", f"CC0 (Rachel Michetti; {_SK})"),
    ("coins.png", "coins", f"no known copyright restrictions (Brooklyn Museum; {_SK})"),
    ("color.png", "color wheel", f"terms not stated ({_SK}, package BSD-3-Clause)"),
    ("grass.png", "grass", f"CC0 (linolafett, DeviantArt; {_SK})"),
    ("gravel.png", "gravel", f"CC0 (CC0Textures; {_SK})"),
    ("horse.png", "horse", f"CC0 (Andreas Preuss; {_SK})"),
    ("hubble_deep_field.jpg", "galaxies", f"public domain (NASA; {_SK})"),
    ("ihc.png", "tissue", f"no known copyright restrictions (CMMI; {_SK})"),
    ("microaneurysms.png", "retina", f"CC0 (Andreas Maier; {_SK})"),
    ("moon.png", "moon", f"terms not stated ({_SK}, package BSD-3-Clause)"),
    ("motorcycle_left.png", "motorcycle", f"terms not stated (Middlebury stereo; {_SK}, package BSD-3-Clause)"),
    ("page.png", "text", f"terms not stated ({_SK}, package BSD-3-Clause)"),
    ("retina.jpg", "retina", f"CC0 (Mikael Häggström; {_SK})"),
    ("rocket.jpg", "rocket", f"public domain (SpaceX; {_SK})"),
    ("text.png", "text", f"public domain ({_SK})"),
)
SKLEARN_IMAGES = (("china.jpg", "temple", "danielbuechele"), ("flower.jpg", "flower", "vultilion"))

# mvtb-data files that are synthetic targets, binary masks, tiny test patterns or calibration shots
# (and lena.png, whose use is discouraged), matched on the path relative to mvtbdata/images
MVTB_SKIP = re.compile(
    r"^(calibration/|5points|eg-morph|scale-space|wally\.|multiblobs|segmentation|shark|"
    r"apriltag|arucoboard|tags\.|yellowtargets|fisheye_target|adelson|Image18|lena\.|church\.png)"
)
MVTB_LABELS = {  # where the file name does not say what is in the picture
    "58060": "grain",
    "image3": "street",
    "lab-scene": "laboratory",
    "greenscreen": "green screen",
    "seq/im": "paper house",
    "campus/P": "building",
    "campus/holdout/P": "building",
    "mosaic/aerial": "aerial photo",
    "penguins": "sign",
    "castle": "sign",
    "walls": "brick house",
    "parks": "park",
    "tomato": "tomato plant",
    "monalisa": "painting",
    "wheres-wally": "drawing",
    "notre-dame": "cathedral",
    "eiffel": "eiffel tower",
    "rocks": "rocks",
}
MVTB_SMALL_STRIDE = 8  # size="small" takes every 8th eligible photo

# openclipart file names are "<title>_<author>_NN", often cut off at ~24 characters. Words of author
# names (read off the files this selection takes) end the title; so does a last word of 4+ letters that
# starts one of them, as "archite" for "architetto".
OPENCLIPART_AUTHORS = frozenset(
    """
    abiclipart aiello aj alcalde alejandro alex alexander allen andrad andreas andy angelo ani anita anthony
    anton arago araujo architetto ashton balin bartel bazelkov benji bersac bertle bob bosdonna boyer brady
    brill buculei cagle celso chaosinfait chaspo cheng chris christoph christophe clemente colin copper corwin
    coutinho czara dan daniel danny daul dave davek dennis didier dirk dudziak eady einar enrique erich etienne
    ezechi fabert fco fearzip felipescu fernandez fidi francesco frank frederic fredrik frolland frouke
    fudriot gabrielle gaeremyn ganson gelmini gerald gerhards giuli glenn golan guillaume guillou hann hawke
    holmqvist hung illner ingo jacques jaime jakob james janet jarno jasper jean jeff joel joerg jon jonadab
    jonathan joseph joeseph josu junio jurgen jure juliane kara karam karl kempson kessels kevin kilian kim
    kimbro kodzoman konstantin krug kurt leif leigh linda lod loic lumen marcelo marcin massimo mateya matt
    matthew mauro mccann mcr meijer meza michael mike mimooh mirjam mitchell mo moser nathan nicola nicolas
    nicu nilsson nowicki nurbldoff olivier olivo omic onelette openclipart orbu orlando park patricia pena
    peterm petri philippe phillips powers purdie reckonin renante renardjb rikva rivera roberto rodrigo
    rollandin romus ron rory rosenbauer ruairi rutjes ruud ryan sanchez saurabh schubert sek sergio seth
    shandy sherrera simpson smith snuatautisticido soares stefan steltenpoel steele steve struve susan
    tanguy tatiana teed tejada tess teudimu theobald todd tom tomas tomek torkar treebuilder valkhof vasamaa
    victor vikingdread walden warttig webb wilc william wolfram yager yastrov yen yves zazou
""".split()
)
_FILLER_WORDS = {"pt", "step", "bw", "bwh", "cm", "md", "svg", "png", "amp", "http", "www", "of", "the", "an"}
OPENCLIPART_FOLDER_LABELS = {"recreation/games/cards/": "playing card", "shapes/flowchart/": "flowchart shape"}


@dataclass(frozen=True)
class _Item:
    rel: str  # path under out_dir, forward slashes
    label: str
    license: str
    make: Callable[[], Image.Image]


# ---------------------------------------------------------------- procedural


def _rng(*key: object) -> np.random.Generator:
    # one stream per image, so adding or reordering images never changes the others' bytes
    return np.random.default_rng(list(str(key).encode()))


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int = COLOUR_JITTER) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _two_colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    colours = list(PALETTE.values())
    while True:  # a pattern or shape should be visible: no yellow on white
        a, b = (colours[i] for i in rng.choice(len(colours), size=2, replace=False))
        if math.dist(a, b) >= 120:
            return _jitter(a, rng), _jitter(b, rng)


def _solid(name: str, rng: np.random.Generator) -> Image.Image:
    return Image.new("RGB", (CANVAS, CANVAS), _jitter(PALETTE[name], rng))


def _polygon(cx: float, cy: float, radii: Iterable[float], rotation: float) -> list[tuple[float, float]]:
    radii = list(radii)
    step = 2 * math.pi / len(radii)
    return [
        (cx + r * math.sin(rotation + i * step), cy - r * math.cos(rotation + i * step)) for i, r in enumerate(radii)
    ]


def _shape(name: str, rng: np.random.Generator) -> Image.Image:
    scale = 2  # drawn large and shrunk, for smooth edges
    size = CANVAS * scale
    bg, fg = _two_colours(rng)
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    r = size * rng.uniform(0.15, 0.36)
    cx, cy = (rng.uniform(r * 1.1, size - r * 1.1) for _ in range(2))
    tilt = math.radians(rng.uniform(-12, 12))
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        d.ellipse(box, fill=fg)
    elif name == "ellipse":
        d.ellipse((cx - r, cy - r * 0.55, cx + r, cy + r * 0.55), fill=fg)
    elif name == "square":
        d.polygon(_polygon(cx, cy, [r] * 4, math.pi / 4 + tilt), fill=fg)
    elif name == "rectangle":
        d.rectangle((cx - r, cy - r * 0.55, cx + r, cy + r * 0.55), fill=fg)
    elif name == "triangle":
        d.polygon(_polygon(cx, cy, [r] * 3, tilt), fill=fg)
    elif name == "diamond":
        d.polygon(_polygon(cx, cy, [r, r * 0.65] * 2, 0), fill=fg)
    elif name == "pentagon":
        d.polygon(_polygon(cx, cy, [r] * 5, tilt), fill=fg)
    elif name == "hexagon":
        d.polygon(_polygon(cx, cy, [r] * 6, tilt), fill=fg)
    elif name == "star":
        d.polygon(_polygon(cx, cy, [r, r * 0.42] * 5, tilt), fill=fg)
    elif name == "cross":
        w = r * 0.33
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fg)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fg)
    elif name == "ring":
        d.ellipse(box, fill=fg)
        d.ellipse((cx - r * 0.6, cy - r * 0.6, cx + r * 0.6, cy + r * 0.6), fill=bg)
    elif name == "arrow":
        turn = int(rng.integers(4)) * math.pi / 2
        pts = [(-1, -0.2), (0.2, -0.2), (0.2, -0.55), (1, 0), (0.2, 0.55), (0.2, 0.2), (-1, 0.2)]
        c, s = math.cos(turn), math.sin(turn)
        d.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts], fill=fg)
    elif name == "heart":
        t = np.linspace(0, 2 * math.pi, 120, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        d.polygon([(cx + r * a / 17, cy - r * b / 17) for a, b in zip(x, y)], fill=fg)
    elif name == "crescent":
        d.ellipse(box, fill=fg)
        off = r * 0.45
        d.ellipse((cx - r + off, cy - r - off * 0.3, cx + r + off, cy + r - off * 0.3), fill=bg)
    else:
        raise ValueError(name)
    return im.resize((CANVAS, CANVAS), Image.Resampling.LANCZOS)


def _texture(name: str, rng: np.random.Generator) -> Image.Image:
    a, b = (np.array(c, dtype=np.float32) for c in _two_colours(rng))
    y, x = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    period = rng.uniform(14, 48)
    angle = math.radians(rng.choice([0, 45, 90, 135]) + rng.uniform(-6, 6))
    u = x * math.cos(angle) + y * math.sin(angle)  # coordinate across the pattern
    v = -x * math.sin(angle) + y * math.cos(angle)
    if name == "stripes":
        mask = (u / period) % 1 < 0.5
    elif name == "checkerboard":
        mask = (np.floor(x / period) + np.floor(y / period)) % 2 == 0
    elif name == "polka dots":
        gx, gy = (x % period) - period / 2, (y % period) - period / 2
        mask = gx**2 + gy**2 < (period * rng.uniform(0.2, 0.33)) ** 2
    elif name == "grid":
        width = max(2.0, period * 0.12)
        mask = (x % period < width) | (y % period < width)
    elif name == "zigzag":
        tri = np.abs((v / period) % 2 - 1)  # triangle wave along the bands
        mask = ((u + tri * period * 0.8) / period) % 1 < 0.5
    elif name == "waves":
        mask = ((u + period * 0.4 * np.sin(2 * math.pi * v / (period * 2.5))) / period) % 1 < 0.5
    elif name == "concentric circles":
        cx, cy = rng.uniform(0.2, 0.8, size=2) * CANVAS
        mask = (np.hypot(x - cx, y - cy) / (period * 0.6)) % 1 < 0.5
    elif name == "plaid":
        c = np.array(_two_colours(rng)[0], dtype=np.float32)
        across = ((x / period) % 1 < 0.4)[..., None]
        down = ((y / period) % 1 < 0.4)[..., None]
        img = np.where(across, a, b) * 0.5 + np.where(down, c, b) * 0.5
        return Image.fromarray(img.round().astype(np.uint8))
    elif name == "noise":
        cells = int(rng.choice([1, 2, 4, 8]))  # from fine grain to coarse blotches
        small = rng.integers(0, 256, size=(CANVAS // cells, CANVAS // cells, 3), dtype=np.uint8)
        if rng.random() < 0.5:
            small = np.repeat(small[..., :1], 3, axis=2)
        return Image.fromarray(small).resize((CANVAS, CANVAS), Image.Resampling.NEAREST)
    elif name == "gradient":
        t = (u - u.min()) / (u.max() - u.min())
        return Image.fromarray((a * (1 - t[..., None]) + b * t[..., None]).round().astype(np.uint8))
    else:
        raise ValueError(name)
    return Image.fromarray(np.where(mask[..., None], a, b).astype(np.uint8))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _procedural_items(size: str) -> list[_Item]:
    n_colour, n_shape, n_texture = PROCEDURAL_COUNTS[size]
    groups = ((PALETTE, n_colour, _solid), (SHAPES, n_shape, _shape), (TEXTURES, n_texture, _texture))
    items = []
    for labels, n, draw in groups:
        for label in labels:
            for i in range(n):
                rel = f"procedural/{_slug(label)}/{_slug(label)}_{i:03d}.png"
                items.append(
                    _Item(
                        rel, label, PROCEDURAL_LICENSE, lambda draw=draw, label=label, i=i: draw(label, _rng(label, i))
                    )
                )
    return items


# ---------------------------------------------------------------- packaged photos


def _photo(path: Path, max_side: int = PHOTO_MAX_SIDE) -> Callable[[], Image.Image]:
    def make() -> Image.Image:
        im = load_rgb(str(path))
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return im

    return make


def _skimage_items(size: str) -> list[_Item]:
    try:
        import skimage.data
    except ImportError:
        return []
    # read the bundled files by name: skimage.data's functions may reach for pooch and the network
    folder = Path(skimage.data.__file__).parent
    return [
        _Item(f"scikit-image/{_slug(label)}/{Path(name).stem}.jpg", label, license_, _photo(folder / name))
        for name, label, license_ in SKIMAGE_IMAGES
        if (folder / name).is_file()
    ]


def _sklearn_items(size: str) -> list[_Item]:
    try:
        import sklearn.datasets
    except ImportError:
        return []
    folder = Path(sklearn.datasets.__file__).parent / "images"
    return [
        _Item(
            f"scikit-learn/{_slug(label)}/{Path(name).stem}.jpg",
            label,
            SKLEARN_LICENSE.format(author),
            _photo(folder / name),
        )
        for name, label, author in SKLEARN_IMAGES
        if (folder / name).is_file()
    ]


def _mvtb_label(rel: str) -> str:
    key = rel.rsplit(".", 1)[0]
    for prefix, label in MVTB_LABELS.items():
        if key.startswith(prefix):
            return label
    return " ".join(re.findall(r"[a-z]+", Path(key).name.lower()))


def _mvtb_items(size: str) -> list[_Item]:
    try:
        import mvtbdata
    except ImportError:
        return []
    root = Path(mvtbdata.__file__).parent / "images"
    rels = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg") and p.is_file()
    )
    rels = [r for r in rels if not MVTB_SKIP.match(r)]
    if size == "small":
        rels = rels[::MVTB_SMALL_STRIDE]
    items = []
    for rel in rels:
        label = _mvtb_label(rel)
        items.append(
            _Item(
                f"mvtb-data/{_slug(label)}/{_slug(rel.rsplit('.', 1)[0].replace('/', '_'))}.jpg",
                label,
                MVTB_LICENSE,
                _photo(root / rel),
            )
        )
    return items


# what each source's images are, for the app to say what a probe is made of
SOURCE_KINDS = {
    "openclipart": "clip art",
    "procedural": "drawn colours, shapes and textures",
    "scikit-image": "photos",
    "scikit-learn": "photos",
    "mvtb-data": "photos",
}


def probe_mix(sources) -> list[tuple[str, int]]:
    """(kind, images) of a probe from its images per source (rows of source, images), most first: the demo's
    sources as clip art, drawn images and photos; any other source under its own name."""
    counts: dict[str, int] = {}
    for source, n in sources:
        kind = SOURCE_KINDS.get(source, source)
        counts[kind] = counts.get(kind, 0) + int(n)
    return sorted(counts.items(), key=lambda kv: -kv[1])


# ---------------------------------------------------------------- openclipart


def _fetch_hint(assets_dir: Path) -> str:
    return (
        f"The full demo probe set needs Debian's openclipart-png clip art. Fetch it without root:\n"
        f"  mkdir -p {assets_dir} && cd {assets_dir} && apt-get download openclipart-png && "
        f"dpkg-deb -x openclipart-png_*.deb openclipart\n"
        f"(or `sudo apt-get install openclipart-png`), or build with size='small'."
    )


def _run(cmd: list[str], cwd: Path) -> tuple[bool, str]:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return done.returncode == 0, (done.stderr or done.stdout).strip()[-500:]


def openclipart_root(assets_dir: str | Path | None = None, *, fetch: bool = True, progress: bool = False) -> Path:
    """The folder of openclipart PNG categories: unpacked in assets_dir, installed system-wide, or
    downloaded now with `apt-get download` and unpacked with `dpkg-deb -x` (neither needs root)."""
    assets = Path(assets_dir) if assets_dir is not None else DEFAULT_ASSETS_DIR
    unpacked = assets / "openclipart"
    for root in (unpacked / OPENCLIPART_SUBPATH, SYSTEM_OPENCLIPART):
        if root.is_dir() and any(root.iterdir()):
            return root
    if not fetch:
        raise ClipevalError(_fetch_hint(assets))
    assets.mkdir(parents=True, exist_ok=True)
    debs = sorted(assets.glob("openclipart-png_*.deb"))
    if not debs:
        if progress:
            print(f"fetching openclipart-png (about 131 MB) into {assets} with apt-get download", file=sys.stderr)
        ok, msg = _run(["apt-get", "download", "openclipart-png"], assets)
        debs = sorted(assets.glob("openclipart-png_*.deb"))
        if not ok or not debs:
            raise ClipevalError(f"`apt-get download openclipart-png` failed: {msg}\n{_fetch_hint(assets)}")
    if progress:
        print(f"unpacking {debs[-1].name} into {unpacked}", file=sys.stderr)
    # unpack beside and rename, so a cut-off unpack is never taken for a complete one
    partial = Path(tempfile.mkdtemp(prefix=".openclipart-", dir=assets))
    ok, msg = _run(["dpkg-deb", "-x", str(debs[-1]), str(partial)], assets)
    if not ok or not (partial / OPENCLIPART_SUBPATH).is_dir():
        shutil.rmtree(partial, ignore_errors=True)
        raise ClipevalError(f"`dpkg-deb -x {debs[-1].name}` failed: {msg}\n{_fetch_hint(assets)}")
    shutil.rmtree(unpacked, ignore_errors=True)
    partial.rename(unpacked)
    return unpacked / OPENCLIPART_SUBPATH


def openclipart_label(rel: str) -> str:
    """Words of the file name without numbers, author names or filler (the folder name if none are
    left); "flag" is added for flags, whose file names only say whose flag it is."""
    path = Path(rel)
    category = path.parent.as_posix() + "/"
    for prefix, label in OPENCLIPART_FOLDER_LABELS.items():
        if category.startswith(prefix):
            return label
    words = [w for w in re.findall(r"[a-z]+", path.stem.lower()) if len(w) > 1 and w not in _FILLER_WORDS]
    for i, w in enumerate(words):
        cut_off = i == len(words) - 1 and len(w) >= 4 and any(a.startswith(w) for a in OPENCLIPART_AUTHORS)
        if w in OPENCLIPART_AUTHORS or cut_off:
            words = words[:i]
            break
    label = " ".join(words) or " ".join(re.findall(r"[a-z]+", path.parent.name.lower()))
    if category.startswith("signs_and_symbols/flags/") and "semaphore/" not in category and "flag" not in label:
        label += " flag"
    return label


def _pixels(path: Path) -> int:
    """Width x height from the header; 0 for a file PIL cannot open, sys.maxsize for a size load_rgb
    refuses (a divider 30 times longer than high: clip art has a few)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                return im.width * im.height if size_problem(*im.size) is None else sys.maxsize
        except Image.DecompressionBombError:
            return sys.maxsize
        except Exception:  # PIL raises many types for broken files
            return 0


def _spread(n: int, k: int) -> list[int]:
    return [i * n // k for i in range(k)]


def _openclipart_items(size: str, assets_dir: str | Path | None, progress: bool = False) -> list[_Item]:
    if size != "full":
        return []
    root = openclipart_root(assets_dir, progress=progress)
    by_category: dict[str, list[str]] = {}
    # symlinks repeat a file under a second category: take each picture once
    for p in sorted(root.rglob("*.png")):
        if p.is_file() and not p.is_symlink() and 0 < _pixels(p) <= OPENCLIPART_MAX_PIXELS:
            rel = p.relative_to(root)
            by_category.setdefault(rel.parent.as_posix(), []).append(rel.as_posix())
    if not by_category:
        raise ClipevalError(f"no PNG files under {root}")
    # the smallest per-category quota that reaches the target spreads the picks over every category
    quota = 1
    while sum(min(len(v), quota) for v in by_category.values()) < OPENCLIPART_TARGET and quota < max(
        len(v) for v in by_category.values()
    ):
        quota += 1
    items = []
    for category, rels in sorted(by_category.items()):
        for j in _spread(len(rels), min(len(rels), quota)):
            rel = rels[j]
            items.append(
                _Item(
                    f"openclipart/{category}/{_slug(Path(rel).stem)}.png",
                    openclipart_label(rel),
                    OPENCLIPART_LICENSE,
                    _photo(root / rel, CLIPART_MAX_SIDE),
                )
            )
    return items


# ---------------------------------------------------------------- build


def _collect(size: str, assets_dir: str | Path | None, progress: bool = False) -> dict[str, list[_Item]]:
    sources = {
        "procedural": _procedural_items(size),
        "scikit-image": _skimage_items(size),
        "scikit-learn": _sklearn_items(size),
        "mvtb-data": _mvtb_items(size),
        "openclipart": _openclipart_items(size, assets_dir, progress),
    }
    return {name: items for name, items in sources.items() if items}


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=90)
    else:
        image.save(path, format="PNG")


def _is_complete(out: Path, size: str) -> bool:
    try:
        info = json.loads((out / BUILD_INFO).read_text())
        with open(out / MANIFEST, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError):
        return False
    return (
        info.get("format") == FORMAT
        and info.get("size") == size
        and len(rows) == info.get("total")
        and all((out / r["path"]).is_file() for r in rows)
    )


def build_demo_probe(
    out_dir: str | Path, *, size: str = "full", assets_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """Build the demo probe set into out_dir (returned); a complete build of the same size is reused.

    size="full" gives >= 3,000 images and needs openclipart-png (fetched into assets_dir, default
    <repo>/.assets, if missing); size="small" gives about 85 images in seconds and needs no download.
    The set is built in a hidden sibling folder and renamed into place at the end, so an interrupted
    build leaves out_dir as it was; a build of the other size found in out_dir is replaced.
    """
    if size not in SIZES:
        raise ClipevalError(f"demo probe size must be one of {SIZES}, not {size!r}")
    out = Path(out_dir).expanduser().resolve()
    if _is_complete(out, size):
        return out
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / BUILD_INFO).exists())):
        raise ClipevalError(f"{out} exists and is not a demo probe build; remove it or choose another folder")

    sources = _collect(size, assets_dir, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        rows = []
        for source, items in sources.items():
            for item in bar(items, desc=source, unit="img", disable=not progress):
                _save(item.make(), tmp / item.rel)
                rows.append((item.rel, source, item.license, item.label))
        with open(tmp / MANIFEST, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(rows)
        counts = {source: len(items) for source, items in sources.items()}
        info = {"format": FORMAT, "size": size, "total": len(rows), "counts": counts}
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():  # an empty folder or a build of another size: swap it out
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def describe_sources(out_dir: str | Path) -> list[dict]:
    """One row per (source, license) in manifest order: {"source", "license", "count"}."""
    manifest = Path(out_dir) / MANIFEST
    try:
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ClipevalError(f"cannot read {manifest}: {e}") from e
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["source"], r["license"])
        counts[key] = counts.get(key, 0) + 1
    return [{"source": s, "license": lic, "count": n} for (s, lic), n in counts.items()]
