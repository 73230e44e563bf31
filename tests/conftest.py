"""Shared helpers: import the script from the repository root and run it as a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "sac_continuous.py"
sys.path.insert(0, str(ROOT))


def run_script(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def run(tmp_path):
    return lambda *args, **kw: run_script(*args, cwd=tmp_path, **kw)
