"""The demo probe set: a small build is a valid, deterministic probe folder, built atomically."""

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipeval.datasets.probe import load_probe
from clipeval.demo import probe as dp
from clipeval.errors import ClipevalError


def _rows(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _hashes(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return dp.build_demo_probe(tmp_path_factory.mktemp("a") / "probe", size="small", progress=False)


def test_small_build_is_a_loadable_probe_from_several_sources(small):
    info = json.loads((small / "BUILD_INFO.json").read_text())
    probe = load_probe([str(small)])
    assert not probe.skipped
    assert len(probe) == info["total"] == sum(info["counts"].values())
    assert 60 <= len(probe) <= 120
    assert info["size"] == "small" and "openclipart" not in info["counts"]
    sources = {im.source for im in probe.images}
    assert {"procedural", "scikit-image"} <= sources and len(sources) >= 2
    for row in _rows(small):
        assert row["source"] and row["license"], row
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", row["label"]), row
        assert row["path"].startswith(row["source"] + "/")


def test_procedural_labels_are_right(small):
    rows = [r for r in _rows(small) if r["source"] == "procedural"]
    labels = {r["label"] for r in rows}
    assert set(dp.PALETTE) | set(dp.SHAPES) | set(dp.TEXTURES) <= labels
    for r in rows:
        if r["label"] in dp.PALETTE:
            mean = np.asarray(Image.open(small / r["path"]).convert("RGB"), dtype=float).mean(axis=(0, 1))
            assert np.abs(mean - dp.PALETTE[r["label"]]).max() <= dp.COLOUR_JITTER, r


def test_shapes_sit_on_a_plain_background(small):
    for r in _rows(small):
        if r["source"] == "procedural" and r["label"] in dp.SHAPES:
            px = np.asarray(Image.open(small / r["path"]).convert("RGB"))
            corners = {tuple(px[0, 0]), tuple(px[0, -1]), tuple(px[-1, 0]), tuple(px[-1, -1])}
            assert len(corners) == 1, r  # the shape never reaches the corners
            assert (px != px[0, 0]).any(axis=2).mean() > 0.03, r  # and covers a visible part


def test_describe_sources_matches_the_build(small):
    info = json.loads((small / "BUILD_INFO.json").read_text())
    described = dp.describe_sources(small)
    assert all(d["license"] and d["count"] > 0 for d in described)
    per_source: dict[str, int] = {}
    for d in described:
        per_source[d["source"]] = per_source.get(d["source"], 0) + d["count"]
    assert per_source == info["counts"]


def test_build_is_deterministic(small, tmp_path):
    again = dp.build_demo_probe(tmp_path / "probe", size="small", progress=False)
    assert (again / "manifest.csv").read_bytes() == (small / "manifest.csv").read_bytes()
    assert _hashes(again) == _hashes(small)


def test_complete_build_is_reused(small, monkeypatch):
    before = _hashes(small)
    monkeypatch.setattr(dp, "_collect", lambda *a, **k: pytest.fail("rebuilt a complete build"))
    assert dp.build_demo_probe(small, size="small", progress=False) == small
    assert _hashes(small) == before


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    save, calls = dp._save, []

    def failing_save(image, path):
        calls.append(path)
        if len(calls) > 20:
            raise KeyboardInterrupt
        save(image, path)

    monkeypatch.setattr(dp, "_save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        dp.build_demo_probe(tmp_path / "probe", size="small", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ClipevalError, match="not a demo probe build"):
        dp.build_demo_probe(tmp_path, size="small", progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_full_without_openclipart_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(dp, "SYSTEM_OPENCLIPART", tmp_path / "absent")
    monkeypatch.setattr(dp, "_run", lambda cmd, cwd: (False, "network unreachable"))
    with pytest.raises(ClipevalError, match="apt-get download openclipart-png"):
        dp.build_demo_probe(tmp_path / "probe", size="full", assets_dir=tmp_path / "assets", progress=False)
    assert not (tmp_path / "probe").exists()


@pytest.mark.parametrize(
    "rel, label",
    [
        ("animals/mammals/cat_sitting_01.png", "cat sitting"),
        ("animals/mammals/bears/orso_architetto_francesc_01.png", "orso"),
        ("science/medicine/medicina_dottore_archite_01.png", "medicina dottore"),
        ("signs_and_symbols/clocks/clock_michael_breuer_02.png", "clock"),
        ("shapes/stars/star_94pt17step.png", "star"),
        ("signs_and_symbols/flags/europe/cyprus.png", "cyprus flag"),
        ("recreation/games/cards/white/white_c_6.png", "playing card"),
        ("food/vegetables/99_02.png", "vegetables"),
    ],
)
def test_openclipart_label(rel, label):
    assert dp.openclipart_label(rel) == label


def test_openclipart_selection_spreads_over_categories(tmp_path, monkeypatch):
    root = tmp_path / "assets" / "openclipart" / dp.OPENCLIPART_SUBPATH
    sizes = {"animals/mammals": 9, "food": 2, "shapes/stars": 30}
    for category, n in sizes.items():
        (root / category).mkdir(parents=True)
        for i in range(n):
            im = Image.new("RGBA", (600, 300), (0, 0, 0, 0))
            im.paste((200, 0, 0, 255), (0, 0, 100, 100))
            im.save(root / category / f"thing_{i:02d}.png")
    (root / "food" / "copy.png").symlink_to(root / "shapes/stars/thing_00.png")
    Image.new("RGBA", (3000, 100), (0, 0, 0, 255)).save(root / "food" / "divider.png")  # 30:1, refused by load_rgb
    monkeypatch.setattr(dp, "OPENCLIPART_TARGET", 20)
    items = dp._openclipart_items("full", tmp_path / "assets")
    per_category = {c: sum(i.rel.startswith(f"openclipart/{c}/") for i in items) for c in sizes}
    assert per_category == {"animals/mammals": 9, "food": 2, "shapes/stars": 9}  # quota 9 reaches 20
    assert all(i.license == dp.OPENCLIPART_LICENSE and i.label == "thing" for i in items)  # not the divider
    image = items[0].make()
    assert max(image.size) == dp.CLIPART_MAX_SIDE and image.mode == "RGB"
    assert image.getpixel((image.width - 1, image.height - 1)) == (255, 255, 255)  # transparency -> white
