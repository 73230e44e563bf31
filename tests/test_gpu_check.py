"""benchmark/perf/gpu_check.py: its CPU mode (--device cpu --quick) runs every part, so the GPU check cannot rot
between the rare sessions that have a GPU; its resume comparison sees a one-bit difference."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "benchmark" / "perf" / "gpu_check.py"
sys.path.insert(0, str(CHECK.parent))

import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU mode; on a GPU run the check itself")
def test_quick_cpu_mode_runs_every_part(tmp_path):
    r = subprocess.run(
        [sys.executable, str(CHECK), "--device", "cpu", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", **_env()},
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert set(report["verdict"]) >= set(gpu_check.PARTS)
    assert report["resume"]["resume"]["identical"] and report["resume"]["resumed"]
    assert report["resume"]["resume"]["tensors_compared"] > 50
    speed = report["speed"]
    assert speed["eager"]["ours_sps"] > 0
    assert speed["cudagraphs"]["skipped"] == speed["compile+cudagraphs"]["skipped"] == "skipped: no CUDA"
    assert report["render"]["mean_brightness"] > 5 and (tmp_path / "humanoid_frame.png").stat().st_size > 1000
    assert report["learning"]["evals"] and report["learning"]["last_step"] == report["sizes"]["total"]
    assert report["throughput"]["recommended_jobs"] in (1, 2)
    md = (tmp_path / "gpu_check.md").read_text()
    assert md in r.stdout and "## Verdict" in md and "FAIL" not in md


def test_cuda_without_cuda_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is there")
    r = subprocess.run(
        [sys.executable, str(CHECK), "--device", "cuda", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--device cpu --quick" in r.stderr
    assert not (tmp_path / "o").exists()


def test_resume_comparison_sees_one_bit():
    a = {"modules": {"w": torch.ones(3)}, "n": 1, "args": {"output_dir": "x"}}
    b = {"modules": {"w": torch.ones(3)}, "n": 1, "args": {"output_dir": "y"}}  # where the run went: not compared
    assert gpu_check.compare_trees(a, b) == (1, [], 0.0)
    b["modules"]["w"][1] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    n, diffs, worst = gpu_check.compare_trees(a, b)
    assert diffs == ["/modules/w"] and 0 < worst < 1e-6
    b["n"] = 2
    assert "/n" in gpu_check.compare_trees(a, b)[1]


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"} | {"PYTHONUNBUFFERED": "1"}
