"""benchmark/perf/gpu_check.py: its CPU mode (--device cpu --quick) runs every part, so the GPU check cannot rot
between the rare sessions that have a GPU; its resume comparison sees a one-bit difference."""

import json
import os
import subprocess
import sys
from pathlib import Path

import gpu_check  # benchmark/perf/ (pyproject.toml puts it on the path)
import pytest
import torch

CHECK = Path(gpu_check.__file__)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU mode; on a GPU run the check itself")
def test_quick_cpu_mode_runs_every_part(tmp_path):
    cmd = [sys.executable, str(CHECK), "--device", "cpu", "--quick", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["verdict"]) == set(gpu_check.PARTS) and all(report["verdict"].values())
    assert report["resume"]["resumed"] and report["resume"]["resume"]["identical"]
    assert report["resume"]["resume"]["tensors_compared"] > 50 and report["resume"]["rerun"]["identical"]
    assert report["speed"]["eager"]["ours_sps"] > 0 and report["speed"]["cudagraphs"]["skipped"] == "skipped: no CUDA"
    assert sorted(report["throughput"]["levels"]) == ["1", "2"] and report["throughput"]["recommended_jobs"] in (1, 2)
    md = (tmp_path / "gpu_check.md").read_text()
    assert md in r.stdout and "| eager | " in md and "## Throughput" in md and "FAIL" not in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there")
def test_cuda_without_cuda_is_one_line(tmp_path):
    cmd = [sys.executable, str(CHECK), "--device", "cuda", "--out", str(tmp_path / "o")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
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
    assert "/n: 1 vs 2" in gpu_check.compare_trees(a, b)[1]
