"""bench/bench_gpu.py, the prepared GPU benchmark, runs end to end on the CPU with --tiny (its numbers
mean nothing there) and leaves a complete JSON report."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_tiny_on_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_gpu

    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--tiny", "--device", "cpu", "--out", str(out), "--workdir", str(tmp_path / "w")]) == 0
    data = json.loads(out.read_text())
    assert data["tiny"] and data["placement"] == {"device": "cpu", "dtype": "float32"}
    a, b, c = (data["stages"][s] for s in "abc")
    assert not any("error" in s for s in (a, b, c)), data["stages"]
    assert a["dissect"]["images"] == bench_gpu.TINY["images"] and a["dissect"]["images_per_s"] > 0
    assert a["limit_forward_images_per_s"]["target"] > 0 and a["limit_cpu_decode_images_per_s"]["images_per_s"] > 0
    assert "gpu_decode_images_per_s" not in a  # only on a GPU
    assert b["cp_es"]["neurons"] == bench_gpu.TINY["neurons"] and b["cp_es"]["total_s"] > 0
    assert c["ours"]["pairs"] == bench_gpu.TINY["vqa_pairs"] and c["generate_baseline"]["ratio"] > 0
    assert all(s["stage_wall_s"] > 0 for s in (a, b, c)) and data["total_wall_s"] > 0


def test_bench_gpu_writes_json_after_each_stage_even_when_one_fails(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_gpu

    out = tmp_path / "gpu.json"

    def boom(*a, **k):
        assert json.loads(out.read_text())["stages"]["b"]["synthesize_jpegs_s"] >= 0  # already on disk
        raise RuntimeError("stage c broke")

    monkeypatch.setattr(bench_gpu, "stage_c", boom)
    monkeypatch.setattr(bench_gpu, "stage_b", lambda res, *a: res.put("b", "cp_es", {"total_s": 1.0}))
    assert bench_gpu.main(["--tiny", "--device", "cpu", "--stages", "b,c", "--out", str(out)]) == 1
    data = json.loads(out.read_text())
    assert data["stages"]["b"]["cp_es"] == {"total_s": 1.0} and "stage c broke" in data["stages"]["c"]["error"]
