"""One unreadable image never costs a run (issue 11, point 4): an image that passes the header check
but fails to decode (a truncated JPEG, a PNG whose image data stops short) is skipped and counted
during the pass; with --on-bad-image fail the pass stops with a message naming it."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

from clipeval.config import ConceptConfig, DissectConfig, ProbeConfig, SimilarityConfig, TargetConfig
from clipeval.datasets.probe import _check_image, load_rgb, thumbnail_jpeg
from clipeval.errors import ClipevalError
from clipeval.store import Store


def truncated_jpeg(src: Path, out: Path) -> Path:
    data = src.read_bytes() if src.suffix.lower() in (".jpg", ".jpeg") else None
    if data is None:
        import io

        buf = io.BytesIO()
        Image.open(src).convert("RGB").resize((96, 96)).save(buf, "JPEG", quality=90)
        data = buf.getvalue()
    out.write_bytes(data[: len(data) // 2])
    return out


def short_png(out: Path) -> Path:
    """A PNG with valid chunks and checksums whose compressed image data holds a few rows only."""
    w = h = 64
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, size=(h, 3 * w), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    data = zlib.compress(raw)[:300]  # the stream stops after a few rows

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    out.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )
    return out


@pytest.fixture
def broken_probe(probe_dir, tmp_path) -> Path:
    folder = tmp_path / "probe"
    folder.mkdir()
    good = sorted(p for p in probe_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:24]
    for i, p in enumerate(good):
        Image.open(p).convert("RGB").save(folder / f"img{i:02d}.png")
    bad = [truncated_jpeg(good[0], folder / "img90_truncated.jpg"), short_png(folder / "img91_short.png")]
    for b in bad:
        assert _check_image(b)[0] is None  # both pass the header check the listing does
    return folder


def config(folder: Path, on_bad_image: str = "skip") -> DissectConfig:
    return DissectConfig(
        target=TargetConfig("efficientnet_lite0"),
        layers=("classifier",),
        probe=ProbeConfig((str(folder),), on_bad_image),
        concepts=ConceptConfig("imagenet"),
        similarity=SimilarityConfig("soft_wpmi", (("top_k", 5.0),)),
        k=3,
    )


def test_images_that_fail_to_decode_are_skipped_and_counted(broken_probe, tmp_path):
    from clipeval.dissect import pipeline

    store = Store(tmp_path / "r.duckdb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_id = pipeline.dissect(config(broken_probe), store, cache_dir=tmp_path / "cache", progress=False)
    run = store.complete_run(run_id)
    assert run["n_images"] == 24 and run["n_skipped_images"] == 2
    assert any("did not decode" in str(w.message) and "img90_truncated" in str(w.message) for w in caught)
    paths = store.probe_images(run["probe_fingerprint"])["path"]
    assert len(paths) == 24 and not paths.str.contains("img9").any()
    assert store.neuron_images(run_id)["image_id"].max() < 24
    # a second run on the same files reads the cached arrays with the same images left out
    again = pipeline.dissect(config(broken_probe), store, cache_dir=tmp_path / "cache", progress=False, force=True)
    assert again == run_id and store.complete_run(run_id)["n_skipped_images"] == 2


def test_on_bad_image_fail_stops_with_the_file_named(broken_probe, tmp_path):
    from clipeval.datasets.probe import load_probe
    from clipeval.dissect.activations import collect

    probe = load_probe([str(broken_probe)], "fail")  # the header check passes
    with pytest.raises(ClipevalError, match=r"cannot decode probe image .*img9\d_"):
        collect(probe.images, on_bad_image="fail", progress=False)


def test_the_ray_engine_skips_and_counts_them_as_the_local_one_does(ray_cluster, broken_probe, tmp_path):
    from clipeval.compute.engine import Engine
    from clipeval.dissect import pipeline

    runs = {}
    for engine in ("local", "ray"):
        store = Store(tmp_path / f"{engine}.duckdb")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_id = pipeline.dissect(
                config(broken_probe),
                store,
                cache_dir=tmp_path / f"cache-{engine}",
                progress=False,
                engine=Engine(engine, workers=2),
            )
        assert any("did not decode" in str(w.message) and "img91_short" in str(w.message) for w in caught)
        run = store.complete_run(run_id)
        assert (run["n_images"], run["n_skipped_images"]) == (24, 2)
        fp = run["probe_fingerprint"]
        runs[engine] = (store.neurons(run_id), store.neuron_images(run_id), store.thumbnails(fp, range(24)))
        paths = store.probe_images(fp).set_index("image_id")["path"]
        assert not list((tmp_path / f"cache-{engine}" / "thumbnails").iterdir())  # the pass's file, used and gone
    (la, ia, ta), (lb, ib, tb) = runs["local"], runs["ray"]
    assert la["label"].tolist() == lb["label"].tolist()
    assert ia["image_id"].tolist() == ib["image_id"].tolist() and ib["image_id"].max() < 24
    # the workers wrote the thumbnails to the cache folder themselves: the same bytes, each its row's image
    assert len(tb) >= 10 and ta == tb
    assert all(t == thumbnail_jpeg(load_rgb(paths[i]), 128) for i, t in tb.items())


def test_the_ray_engine_stops_on_one_with_on_bad_image_fail(ray_cluster, broken_probe):
    from clipeval.compute import ray_map
    from clipeval.compute.engine import Engine
    from clipeval.datasets.probe import load_probe

    probe = load_probe([str(broken_probe)], "fail")
    with pytest.raises(ClipevalError, match=r"cannot decode probe image .*img9\d_"):
        ray_map.collect(Engine("ray", workers=2), probe.images, batch_size=8, progress=False, on_bad_image="fail")


@pytest.fixture
def extreme_probe(probe_dir, tmp_path) -> Path:
    """Six good images, two ~140-byte strips (60000x1, 1x60000) and a 116 KB 90-megapixel PNG: issue 25.7,
    where the 60000x1 strip crashed Resize with a MemoryError (256 x 15.36M pixels) under either setting."""
    from tests.test_decode import strip_png

    folder = tmp_path / "probe"
    folder.mkdir()
    for i, p in enumerate(sorted(probe_dir.rglob("*.png"))[:6]):
        Image.open(p).convert("RGB").save(folder / f"img{i}.png")
    for name, size in (("strip_wide", (60000, 1)), ("strip_tall", (1, 60000)), ("bomb", (10000, 9000))):
        (folder / f"{name}.png").write_bytes(strip_png(*size))
    return folder


def test_the_probe_pass_skips_and_counts_extreme_sizes_from_the_header(extreme_probe):
    from clipeval.datasets.probe import load_probe

    with pytest.warns(UserWarning, match="skipped 3 unreadable"):
        probe = load_probe([str(extreme_probe)], "skip")
    assert len(probe) == 6 and sorted(Path(p).name for p, _ in probe.skipped) == [
        "bomb.png",
        "strip_tall.png",
        "strip_wide.png",
    ]
    why = dict((Path(p).name, r) for p, r in probe.skipped)
    assert "aspect ratio 60,000:1 is beyond the limit of 20:1" in why["strip_wide.png"]
    assert "10000x9000 pixels is over the limit of 80,000,000 pixels" in why["bomb.png"]
    with pytest.raises(ClipevalError, match=r"3 unreadable file\(s\) .*strip_wide.png \(60000x1 pixels: aspect"):
        load_probe([str(extreme_probe)], "fail")


def cli_dissect(db: Path, folder: Path, on_bad_image: str) -> int:
    from clipeval.cli import main

    return main(
        [
            "--db",
            str(db),
            "dissect",
            "--layers",
            "classifier",
            "--probe",
            str(folder),
            "--concepts",
            "imagenet",
            "--k",
            "2",
            "--on-bad-image",
            on_bad_image,
            "--workers",
            "0",
        ]
    )


def stored_runs(db: Path):
    store = Store(db, read_only=True)
    try:
        return store.runs()
    finally:
        store.close()


def test_the_cli_skips_extreme_images_and_counts_them(extreme_probe, tmp_path):
    db = tmp_path / "r.duckdb"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli_dissect(db, extreme_probe, "skip") == 0
    run = stored_runs(db).iloc[0]
    assert (run["status"], run["n_images"], run["n_skipped_images"]) == ("complete", 6, 3)


def test_the_cli_refuses_extreme_images_with_on_bad_image_fail(extreme_probe, tmp_path, capsys):
    db = tmp_path / "r.duckdb"
    assert cli_dissect(db, extreme_probe, "fail") == 2
    err = capsys.readouterr().err
    assert "strip_wide.png (60000x1 pixels: aspect ratio 60,000:1 is beyond the limit of 20:1" in err
    assert "--on-bad-image skip" in err and "Traceback" not in err
    assert not db.exists() or stored_runs(db).empty  # no run recorded, not even a failed one
