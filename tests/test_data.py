"""Probe sets and concept sets, including every bad input the issue names."""

import pytest
from PIL import Image

from clipeval.datasets.concepts import from_lines, load_concepts
from clipeval.datasets.probe import load_probe, load_rgb
from clipeval.errors import ClipevalError


def make_images(folder, n=3, cls="red"):
    (folder / cls).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / cls / f"{i}.png")
    return folder


def test_image_folder_labels_sources_and_merge(tmp_path):
    a = make_images(tmp_path / "a", 2, "red")
    b = make_images(tmp_path / "b", 3, "blue")
    probe = load_probe([str(a), str(b)])
    assert len(probe) == 5
    assert [i.label for i in probe.images] == ["red"] * 2 + ["blue"] * 3
    assert {i.source for i in probe.images} == {"a", "b"}
    assert load_probe([str(a), str(b)]).fingerprint == probe.fingerprint
    assert load_probe([str(b), str(a)]).fingerprint != probe.fingerprint


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    a = make_images(tmp_path / "a", 2)
    before = load_probe([str(a)]).fingerprint
    Image.new("RGB", (32, 32)).save(a / "red" / "0.png")
    assert load_probe([str(a)]).fingerprint != before


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipevalError, match="holds no images"):
        load_probe([str(tmp_path / "empty")])
    with pytest.raises(ClipevalError, match="does not exist"):
        load_probe([str(tmp_path / "nope")])
    with pytest.raises(ClipevalError, match="no probe folder"):
        load_probe([])


def test_unreadable_files_are_skipped_with_a_count_or_fail(tmp_path):
    a = make_images(tmp_path / "a", 2)
    (a / "red" / "broken.png").write_bytes(b"not an image at all")
    (a / "red" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        probe = load_probe([str(a)], on_bad_image="skip")
    assert len(probe) == 2 and len(probe.skipped) == 1
    with pytest.raises(ClipevalError, match="1 unreadable file"):
        load_probe([str(a)], on_bad_image="fail")


def test_manifest_gives_order_source_and_license(tmp_path):
    a = make_images(tmp_path / "a", 2)
    (a / "manifest.csv").write_text("path,source,license,label\nred/1.png,mine,CC0,apple\nred/0.png,mine,CC0,cherry\n")
    probe = load_probe([str(a)])
    assert [(i.label, i.license) for i in probe.images] == [("apple", "CC0"), ("cherry", "CC0")]
    (a / "manifest.csv").write_text("path,label\nred/1.png,apple\n")
    with pytest.raises(ClipevalError, match="lacks column"):
        load_probe([str(a)])


def test_transparent_images_go_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert load_rgb(str(tmp_path / "t.png")).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ClipevalError, match="cannot read"):
        load_rgb(str(tmp_path / "missing.png"))


def test_concept_file_trimmed_and_deduplicated(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("  dog \ncat\n\ncat\ndog\nbird\n")
    with pytest.warns(UserWarning, match="removed 2 duplicate"):
        cs = load_concepts(str(f))
    assert cs.concepts == ("dog", "cat", "bird")
    assert cs.content_hash != from_lines("x", ["dog", "cat"]).content_hash


@pytest.mark.parametrize("text, match", [("\n  \n", "empty"), ("cat\ncat\n cat\n", "single distinct")])
def test_empty_or_all_duplicate_concept_sets(tmp_path, text, match):
    f = tmp_path / "c.txt"
    f.write_text(text)
    with pytest.raises(ClipevalError, match=match):
        load_concepts(str(f))


def test_builtin_sets_and_unknown_source(tmp_path):
    words = load_concepts("common-3k")
    assert len(words) == 3000 and "dog" in words.concepts and all(w.islower() for w in words.concepts)
    assert len(load_concepts("common-20k")) == 20000
    imagenet = load_concepts("imagenet")
    assert "goldfish" in imagenet.concepts and len(imagenet) == 998  # two names repeat in open_clip's list
    with pytest.raises(ClipevalError, match="neither a file nor a built-in"):
        load_concepts("common-99x")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ClipevalError, match="not UTF-8"):
        load_concepts(str(bad))
