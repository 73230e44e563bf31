"""Shared helpers: import the script from the repository root, and run it as a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "sac_continuous.py"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_script(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """python sac_continuous.py ARGS in cwd (so the default --output-dir runs/ lands there). One
    OpenMP thread: the machine may be shared, and one thread is as fast for these small networks."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def run(tmp_path):
    """run(*args) -> CompletedProcess of the script, run in this test's tmp_path."""
    return lambda *args, **kw: run_script(*args, cwd=tmp_path, **kw)


@pytest.fixture
def one_thread():
    """In-process torch work on one thread: on a shared 2-core machine, OpenMP threads waiting for a busy
    core can make small updates 100x slower. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
