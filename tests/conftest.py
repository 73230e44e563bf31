"""Shared helpers: run the script (a subprocess, or main() in-process), read what it wrote, compare checkpoints bit
for bit. One OpenMP thread everywhere: as fast for these small networks, and fair to a shared machine."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; the subprocesses inherit it
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["PYTHONUNBUFFERED"] = "1"
os.environ.pop("SAC_COMMAND", None)  # the Docker image's; resume commands here start with python sac_continuous.py

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from gpu_check import compare_trees  # noqa: E402

import sac_continuous as sac  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "sac_continuous.py"
BUFFER_FILES = sac.ReplayBuffer.ARRAYS
# a small Pendulum-v1 run (train from step 50, batches of 32) for the tests that signal, break or resume one
SMALL = ["--env-id", "Pendulum-v1", "--learning-starts", "50", "--batch-size", "32", "--buffer-size", "1000"]
SMALL += ["--eval-episodes", "1", "--device", "cpu", "--run-name", "r"]


# --- running the script ---


def start(cwd: Path, *flags: str, script: Path = SCRIPT, env: dict | None = None) -> subprocess.Popen:
    """Start `python script FLAGS` in cwd; its stdout and stderr go to files (no pipe to fill while we poll)."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**(env or os.environ), "PYTHONPATH": str(ROOT)}  # a wrapper script can import sac_continuous
    n = len(list(cwd.glob("stderr_*.txt")))
    with open(cwd / f"stdout_{n}.txt", "w") as out, open(cwd / f"stderr_{n}.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), *map(str, flags)], cwd=cwd, env=env, stdout=out, stderr=err
        )
    proc.out_path, proc.err_path = cwd / f"stdout_{n}.txt", cwd / f"stderr_{n}.txt"
    return proc


def finish(proc: subprocess.Popen, timeout: float = 600) -> SimpleNamespace:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{proc.args} did not finish in {timeout} s")
    return SimpleNamespace(code=code, out=proc.out_path.read_text(), err=proc.err_path.read_text())


def run_script(cwd: Path, *flags: str, **kw) -> SimpleNamespace:
    """The script as a real process: its exit code, stdout and stderr."""
    return finish(start(cwd, *flags, **kw))


def main_in(cwd: Path, *flags: str) -> SimpleNamespace:
    """sac_continuous.main() in this process (no interpreter start, no imports: seconds faster), in cwd."""
    cwd.mkdir(parents=True, exist_ok=True)
    old_cwd, argv = os.getcwd(), sys.argv
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out, err = io.StringIO(), io.StringIO()
    os.chdir(cwd)
    sys.argv = [str(SCRIPT), *map(str, flags)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
            sac.main()
    finally:
        os.chdir(old_cwd)
        sys.argv = argv
        for s, h in handlers.items():
            signal.signal(s, h)
    return SimpleNamespace(code=exit_info.value.code, out=out.getvalue(), err=err.getvalue())


def ok(res: SimpleNamespace) -> SimpleNamespace:
    assert res.code == 0, f"exit {res.code}:\n{res.err[-3000:]}"
    return res


def error_line(res: SimpleNamespace, *words: str, code: int = 2) -> str:
    """Exit `code` with one `error: ...` line naming every word, no traceback; a refusal (2): nothing else on stderr."""
    lines = [line for line in res.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert res.code == code and len(errors) == 1 and "Traceback" not in res.err, f"exit {res.code}:\n{res.err[-3000:]}"
    assert code != 2 or len(lines) == 1, res.err
    for word in words:
        assert str(word) in errors[0], f"{word!r} not in: {errors[0]}"
    return errors[0]


# --- reading a run directory ---


def step_name(step: int) -> str:
    return f"step_{step:012d}"


def latest_name(run_dir: Path) -> str | None:
    """The checkpoint a resume takes: the newest complete step_* (`checkpoints/latest` is only a hint)."""
    ckpt = sac.find_checkpoint(run_dir)
    return ckpt.name if ckpt else None


def latest_ckpt(run_dir: Path) -> Path:
    assert (name := latest_name(run_dir)), f"{run_dir} has no checkpoint"
    return run_dir / "checkpoints" / name


def load_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)


def load_buffer(ckpt: Path) -> dict[str, np.ndarray]:
    return {name: np.load(ckpt / "buffer" / f"{name}.npy", allow_pickle=False) for name in BUFFER_FILES}


def tree(root: Path) -> dict[str, str]:
    """Every path under root with a hash of its bytes: equal trees mean nothing was written or removed."""
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in root.rglob("*")}
    return {str(p.relative_to(root)): h for p, h in sorted(digest.items())}


def temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if p.name.startswith(".") or ".tmp" in p.name or ".part" in p.name]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard's own reading of a run directory (it applies a resumed run's purge events), every point."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# --- bit-for-bit comparison ---


def diff(a, b) -> list[str]:
    """Every difference between two loaded checkpoints or model files, bit for bit (benchmark/perf/gpu_check.py's
    comparator, which the GPU check uses too)."""
    return compare_trees(a, b)[1]


def assert_same_checkpoint(ckpt_a: Path, ckpt_b: Path, ignore: str = "/nothing/") -> None:
    """Every tensor and value of state.pt (but paths containing `ignore`) and every byte of the buffer files."""
    differences = [d for d in diff(load_state(ckpt_a), load_state(ckpt_b)) if ignore not in d.split(":")[0]]
    assert not differences, f"{ckpt_a} and {ckpt_b} differ:\n" + "\n".join(sorted(differences)[:40])
    for name in BUFFER_FILES:
        file_a, file_b = ckpt_a / "buffer" / f"{name}.npy", ckpt_b / "buffer" / f"{name}.npy"
        assert file_a.read_bytes() == file_b.read_bytes(), f"buffer/{name}.npy differs"


def assert_same_models(run_a: Path, run_b: Path) -> None:
    for name in ("model.pt", "best_model.pt"):
        a, b = (torch.load(r / name, map_location="cpu", weights_only=True) for r in (run_a, run_b))
        assert not diff(a, b), f"{name} differs"


# --- a process dying in the middle of a write: an audit hook stops the k-th file operation ---


class Crash(BaseException):
    """Stands for the process dying: nothing in the script may catch it."""


_CRASH = SimpleNamespace(armed=False, at=0, count=0, last=None, under="")
_OPS = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree")


def _audit(event: str, args: tuple) -> None:
    c = _CRASH
    if not c.armed or (event != "open" and event not in _OPS) or c.under not in str(args[0]):
        return
    if event == "open" and not args[2] & (os.O_WRONLY | os.O_RDWR):
        return
    c.count += 1
    if c.count == c.at:
        if c.last and os.path.isfile(c.last):  # the file written last is cut short, as by a crash mid-write
            os.truncate(c.last, os.path.getsize(c.last) // 2)
        raise Crash(f"{event} {args[0]} (file operation {c.count})")
    if event == "open":
        c.last = args[0]


sys.addaudithook(_audit)  # hooks cannot be removed: this one does nothing unless armed


@contextlib.contextmanager
def crash_at(k: int | None, under: str = "") -> SimpleNamespace:
    """Count the operations that change the disk (open for writing, mkdir, rename, remove, rmdir, rmtree) on
    paths containing `under`, and die (raise Crash) at the k-th; k None only counts."""
    _CRASH.__dict__.update(armed=True, at=k or 0, count=0, last=None, under=under)
    try:
        yield _CRASH
    finally:
        _CRASH.armed = False


# --- a small agent and batch for the network and update tests ---

OBS_DIM, ACT_DIM = 3, 2


def make_agent(device: str = "cpu", **kw) -> sac.SAC:
    torch.manual_seed(0)
    low, high = np.array([-1.0, 0.0], np.float32), np.array([1.0, 4.0], np.float32)
    agent = sac.SAC(OBS_DIM, low, high, sac.Args(**kw), torch.device(device))
    with torch.no_grad():  # targets unlike the online critics, so that using the wrong ones shows
        for p in (*agent.qf1_target.parameters(), *agent.qf2_target.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    sac.speed_up(agent, agent.args)  # --compile, --cudagraphs as the script applies them
    return agent


def make_batch(n: int = 32, seed: int = 0) -> tuple[np.ndarray, ...]:
    g = np.random.default_rng(seed)
    obs, next_obs = (g.normal(size=(n, OBS_DIM)).astype(np.float32) for _ in range(2))
    actions, rewards = g.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32), g.normal(size=n).astype(np.float32)
    return obs, actions, rewards, g.random(n) < 0.3, next_obs
