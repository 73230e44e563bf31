"""Checkpoints and resuming: exact resume, kill -9, SIGTERM/SIGINT, crashes inside a checkpoint write,
corrupt and foreign checkpoints, argument merging on resume, log_alpha after a restore, extending a
finished run, and the NaN guard.

Self-contained: no conftest fixtures. Training runs are real subprocesses of sac_continuous.py on the
CPU (one thread each, so two of them fit a 2-core machine), kept small: Pendulum-v1 and Hopper-v5, a few
hundred random steps, then a few hundred updates with batches of 64. Refusals and argument merging
call main() in this process; a crash inside a checkpoint write is simulated in this process too.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sac_continuous.py"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import sac_continuous as sac  # noqa: E402

RUN = "r"  # every run here is runs/r under its own working directory
LEARNING_STARTS, MID, TOTAL = 300, 477, 700  # MID: the checkpoint step, mid-episode for both envs
# buffer 400 < MID: the ring has wrapped around before MID, so saving and loading a wrapped buffer is covered
EXACT_FLAGS = [
    "--learning-starts",
    str(LEARNING_STARTS),
    "--batch-size",
    "64",
    "--buffer-size",
    "400",
    "--eval-frequency",
    "0",
    "--eval-episodes",
    "1",
    "--checkpoint-frequency",
    str(MID),
    "--log-frequency",
    "10",
    "--device",
    "cpu",
    "--run-name",
    RUN,
]
BASE_FLAGS = ["--device", "cpu", "--eval-frequency", "0", "--eval-episodes", "1", "--run-name", RUN]
# a small Pendulum-v1 run for the tests that need a process to signal, break or fill the disk under
SMALL_PENDULUM = ["--env-id", "Pendulum-v1", "--learning-starts", "50", "--batch-size", "32", "--buffer-size", "1000"]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def child_env() -> dict:
    # one BLAS/OpenMP thread: the same arithmetic in every run, and two runs fit a 2-core machine
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(cwd: Path, *flags: str, script: Path = SCRIPT, env: dict | None = None) -> subprocess.Popen:
    """Start a run; its stdout/stderr go to files in cwd (no pipe to fill up while we poll)."""
    cwd.mkdir(parents=True, exist_ok=True)
    n = len(list(cwd.glob("stderr_*.txt")))
    with open(cwd / f"stdout_{n}.txt", "w") as out, open(cwd / f"stderr_{n}.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), *flags], cwd=cwd, env=env or child_env(), stdout=out, stderr=err
        )
    proc.stderr_path = cwd / f"stderr_{n}.txt"
    return proc


def finish(proc: subprocess.Popen, timeout: float = 400) -> SimpleNamespace:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"run did not finish in {timeout}s: {proc.args}")
    return SimpleNamespace(returncode=rc, stderr=proc.stderr_path.read_text(), args=proc.args)


def run(cwd: Path, *flags: str, **kw) -> SimpleNamespace:
    return finish(start(cwd, *flags, **kw))


def assert_ok(res: SimpleNamespace) -> None:
    assert res.returncode == 0, f"{res.args} exited {res.returncode}:\n{res.stderr[-3000:]}"


def wait_until(predicate, proc: subprocess.Popen, what: str, timeout: float = 300, interval: float = 0.02) -> None:
    """Poll until predicate() holds; fail if the process ends first. (A safety timeout, not a timing test.)"""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"run exited ({proc.returncode}) before {what}:\n{proc.stderr_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


def latest_name(run_dir: Path) -> str | None:
    try:
        return (run_dir / "checkpoints" / "latest").read_text().strip()
    except FileNotFoundError:
        return None


def step_name(step: int) -> str:
    return f"step_{step:012d}"


def latest_ckpt(run_dir: Path) -> Path:
    name = latest_name(run_dir)
    assert name, f"{run_dir} has no checkpoints/latest"
    return run_dir / "checkpoints" / name


def load_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)


def assert_complete_checkpoint(ckpt: Path) -> dict:
    """The checkpoint loads the way the script loads it: state.pt with weights_only=True, and every buffer
    file with numpy (no pickle) in the shape the state's buffer metadata says."""
    state = load_state(ckpt)
    assert state["format"] == sac.CHECKPOINT_FORMAT
    n_envs, slots = state["args"]["num_envs"], state["buffer"]["slots"]
    dims = {"obs": (state["obs_dim"],), "actions": (state["act_dim"],)}
    for name in sac.ReplayBuffer.ARRAYS:
        arr = np.load(ckpt / "buffer" / f"{name}.npy", allow_pickle=False)
        assert arr.shape == (n_envs, slots, *dims.get(name, ())), name
    return state


def tree(root: Path) -> dict[str, str]:
    """Every path under root with a hash of its bytes: equal trees mean nothing was written."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard's own reading of a run directory: EventAccumulator applies the purge events that a
    resumed run writes, as TensorBoard does. Keeps every point (no reservoir sampling)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def raw_scalar_steps(event_file: Path, tag: str) -> list[int]:
    """The steps one event file holds for a tag, without any purging."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [e.step for e in EventFileLoader(str(event_file)).Load() for v in e.summary.value if v.tag == tag]


def assert_no_duplicate_points(curves: dict) -> None:
    for tag, points in curves.items():
        steps = [s for s, _ in points]
        assert all(a < b for a, b in zip(steps, steps[1:])), f"{tag}: steps not strictly increasing: {steps}"


# --- bit-for-bit comparison of two checkpoints ---


def _mjdata_fields(blob: bytes) -> dict:
    import mujoco  # noqa: F401  (the pickle names mujoco._structs.MjData)

    data = pickle.loads(blob)  # our own test files
    fields = {}
    for name in dir(data):
        if name.startswith("_") or name == "timer":  # timer: MuJoCo's wall-clock profiling
            continue
        value = getattr(data, name)
        if isinstance(value, np.ndarray):
            fields[name] = (value.dtype.str, value.shape, value.tobytes())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            fields[name] = value
    assert "qpos" in fields and "qvel" in fields
    return fields


def diff(a, b, path: str = "", ignore=lambda path: False) -> list[str]:
    """Every difference between two loaded checkpoints, bit for bit (floats and tensors by their bytes)."""
    if ignore(path):
        return []
    if type(a) is not type(b):
        return [f"{path}: {type(a).__name__} vs {type(b).__name__}"]
    if isinstance(a, dict):
        out = [f"{path}: keys {sorted(map(str, a.keys() ^ b.keys()))} only on one side"] if a.keys() != b.keys() else []
        for k in a.keys() & b.keys():
            out += diff(a[k], b[k], f"{path}/{k}", ignore)
        return out
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}/{i}", ignore)]
    if isinstance(a, torch.Tensor):
        x, y = a.detach().cpu(), b.detach().cpu()
        if (
            x.dtype != y.dtype
            or x.shape != y.shape
            or x.contiguous().numpy().tobytes() != y.contiguous().numpy().tobytes()
        ):
            return [f"{path}: tensors differ"]
        return []
    if isinstance(a, float):
        return [] if struct.pack("<d", a) == struct.pack("<d", b) else [f"{path}: {a!r} vs {b!r}"]
    if isinstance(a, bytes) and path.endswith("/mjdata"):
        # the pickled MjData also holds MuJoCo's wall-clock timers: compare the simulation state itself
        fa, fb = _mjdata_fields(a), _mjdata_fields(b)
        return [f"{path}.{k}" for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def wall_clock(path: str) -> bool:
    """The only state that legitimately differs between two runs: RecordEpisodeStatistics' episode start
    time (time.perf_counter) and how the run was started (--resume)."""
    return path == "/args/resume" or (path.startswith("/envs/") and path.endswith("/episode_start_time"))


def assert_same_checkpoint(ckpt_a: Path, ckpt_b: Path, ignore=wall_clock) -> None:
    a, b = load_state(ckpt_a), load_state(ckpt_b)
    for key in ("modules", "optimizers", "log_alpha", "n_updates", "rng", "buffer", "envs", "obs"):
        assert key in a, f"checkpoint has no {key}: the comparison would not cover it"
    assert a["n_updates"] > 0 and "a_optimizer" in a["optimizers"]
    differences = diff(a, b, ignore=ignore)
    assert not differences, f"{ckpt_a} and {ckpt_b} differ:\n" + "\n".join(sorted(differences)[:40])
    files_a = sorted(p.name for p in (ckpt_a / "buffer").iterdir())
    assert files_a == sorted(p.name for p in (ckpt_b / "buffer").iterdir())
    assert len(files_a) == len(sac.ReplayBuffer.ARRAYS)
    for name in files_a:
        assert (ckpt_a / "buffer" / name).read_bytes() == (ckpt_b / "buffer" / name).read_bytes(), (
            f"buffer/{name} differs"
        )


def assert_same_model_file(path_a: Path, path_b: Path) -> None:
    a = torch.load(path_a, map_location="cpu", weights_only=True)
    b = torch.load(path_b, map_location="cpu", weights_only=True)
    assert not diff(a, b), f"{path_a} and {path_b} differ"


def assert_same_curves(run_a: Path, run_b: Path, skip=("charts/SPS",)) -> None:
    """Same tags, same steps, same values (float32 as logged): the resumed curve is the uninterrupted one."""
    ca, cb = scalars(run_a), scalars(run_b)
    assert ca.keys() == cb.keys()
    assert "losses/qf_loss" in ca and "charts/episodic_return" in ca
    for tag in ca:
        if tag in skip:  # wall-clock speed: same steps, other values
            assert [s for s, _ in ca[tag]] == [s for s, _ in cb[tag]], tag
        else:
            assert ca[tag] == cb[tag], f"TensorBoard curve {tag} differs"


# ----------------------------------------------------------------------------------------------
# shared runs: per env an uninterrupted run, and the same run stopped at MID (finished) and extended
# ----------------------------------------------------------------------------------------------

_EXACT = {}


@pytest.fixture(scope="module")
def exact_runs(tmp_path_factory):
    def get(env_id: str) -> SimpleNamespace:
        if env_id not in _EXACT:
            base = tmp_path_factory.mktemp(env_id)
            flags = ["--env-id", env_id, *EXACT_FLAGS]
            # the two first runs are independent: run them side by side
            ref = start(base / "ref", *flags, "--total-timesteps", str(TOTAL))
            first = start(base / "split", *flags, "--total-timesteps", str(MID), "--resume", "auto")
            ref, first = finish(ref), finish(first)
            assert_ok(ref)
            assert_ok(first)
            split_run = base / "split" / "runs" / RUN
            mid_copy = base / "mid_copy"
            shutil.copytree(split_run, mid_copy)  # the finished MID run, before it is extended
            second = run(base / "split", *flags, "--total-timesteps", str(TOTAL), "--resume", "auto")
            assert_ok(second)
            _EXACT[env_id] = SimpleNamespace(
                flags=flags,
                ref=base / "ref" / "runs" / RUN,
                split=split_run,
                mid_copy=mid_copy,
                first=first,
                second=second,
                base=base,
            )
        return _EXACT[env_id]

    yield get
    _EXACT.clear()


def time_limit_steps(env_state: dict) -> int:
    (steps,) = [layer["_elapsed_steps"] for layer in env_state["layers"] if "_elapsed_steps" in layer]
    return steps


# ----------------------------------------------------------------------------------------------
# 1. bit-for-bit resume, and 7. extending a finished run
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Hopper-v5"])
def test_stop_and_resume_is_bitwise_identical(exact_runs, env_id):
    """Run to MID, then `--resume auto` to TOTAL == one uninterrupted run to TOTAL: every weight, target,
    Adam state, log_alpha, counter, RNG state, env state and buffer byte of the final checkpoint."""
    r = exact_runs(env_id)
    mid = load_state(latest_ckpt(r.mid_copy))
    assert mid["global_step"] == MID
    assert time_limit_steps(mid["envs"][0]) > 0, "MID should fall inside an episode"
    assert mid["buffer"]["written"][0] > mid["buffer"]["slots"], "the buffer should have wrapped before MID"
    final_ref, final_split = latest_ckpt(r.ref), latest_ckpt(r.split)
    assert final_ref.name == final_split.name == step_name(TOTAL)
    # the stopped run evaluated once more (at MID, its end), so its best eval return may differ
    assert_same_checkpoint(final_ref, final_split, ignore=lambda p: wall_clock(p) or p == "/best_eval")
    assert_same_model_file(r.ref / "model.pt", r.split / "model.pt")


def test_extending_a_finished_run_continues_from_its_step(exact_runs):
    """A run that finished at MID, resumed with a larger --total-timesteps, continues from MID (it does not
    start over) and ends at the new total; TensorBoard holds one curve without doubled points."""
    r = exact_runs("Pendulum-v1")
    assert f"at step {MID}" in r.second.stderr and "resumed" in r.second.stderr
    final = load_state(latest_ckpt(r.split))
    assert final["global_step"] == TOTAL and final["args"]["total_timesteps"] == TOTAL
    assert final["n_updates"] == TOTAL - LEARNING_STARTS
    events = sorted(r.split.glob("events.out.tfevents.*"))
    assert len(events) == 2
    # the resumed process logged only what came after MID (a fresh start would log from step 1)
    resumed_steps = raw_scalar_steps(events[1], "losses/qf_loss") + raw_scalar_steps(
        events[1], "charts/episodic_return"
    )
    assert resumed_steps and min(resumed_steps) > MID
    curves = scalars(r.split)
    assert_no_duplicate_points(curves)
    assert [s for s, _ in curves["eval/mean_return"]] == [MID, TOTAL]
    # losses continue on the same 10-update grid, with nothing missing around MID
    assert [s for s, _ in curves["losses/qf_loss"]] == list(range(LEARNING_STARTS + 10, TOTAL + 1, 10))
    ref_curves = scalars(r.ref)
    for tag in ("losses/qf_loss", "losses/alpha", "charts/episodic_return"):
        assert curves[tag] == ref_curves[tag], tag


def test_last_checkpoint_includes_the_final_evaluation(exact_runs):
    """The stopped run ended at MID, a multiple of its --checkpoint-frequency, with an evaluation at MID
    (its first). Its last checkpoint must know that evaluation's return as the best one so far."""
    r = exact_runs("Pendulum-v1")
    (logged,) = [value for step, value in scalars(r.mid_copy)["eval/mean_return"] if step == MID]
    best_eval = load_state(latest_ckpt(r.mid_copy))["best_eval"]
    assert best_eval == pytest.approx(logged, rel=1e-6), "best_eval misses the evaluation at the end of the run"


def test_resuming_a_finished_run_at_its_total_changes_nothing(exact_runs, tmp_path, in_process_main):
    r = exact_runs("Pendulum-v1")
    run_dir = tmp_path / "runs" / RUN
    shutil.copytree(r.mid_copy, run_dir)
    before = tree(run_dir)
    assert in_process_main(*r.flags, "--total-timesteps", str(MID), "--resume", "auto") == 0
    assert tree(run_dir) == before


# ----------------------------------------------------------------------------------------------
# 3. SIGTERM / SIGINT at an arbitrary step, then resume: still bit-for-bit
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_id,sig",
    [("Hopper-v5", signal.SIGTERM), ("Pendulum-v1", signal.SIGINT)],
    ids=["SIGTERM-Hopper", "SIGINT-Pendulum"],
)
def test_signal_writes_checkpoint_and_resume_is_bitwise_identical(exact_runs, tmp_path, env_id, sig):
    r = exact_runs(env_id)
    proc = start(tmp_path, *r.flags, "--total-timesteps", str(TOTAL))
    run_dir = tmp_path / "runs" / RUN
    wait_until(lambda: latest_name(run_dir) == step_name(MID), proc, "the periodic checkpoint")
    proc.send_signal(sig)  # learning started at 300; the run is now somewhere after MID
    res = finish(proc)
    assert res.returncode == sac.EXIT_INTERRUPTED == 75, res.stderr
    assert "Traceback" not in res.stderr
    hint = re.search(r"Resume with: .*--resume (\S+)", res.stderr)
    assert hint, f"no resume hint on stderr:\n{res.stderr}"
    # the hint repeats what the checkpoint does not restore: this run's total (the default would be 1M)
    assert f"--total-timesteps {TOTAL}" in res.stderr.split("Resume with:")[1], res.stderr
    stopped = latest_ckpt(run_dir)
    state = assert_complete_checkpoint(stopped)
    # MID itself when the signal lands while the periodic checkpoint at MID is still being finished
    assert MID <= state["global_step"] < TOTAL
    assert stopped.name == step_name(state["global_step"])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", stopped.name]
    # follow the hint (plus this run's own flags, as the README says --total-timesteps comes from the command line)
    resumed = run(tmp_path, "--resume", hint.group(1), *r.flags, "--total-timesteps", str(TOTAL))
    assert_ok(resumed)
    assert f"at step {state['global_step']}" in resumed.stderr
    assert_same_checkpoint(latest_ckpt(r.ref), latest_ckpt(run_dir))
    assert_same_model_file(r.ref / "model.pt", run_dir / "model.pt")
    assert_same_model_file(r.ref / "best_model.pt", run_dir / "best_model.pt")
    # TensorBoard: the stopped and resumed processes together give exactly the uninterrupted curves
    assert_same_curves(r.ref, run_dir)


# ----------------------------------------------------------------------------------------------
# 2. kill -9 after a checkpoint, or before the first; a second Ctrl-C
# ----------------------------------------------------------------------------------------------


def event_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.glob("events.out.tfevents.*"))


def test_sigkill_after_checkpoint_then_resume_auto_is_bitwise_identical(exact_runs, tmp_path):
    """kill -9 some steps after the periodic checkpoint at MID (the killed process has logged past it);
    rerunning the same `--resume auto` command ends equal, bit for bit, to the uninterrupted run, and
    TensorBoard shows exactly its curves: the killed process's points after MID hidden, none lost."""
    r = exact_runs("Pendulum-v1")
    flags = [*r.flags, "--total-timesteps", str(TOTAL), "--resume", "auto"]
    run_dir = tmp_path / "runs" / RUN
    proc = start(tmp_path, *flags)
    wait_until(lambda: latest_name(run_dir) == step_name(MID), proc, "the checkpoint at MID")
    size_at_ckpt = event_bytes(run_dir)
    # logging past the checkpoint has reached the event file (a safety timeout, not a timing test)
    wait_until(lambda: event_bytes(run_dir) > size_at_ckpt + 2000, proc, "events after the checkpoint")
    proc.kill()
    proc.wait()
    assert assert_complete_checkpoint(latest_ckpt(run_dir))["global_step"] == MID
    (killed_events,) = run_dir.glob("events.out.tfevents.*")
    assert max(raw_scalar_steps(killed_events, "losses/qf_loss")) > MID, "precondition: points past the checkpoint"

    res = run(tmp_path, *flags)
    assert_ok(res)
    assert f"at step {MID}" in res.stderr
    assert_same_checkpoint(latest_ckpt(r.ref), latest_ckpt(run_dir))
    assert_same_model_file(r.ref / "model.pt", run_dir / "model.pt")
    assert_same_model_file(r.ref / "best_model.pt", run_dir / "best_model.pt")
    assert_same_curves(r.ref, run_dir)


def test_sigkill_before_first_checkpoint_same_command_restarts(tmp_path):
    """README: '--resume auto --run-name NAME continues runs/NAME if it has a checkpoint and starts it
    otherwise. A scheduler can simply re-run the same command.' The killed attempt's TensorBoard points
    are hidden by the restart (no step shows twice) and the restarted run reaches the total."""
    total = 10000
    flags = [
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        str(total),
        "--learning-starts",
        str(total),
        "--checkpoint-frequency",
        "100000",
        "--resume",
        "auto",
        *BASE_FLAGS,
    ]
    run_dir = tmp_path / "runs" / RUN
    proc = start(tmp_path, *flags)

    def logged_episodes() -> bool:  # the event file may end in a partly written record: retry then
        try:
            return any(raw_scalar_steps(f, "charts/episodic_return") for f in run_dir.glob("events.out.tfevents.*"))
        except Exception:
            return False

    wait_until(logged_episodes, proc, "episode points in the event file", interval=0.05)
    proc.kill()
    proc.wait()
    assert latest_name(run_dir) is None
    (killed_events,) = run_dir.glob("events.out.tfevents.*")
    killed_steps = raw_scalar_steps(killed_events, "charts/episodic_return")
    assert killed_steps and max(killed_steps) < total, "precondition: the killed attempt logged some episodes"

    res = run(tmp_path, *flags)
    assert_ok(res)
    assert "resumed" not in res.stderr
    assert load_state(latest_ckpt(run_dir))["global_step"] == total
    curves = scalars(run_dir)
    assert_no_duplicate_points(curves)
    assert [s for s, _ in curves["charts/episodic_return"]] == list(range(200, total + 1, 200))


SECOND_SIGINT_WRAPPER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import sac_continuous as sac

original = sac.SAC.update

def update(self, batch):  # the 5th update stops (sleeps) until a signal ends the process
    if self.n_updates == 5:
        Path("in_update").write_text("")
        time.sleep(600)
    return original(self, batch)

sac.SAC.update = update
sys.argv[0] = sac.__file__
sac.main()
"""


def test_second_ctrl_c_exits_130_at_once(tmp_path):
    """A first SIGINT asks for a checkpoint after the current step; a second one, while that step is still
    running (here held inside an update), exits 130 at once, without the checkpoint."""
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(SECOND_SIGINT_WRAPPER.format(repo=str(REPO)))
    flags = [*SMALL_PENDULUM, "--total-timesteps", "1000", "--checkpoint-frequency", "500", *BASE_FLAGS]
    proc = start(tmp_path, *flags, script=wrapper)
    wait_until(lambda: (tmp_path / "in_update").exists(), proc, "the held update")
    proc.send_signal(signal.SIGINT)
    wait_until(lambda: "finishing this step" in proc.stderr_path.read_text(), proc, "the first SIGINT's message")
    proc.send_signal(signal.SIGINT)
    res = finish(proc, timeout=60)
    assert res.returncode == sac.EXIT_ABORTED == 130, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "runs" / RUN / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------
# the write itself: a crash at every filesystem operation of save_checkpoint (in-process)
# ----------------------------------------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: nothing in save_checkpoint may catch it."""


def _small_buffer(fill: int) -> sac.ReplayBuffer:
    rb = sac.ReplayBuffer(64, 1, 3, 1, seed=0)
    rng = np.random.default_rng(fill)
    rb.start(rng.standard_normal((1, 3), dtype=np.float32))
    for _ in range(fill):
        done = rng.random(1) < 0.1
        rb.add(
            rng.standard_normal((1, 1), dtype=np.float32),
            rng.standard_normal(1).astype(np.float32),
            done,
            rng.standard_normal((1, 3), dtype=np.float32),
            done,
            rng.standard_normal((1, 3), dtype=np.float32),
        )
    return rb


def _save(run_dir: Path, step: int) -> None:
    state = {"format": sac.CHECKPOINT_FORMAT, "global_step": step, "weights": torch.full((1000,), float(step))}
    run_dir.mkdir(parents=True, exist_ok=True)
    sac.save_checkpoint(run_dir, state, _small_buffer(step % 60))


def _check_loadable(run_dir: Path, allowed_steps: set[int]) -> int:
    ckpt = sac.find_checkpoint(run_dir)
    assert ckpt is not None and ckpt.is_dir(), "no checkpoint to resume from"
    state = load_state(ckpt)
    step = state["global_step"]
    assert step in allowed_steps and ckpt.name == step_name(step)
    assert torch.equal(state["weights"], torch.full((1000,), float(step)))
    rb = sac.ReplayBuffer(64, 1, 3, 1, seed=1)
    rb.load(ckpt / "buffer", state["buffer"])
    expected = _small_buffer(step % 60)
    for name in sac.ReplayBuffer.ARRAYS:
        assert np.array_equal(getattr(rb, name), getattr(expected, name)), name
    return step


class CrashAt:
    """Counts the filesystem operations that change what is on disk (mkdir, replace/rename, unlink, rmdir,
    fsync) and dies at the k-th; a file being fsynced is cut to half its length first (a write cut short)."""

    def __init__(self, monkeypatch, k: int | None):
        self.k, self.count = k, 0
        for name in ("mkdir", "replace", "rename", "unlink", "rmdir", "fsync"):
            original = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def op(*args, **kwargs):
            self.count += 1
            if self.count == self.k:
                if name == "fsync" and os.path.isfile(f"/proc/self/fd/{args[0]}"):
                    os.ftruncate(args[0], os.fstat(args[0]).st_size // 2)
                raise Crash(f"{name} #{self.count}")
            return original(*args, **kwargs)

        return op


def _count_ops(tmp_path, monkeypatch, first: int, second: int) -> int:
    _save(tmp_path / "count", first)
    with monkeypatch.context() as m:
        counter = CrashAt(m, None)
        _save(tmp_path / "count", second)
    assert counter.count > 8
    return counter.count


def test_every_crash_point_of_a_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    """Checkpoint 100 exists; writing checkpoint 200 dies at each filesystem operation in turn. After every
    one, `latest` resolves to a complete checkpoint (100 or 200, with its own buffer), and the next write
    cleans up what the crash left."""
    n_ops = _count_ops(tmp_path, monkeypatch, 100, 200)
    for k in range(1, n_ops + 1):
        run_dir = tmp_path / f"crash_{k}"
        _save(run_dir, 100)
        with monkeypatch.context() as m:
            CrashAt(m, k)
            with pytest.raises(Crash):
                _save(run_dir, 200)
        _check_loadable(run_dir, {100, 200})
        _save(run_dir, 300)
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", step_name(300)], k
        assert _check_loadable(run_dir, {300}) == 300


def test_saving_the_same_step_again_touches_nothing(tmp_path, monkeypatch):
    """A run can save one step twice (a periodic checkpoint, then the one at exit or on a signal). `latest`
    already names that step, so the second save must not touch the disk: deleting and rewriting it would
    leave a moment in which `latest` names a missing directory."""
    run_dir = tmp_path / "same"
    _save(run_dir, 100)
    state, rb = {"format": sac.CHECKPOINT_FORMAT, "global_step": 100}, _small_buffer(7)
    with monkeypatch.context() as m:
        counter = CrashAt(m, None)
        sac.save_checkpoint(run_dir, state, rb)
    assert counter.count == 0
    assert _check_loadable(run_dir, {100}) == 100


# ----------------------------------------------------------------------------------------------
# 4./5. refused checkpoints and arguments: exit 2, one line, nothing written
# ----------------------------------------------------------------------------------------------

SMALL_TOTAL = 200
SMALL_FLAGS = [
    "--env-id",
    "Pendulum-v1",
    "--learning-starts",
    "100",
    "--batch-size",
    "32",
    "--buffer-size",
    "1000",
    "--checkpoint-frequency",
    str(SMALL_TOTAL),
    "--alpha",
    "0.5",
    "--gamma",
    "0.95",
    *BASE_FLAGS,
]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A finished 200-step Pendulum run (100 updates) trained with --alpha 0.5 --gamma 0.95; copy before use."""
    cwd = tmp_path_factory.mktemp("small")
    assert_ok(run(cwd, *SMALL_FLAGS, "--total-timesteps", str(SMALL_TOTAL)))
    return cwd / "runs" / RUN


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _ckpt(run_dir: Path) -> Path:
    return latest_ckpt(run_dir)


def _truncate(path: Path, size) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: size(len(data))])


def _edit_state(run_dir: Path, edit) -> None:
    path = _ckpt(run_dir) / "state.pt"
    state = load_state(_ckpt(run_dir))
    edit(state)
    torch.save(state, path)


def _wrong_shape_actions(run_dir: Path) -> None:
    path = _ckpt(run_dir) / "buffer" / "actions.npy"
    np.save(path, np.zeros((1, 5, 2), dtype=np.float32))


def _evil_mjdata(state: dict) -> None:
    state["envs"][0]["mjdata"] = pickle.dumps(Evil())


CORRUPTIONS = {  # name: (change the copied run, what to pass to --resume relative to the run dir)
    "state_truncated_to_half": (lambda d: _truncate(_ckpt(d) / "state.pt", lambda n: n // 2), "run"),
    "state_empty": (lambda d: _truncate(_ckpt(d) / "state.pt", lambda n: 0), "step"),
    "state_random_bytes": (
        lambda d: (_ckpt(d) / "state.pt").write_bytes(
            np.random.default_rng(0).bytes((_ckpt(d) / "state.pt").stat().st_size)
        ),
        "run",
    ),
    "state_foreign_torch_dict": (lambda d: torch.save({"a": 1}, _ckpt(d) / "state.pt"), "run"),
    "state_torch_list": (lambda d: torch.save([1, 2, 3], _ckpt(d) / "state.pt"), "step"),
    "state_is_model_pt": (lambda d: shutil.copy(d / "model.pt", _ckpt(d) / "state.pt"), "run"),
    "state_pickles_os_system": (
        lambda d: torch.save({"format": sac.CHECKPOINT_FORMAT, "x": Evil()}, _ckpt(d) / "state.pt"),
        "run",
    ),
    "mjdata_pickles_os_system": (lambda d: _edit_state(d, _evil_mjdata), "run"),
    "state_without_buffer_meta": (lambda d: _edit_state(d, lambda s: s.pop("buffer")), "run"),
    "state_without_optimizers": (lambda d: _edit_state(d, lambda s: s.pop("optimizers")), "run"),
    "obs_npy_truncated_to_half": (lambda d: _truncate(_ckpt(d) / "buffer" / "obs.npy", lambda n: n // 2), "run"),
    "obs_npy_cut_in_header": (lambda d: _truncate(_ckpt(d) / "buffer" / "obs.npy", lambda n: 20), "run"),
    "valid_npy_missing": (lambda d: (_ckpt(d) / "buffer" / "valid.npy").unlink(), "run"),
    "actions_npy_other_shape": (_wrong_shape_actions, "step"),
    "latest_names_deleted_step": (lambda d: shutil.rmtree(_ckpt(d)), "run"),
    "resume_model_pt_file": (lambda d: None, "model.pt"),
    "checkpoints_dir_without_latest": (lambda d: (d / "checkpoints" / "latest").unlink(), "checkpoints"),
}
XFAIL_CORRUPTIONS: dict[str, str] = {}
CORRUPTIONS["state_without_args"] = (lambda d: _edit_state(d, lambda s: s.pop("args")), "run")


@pytest.fixture
def in_process_main(monkeypatch, tmp_path):
    """sac_continuous.main() in this process: its exit code and stderr, with signal handlers restored."""
    monkeypatch.chdir(tmp_path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def call(*flags: str) -> int:
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), *flags])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a loaded 2-core machine: several OpenMP threads only spin against each other
        try:
            with pytest.raises(SystemExit) as exit_info:
                sac.main()
        finally:
            torch.set_num_threads(threads)
            for s, h in handlers.items():
                signal.signal(s, h)
        return exit_info.value.code

    return call


def assert_one_error_line(stderr: str, *must_mention: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    for word in must_mention:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    return lines[0]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=XFAIL_CORRUPTIONS[c]))
        if c in XFAIL_CORRUPTIONS
        else c
        for c in CORRUPTIONS
    ],
)
def test_damaged_checkpoint_is_refused_with_one_line(small_run, tmp_path, in_process_main, capfd, case):
    run_dir = tmp_path / "runs" / "damaged"
    shutil.copytree(small_run, run_dir)
    damage, target = CORRUPTIONS[case]
    damage(run_dir)
    target = {"run": run_dir, "step": run_dir / "checkpoints" / step_name(SMALL_TOTAL)}.get(target, run_dir / target)
    before = tree(tmp_path)
    capfd.readouterr()
    code = in_process_main(
        "--resume", str(target), "--device", "cpu", "--total-timesteps", str(SMALL_TOTAL + 50), "--eval-episodes", "1"
    )
    out = capfd.readouterr()
    assert code == sac.EXIT_BAD_INPUT == 2, out.err
    assert_one_error_line(out.err)
    assert tree(tmp_path) == before, "a refused resume wrote or removed files"
    assert not (tmp_path / "PWNED").exists()


def test_damaged_checkpoint_is_refused_by_the_real_script(small_run, tmp_path):
    """The same through a real process (import-time warnings, the interpreter's exit path), for the damage
    found last, after the environments are made and the run directory is probed."""
    procs = {}
    for case in ("obs_npy_truncated_to_half",):
        cwd = tmp_path / case
        run_dir = cwd / "runs" / RUN
        shutil.copytree(small_run, run_dir)
        CORRUPTIONS[case][0](run_dir)
        procs[case] = (cwd, tree(cwd), start(cwd, "--resume", "auto", *SMALL_FLAGS, "--total-timesteps", "400"))
    for case, (cwd, before, proc) in procs.items():
        res = finish(proc)
        assert res.returncode == 2, res.stderr
        assert_one_error_line(res.stderr, "truncated")
        # the stdout/stderr files of this process are the only new files
        assert {k: v for k, v in tree(cwd).items() if not k.startswith("std")} == {
            k: v for k, v in before.items() if not k.startswith("std")
        }


@pytest.mark.parametrize(
    "flags,mentions",
    [
        (["--env-id", "Hopper-v5"], ["--env-id", "Hopper-v5", "Pendulum-v1", "conflicts"]),
        (["--policy-lr", "0.001"], ["--policy-lr", "conflicts"]),
        (["--alpha", "0.2"], ["--alpha", "0.5", "conflicts"]),
        (["--seed", "7"], ["--seed", "conflicts"]),
    ],
    ids=["env-id", "policy-lr", "alpha", "seed"],
)
def test_conflicting_run_argument_is_refused(small_run, tmp_path, in_process_main, capfd, flags, mentions):
    run_dir = tmp_path / "runs" / "copy"
    shutil.copytree(small_run, run_dir)
    before = tree(tmp_path)
    capfd.readouterr()
    code = in_process_main("--resume", str(run_dir), "--device", "cpu", "--total-timesteps", "300", *flags)
    out = capfd.readouterr()
    assert code == 2, out.err
    assert_one_error_line(out.err, *mentions)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("extra", [[], ["--alpha", "0.5"]], ids=["omitted", "repeated"])
def test_flags_left_at_default_take_the_checkpoints_values(small_run, tmp_path, in_process_main, extra):
    """Trained with --alpha 0.5 --gamma 0.95; resumed without them (or repeating --alpha 0.5): the run
    goes on with the checkpoint's values, not the defaults. (20 updates, in this process.)"""
    run_dir = tmp_path / "runs" / RUN
    shutil.copytree(small_run, run_dir)
    code = in_process_main(
        "--resume",
        str(run_dir),
        "--device",
        "cpu",
        "--eval-episodes",
        "1",
        "--total-timesteps",
        str(SMALL_TOTAL + 20),
        *extra,
    )
    assert code == 0
    state = load_state(latest_ckpt(run_dir))
    assert state["global_step"] == SMALL_TOTAL + 20 and state["n_updates"] == SMALL_TOTAL + 20 - 100
    assert state["args"]["alpha"] == 0.5 and state["args"]["gamma"] == 0.95
    assert state["args"]["learning_starts"] == 100 and state["args"]["buffer_size"] == 1000


# ----------------------------------------------------------------------------------------------
# 6. log_alpha after a restore: the optimizer's tensor, and still trained
# ----------------------------------------------------------------------------------------------


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# on CUDA, reading the checkpoint onto the GPU once broke every resume (.numpy() of env and RNG state)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_restored_log_alpha_is_the_optimizers_tensor_and_keeps_training(small_run, device):
    ckpt = latest_ckpt(small_run)
    device = torch.device(device)
    saved = sac.read_checkpoint(ckpt)
    args = sac.merge_resume_args(sac.Args(resume=str(small_run), device=device.type), saved["args"])
    assert args.autotune and saved["n_updates"] == SMALL_TOTAL - 100
    envs = sac.make_vector_env(args.env_id, args.num_envs)
    try:
        low, high = envs.single_action_space.low, envs.single_action_space.high
        agent = sac.SAC(saved["obs_dim"], low, high, args, device)
        rb = sac.ReplayBuffer(args.buffer_size, args.num_envs, saved["obs_dim"], saved["act_dim"], args.seed)
        envs.reset(seed=args.seed)
        sac.restore(saved, ckpt, agent, rb, envs)
    finally:
        envs.close()
    (param,) = agent.a_optimizer.param_groups[0]["params"]
    assert param is agent.log_alpha, "the optimizer trains another tensor than log_alpha"
    assert torch.equal(agent.log_alpha.detach().cpu(), saved["log_alpha"])
    assert saved["log_alpha"].item() != pytest.approx(np.log(0.5)), "precondition: log_alpha was trained"
    assert agent.alpha.cpu() == saved["alpha"]
    adam_step = agent.a_optimizer.state[agent.log_alpha]["step"].item()
    assert adam_step == saved["n_updates"]  # the Adam moments came back with it
    before = agent.log_alpha.detach().clone()
    torch.manual_seed(0)
    for _ in range(3):
        agent.update(rb.sample(args.batch_size))
    assert not torch.equal(agent.log_alpha.detach(), before), "log_alpha no longer trained after a resume"
    assert agent.a_optimizer.state[agent.log_alpha]["step"].item() == adam_step + 3
    assert agent.alpha == agent.log_alpha.exp().item()


# ----------------------------------------------------------------------------------------------
# 8. the NaN guard
# ----------------------------------------------------------------------------------------------

NAN_WRAPPER = """
import os, sys
sys.path.insert(0, {repo!r})
import sac_continuous as sac

original, calls, after = sac.critic_target, [0], int(os.environ["NAN_AFTER_UPDATES"])

def critic_target(*args, **kwargs):  # the critic target turns NaN from update `after` + 1 on
    calls[0] += 1
    y = original(*args, **kwargs)
    return y * float("nan") if calls[0] > after else y

sac.critic_target = critic_target
sys.argv[0] = sac.__file__
sac.main()
"""


def test_nan_loss_exits_3_and_keeps_the_last_good_checkpoint(tmp_path):
    """Updates go NaN from step 126 on (after checkpoint 100, before checkpoint 200). With losses logged every
    10 updates, the loss check stops the run at step 130; with no logging due, the weight check refuses to
    write checkpoint 200. Both: exit 3, one line, checkpoint 100 intact, no checkpoint of NaN weights."""
    wrapper = tmp_path / "nan_wrapper.py"
    wrapper.write_text(NAN_WRAPPER.format(repo=str(REPO)))
    flags = [
        *SMALL_PENDULUM,
        "--checkpoint-frequency",
        "100",
        *BASE_FLAGS,
    ]
    env = {**child_env(), "NAN_AFTER_UPDATES": "75"}
    procs = {
        "loss check": start(
            tmp_path / "loss", *flags, "--total-timesteps", "400", "--log-frequency", "10", script=wrapper, env=env
        ),
        "weight check": start(
            tmp_path / "weights",
            *flags,
            "--total-timesteps",
            "400",
            "--log-frequency",
            "100000",
            script=wrapper,
            env=env,
        ),
    }
    for name, proc in procs.items():
        res = finish(proc)
        run_dir = Path(proc.stderr_path).parent / "runs" / RUN
        assert res.returncode == sac.EXIT_DIVERGED == 3, f"{name}: {res.stderr}"
        line = assert_one_error_line(res.stderr, "diverged")
        diverged_at = int(re.search(r"at step (\d+)", line).group(1))
        if name == "loss check":
            assert diverged_at == 130 and "qf1_loss=nan" in line, line
        else:
            assert diverged_at == 200, line
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", step_name(100)], name
        state = assert_complete_checkpoint(latest_ckpt(run_dir))
        assert state["global_step"] == 100
        for module in state["modules"].values():
            assert all(torch.isfinite(t).all() for t in module.values()), name
        assert torch.isfinite(state["log_alpha"]).all()
    # the kept checkpoint still resumes (without the NaN patch) and finishes
    res = run(tmp_path / "weights", "--resume", "auto", *flags, "--log-frequency", "100000", "--total-timesteps", "150")
    assert_ok(res)
    assert load_state(latest_ckpt(tmp_path / "weights" / "runs" / RUN))["global_step"] == 150


def test_nan_before_the_final_evaluation_keeps_the_last_good_model(tmp_path):
    """NaN from update 76 on (step 126), no loss logging due, no checkpoints: nothing notices until the
    evaluation at the end, which must refuse to write NaN weights over model.pt (from the evaluation at 100)."""
    wrapper = tmp_path / "nan_wrapper.py"
    wrapper.write_text(NAN_WRAPPER.format(repo=str(REPO)))
    flags = [
        *SMALL_PENDULUM,
        "--checkpoint-frequency",
        "0",
        "--log-frequency",
        "100000",
        *BASE_FLAGS,
        "--eval-frequency",
        "100",
        "--total-timesteps",
        "150",
    ]
    res = finish(start(tmp_path, *flags, script=wrapper, env={**child_env(), "NAN_AFTER_UPDATES": "75"}))
    assert res.returncode == sac.EXIT_DIVERGED == 3, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error")]  # after the eval at 100's line
    assert len(errors) == 1 and "diverged at step 150" in errors[0], res.stderr
    run_dir = tmp_path / "runs" / RUN
    for name in ("model.pt", "best_model.pt"):
        model = torch.load(run_dir / name, weights_only=True)
        assert model["global_step"] == 100, name
        assert all(torch.isfinite(t).all() for t in model["actor"].values()), name
