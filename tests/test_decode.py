"""One decoding function for every path (issue 24 point 6, issue 25 points 4 and 7): every Pillow mode a
probe file can hold becomes the RGB image a reference conversion in numpy gives, and images too large
or too long to resize are refused from their header, before anything is decoded."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from clipeval.datasets.probe import MAX_ASPECT, MAX_PIXELS, load_rgb, size_problem, to_rgb
from clipeval.errors import ClipevalError

H, W = 12, 20
RNG = np.random.default_rng(7)
U8 = RNG.integers(0, 256, size=(H, W, 4), dtype=np.uint8)  # four 8-bit planes
U16 = RNG.integers(0, 65536, size=(H, W, 4), dtype=np.uint16)  # four 16-bit planes
WHITE = 255.0


def grey(a) -> np.ndarray:
    return np.repeat(np.asarray(a, np.float64)[..., None], 3, axis=-1)


def on_white(rgb, alpha) -> np.ndarray:
    a = np.asarray(alpha, np.float64)[..., None] / 255.0
    return np.asarray(rgb, np.float64) * a + WHITE * (1.0 - a)


def png(width: int, height: int, bit_depth: int, colour_type: int, rows) -> bytes:
    """A PNG written byte by byte, for what Pillow cannot write (16-bit colour, extreme sizes); `rows`:
    the filtered scanlines, as bytes or an iterable of them."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    data = b"".join(z.compress(r) for r in ([rows] if isinstance(rows, bytes) else rows)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def png16(planes: np.ndarray, colour_type: int) -> bytes:
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in planes.reshape(H, -1))
    return png(W, H, 16, colour_type, rows)


def palette_image(alpha: bool) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A P (or PA) image with a random 256-colour palette: (image, indices, palette as (256, 3))."""
    pal = RNG.integers(0, 256, size=(256, 3), dtype=np.uint8)
    idx = U8[..., 0]
    im = Image.frombytes("P", (W, H), idx.tobytes())
    im.putpalette(pal.ravel().tolist())
    if alpha:
        im = im.convert("PA")
        im.putalpha(Image.fromarray(U8[..., 1], "L"))
    return im, idx, pal.astype(np.float64)


def ycbcr_reference(y, cb, cr) -> np.ndarray:
    """JFIF YCbCr -> RGB (ITU-R BT.601, full range)."""
    y, cb, cr = (np.asarray(c, np.float64) for c in (y, cb, cr))
    return np.stack(
        [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], -1
    )


def case(mode: str, tmp: Path) -> tuple[object, np.ndarray, float]:
    """(what to decode: a file path or an in-memory image, the reference RGB as floats, tolerance)."""
    p = tmp / "img"
    if mode == "1":
        bits = U8[..., 0] > 127
        Image.fromarray(bits).save(p.with_suffix(".png"))
        return p.with_suffix(".png"), grey(bits * 255.0), 0
    if mode == "L":
        Image.fromarray(U8[..., 0], "L").save(p.with_suffix(".png"))
        return p.with_suffix(".png"), grey(U8[..., 0]), 0
    if mode == "LA":
        Image.fromarray(U8[..., :2], "LA").save(p.with_suffix(".png"))
        return p.with_suffix(".png"), on_white(grey(U8[..., 0]), U8[..., 1]), 1
    if mode == "P":
        im, idx, pal = palette_image(alpha=False)
        im.save(p.with_suffix(".png"))
        return p.with_suffix(".png"), pal[idx], 0
    if mode == "P+transparency":  # one palette entry marked transparent (PNG tRNS, GIF)
        im, idx, pal = palette_image(alpha=False)
        key = int(idx[0, 0])
        im.save(p.with_suffix(".png"), transparency=key)
        return p.with_suffix(".png"), np.where((idx == key)[..., None], WHITE, pal[idx]), 0
    if mode == "PA":  # no file format Pillow writes holds it: the in-memory image
        im, idx, pal = palette_image(alpha=True)
        return im, on_white(pal[idx], U8[..., 1]), 1
    if mode == "RGB":
        Image.fromarray(U8[..., :3], "RGB").save(p.with_suffix(".png"))
        return p.with_suffix(".png"), U8[..., :3].astype(np.float64), 0
    if mode == "RGBA":
        Image.fromarray(U8, "RGBA").save(p.with_suffix(".png"))
        return p.with_suffix(".png"), on_white(U8[..., :3], U8[..., 3]), 1
    if mode == "CMYK":
        Image.fromarray(U8, "CMYK").save(p.with_suffix(".tif"))
        c = U8.astype(np.float64) / 255.0
        return p.with_suffix(".tif"), 255.0 * (1 - c[..., :3]) * (1 - c[..., 3:]), 1
    if mode == "YCbCr":
        Image.fromarray(U8[..., :3], "YCbCr").save(p.with_suffix(".tif"))
        return p.with_suffix(".tif"), np.clip(ycbcr_reference(U8[..., 0], U8[..., 1], U8[..., 2]), 0, 255), 1
    if mode in ("I;16", "I;16B"):  # a 16-bit grey PNG opens as I;16; a big-endian TIFF as I;16B
        if mode == "I;16":
            p.with_suffix(".png").write_bytes(png16(U16[..., 0], 0))
            path = p.with_suffix(".png")
        else:
            path = p.with_suffix(".tif")
            Image.frombytes("I;16B", (W, H), U16[..., 0].astype(">u2").tobytes()).save(path)
        return path, grey(U16[..., 0] / 65535.0 * 255.0), 0.5
    if mode == "I":  # a 16-bit PGM opens as I, on 0..65535 at any maxval
        maxval = 1023
        v = (U16[..., 0] // 64).astype(np.int64)
        p.with_suffix(".pgm").write_bytes(f"P5\n{W} {H}\n{maxval}\n".encode() + v.astype(">u2").tobytes())
        return p.with_suffix(".pgm"), grey(v / maxval * 255.0), 1
    if mode == "I (TIFF int32)":
        Image.fromarray(U16[..., 0].astype(np.int32), "I").save(p.with_suffix(".tif"))
        return p.with_suffix(".tif"), grey(U16[..., 0] / 65535.0 * 255.0), 0.5
    if mode == "F 0..1":
        f = U16[..., 0].astype(np.float32) / 65535.0
        Image.fromarray(f, "F").save(p.with_suffix(".tif"))
        return p.with_suffix(".tif"), grey(f.astype(np.float64) * 255.0), 0.5
    if mode == "F 0..255":
        f = U16[..., 0].astype(np.float32) / 257.0
        Image.fromarray(f, "F").save(p.with_suffix(".tif"))
        return p.with_suffix(".tif"), grey(f), 0.5
    # Pillow opens a 16-bit colour PNG as 8-bit RGB(A), keeping each sample's high byte: within 1 of
    # rounding, and within 2 once an alpha so read has put the colour on white
    if mode == "RGB 16-bit":
        p.with_suffix(".png").write_bytes(png16(U16[..., :3], 2))
        return p.with_suffix(".png"), U16[..., :3] / 65535.0 * 255.0, 1
    if mode == "RGBA 16-bit":
        p.with_suffix(".png").write_bytes(png16(U16, 6))
        return p.with_suffix(".png"), on_white(U16[..., :3] / 257.0, U16[..., 3] / 257.0), 2
    raise AssertionError(mode)


MODES = [
    "1",
    "L",
    "LA",
    "P",
    "P+transparency",
    "PA",
    "RGB",
    "RGBA",
    "CMYK",
    "YCbCr",
    "I",
    "I (TIFF int32)",
    "I;16",
    "I;16B",
    "F 0..1",
    "F 0..255",
    "RGB 16-bit",
    "RGBA 16-bit",
]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_decodes_to_the_reference_rgb(mode, tmp_path):
    source, expected, tolerance = case(mode, tmp_path)
    got = load_rgb(str(source)) if isinstance(source, Path) else to_rgb(source)
    assert got.mode == "RGB" and got.size == (W, H)
    diff = np.abs(np.asarray(got, np.float64) - expected)
    assert diff.max() <= tolerance, f"{mode}: off by up to {diff.max():.1f} (mean {diff.mean():.2f})"


def test_a_16_bit_grey_png_keeps_its_picture(tmp_path):
    """The issue's case: a 16-bit grey scan read as solid white (mean 255, std 0)."""
    ramp = np.tile(np.linspace(0, 65535, W).astype(np.uint16), (H, 1))
    f = tmp_path / "scan.png"
    f.write_bytes(png(W, H, 16, 0, b"".join(b"\x00" + r.astype(">u2").tobytes() for r in ramp)))
    with Image.open(f) as im:
        assert im.mode == "I;16"
    px = np.asarray(load_rgb(str(f)), np.float64)
    assert px[:, 0].max() == 0 and px[:, -1].min() == 255 and 120 < px.mean() < 135


def test_a_16_bit_grey_png_with_a_transparent_value_goes_on_white(tmp_path):
    f = tmp_path / "key.png"
    Image.frombytes("I;16", (W, H), U16[..., 0].astype("<u2").tobytes()).save(f, transparency=int(U16[0, 0, 0]))
    px = np.asarray(load_rgb(str(f)), np.float64)
    clear = U16[..., 0] == U16[0, 0, 0]
    assert (px[clear] == 255).all()
    np.testing.assert_allclose(px[~clear], grey(U16[..., 0] / 65535.0 * 255.0)[~clear], atol=0.5)


def test_an_upload_decodes_as_the_file_does(tmp_path):
    source, expected, _ = case("RGBA", tmp_path)
    data = Path(source).read_bytes()
    np.testing.assert_array_equal(np.asarray(load_rgb(io.BytesIO(data))), np.asarray(load_rgb(str(source))))
    with pytest.raises(ClipevalError, match="cannot read image"):
        load_rgb(io.BytesIO(b"not an image"))


def strip_png(width: int, height: int) -> bytes:
    """A tiny grey PNG of any size: all-zero rows compress to almost nothing (138 bytes at 60000x1)."""
    return png(width, height, 8, 0, (b"\x00" + bytes(width) for _ in range(height)))


def test_an_upload_that_is_not_an_image_is_named_by_its_name():
    """Pillow names a file it cannot identify by its repr: the live probe said 'cannot identify image file
    <_io.BytesIO object at 0x7f...>' for an uploaded text file."""

    class Upload(io.BytesIO):  # what Streamlit's UploadedFile is: a BytesIO with the file's name
        name = "notes.png"

    with pytest.raises(ClipevalError) as err:
        load_rgb(Upload(b"not an image at all"))
    assert "notes.png" in str(err.value) and "object at 0x" not in str(err.value)
    assert "not an image format" in str(err.value)


@pytest.mark.parametrize("size", [(60000, 1), (1, 60000), (21, 1), (10000, 9000)])
def test_extreme_sizes_are_refused_from_the_header(size, tmp_path, monkeypatch):
    f = tmp_path / "strip.png"
    f.write_bytes(strip_png(*size))
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or None)
    with pytest.raises(ClipevalError, match=rf"cannot read image .*strip.png: {size[0]}x{size[1]} pixels"):
        load_rgb(str(f))
    assert loads == []  # nothing decoded


def test_a_bomb_past_pillows_own_limit_is_a_clear_error(tmp_path):
    f = tmp_path / "bomb.png"
    f.write_bytes(strip_png(20000, 10000))  # 200 megapixels in 200 KB: Pillow itself refuses to open it
    with pytest.raises(ClipevalError, match=r"cannot read image .*bomb.png: .*decompression bomb"):
        load_rgb(str(f))


def test_the_limits():
    assert size_problem(MAX_ASPECT, 1) is None and size_problem(1, MAX_ASPECT) is None
    assert "aspect ratio 21:1" in size_problem(21, 1)
    assert size_problem(10_000, 8_000) is None and MAX_PIXELS == 80_000_000
    assert "over the limit of 80,000,000 pixels" in size_problem(10_001, 8_000)
    assert "no pixels" in size_problem(0, 5)


def test_images_are_decoded_in_one_place():
    """Every path that reads an image file goes through load_rgb (the live probe once decoded on its own
    and read transparent clip art on black); only the demo's builder may open a header for its size."""
    import re

    root = Path(__file__).resolve().parents[1]
    opened = {
        str(f.relative_to(root))
        for d in ("clipeval", "pages")
        for f in (root / d).rglob("*.py")
        if re.search(r"Image\.open\(|\.convert\(\"RGB\"\)", f.read_text())
    }
    assert opened <= {"clipeval/datasets/probe.py", "clipeval/demo/probe.py"}, opened  # demo: _pixels, a header


def test_a_probe_with_16_bit_grey_gets_a_new_fingerprint(tmp_path):
    """A run or cached array made while a 16-bit scan decoded as solid white must not be reused: a probe
    holding one is fingerprinted apart from the listing alone, while an ordinary probe keeps its
    fingerprint (so its runs keep their ids)."""
    import hashlib

    from clipeval.datasets.probe import load_probe

    def listing_only(folder: Path) -> str:
        digest = hashlib.sha256()
        for f in sorted(folder.iterdir()):
            st = f.resolve().stat()
            digest.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{folder.name}\0\n".encode())
        return digest.hexdigest()[:16]

    plain, scans = tmp_path / "plain", tmp_path / "scans"
    for folder in (plain, scans):
        folder.mkdir()
        Image.fromarray(U8[..., :3], "RGB").save(folder / "a.png")
    (scans / "b.png").write_bytes(png16(U16[..., 0], 0))
    assert load_probe([str(plain)]).fingerprint == listing_only(plain)
    assert load_probe([str(scans)]).fingerprint != listing_only(scans)
