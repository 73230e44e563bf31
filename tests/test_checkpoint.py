"""Checkpoints: a run stopped (finished, SIGTERM, kill -9) and resumed ends bit for bit like an uninterrupted one
(Pendulum-v1; Hopper-v5 with its MjData); a crash at any file operation of a checkpoint write leaves a loadable one;
damaged checkpoints and conflicting flags are refused in one line; NaN/Inf exits 3 with the last good files intact."""

import importlib.util
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import conftest as h
import numpy as np
import pytest
import torch

import sac_continuous as sac

LEARNING_STARTS, MID, TOTAL = 300, 477, 700  # MID: a checkpoint inside an episode of both envs
# the buffer (400 slots) has wrapped around before MID: saving and loading a wrapped ring is covered
RUN_DEFINING = ["--learning-starts", LEARNING_STARTS, "--batch-size", 256, "--buffer-size", 400]  # batch: the default
OTHERS = ["--eval-frequency", 0, "--eval-episodes", 1, "--checkpoint-frequency", MID, "--log-frequency", 10]
OTHERS += ["--device", "cpu", "--run-name", "r", "--resume", "auto"]


def wait_until(predicate, proc, what: str, timeout: float = 300) -> None:
    """Poll until predicate() holds; fail if the process ends first (a safety timeout, not a timing test)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what}: exit {proc.wait()}\n{proc.err_path.read_text()[-3000:]}")
        time.sleep(0.02)


def assert_same_run(ref: Path, run_dir: Path) -> None:
    """The final checkpoint, model files and TensorBoard points (charts/SPS: its steps) of the uninterrupted run."""
    assert h.latest_name(run_dir) == h.latest_name(ref) == h.step_name(TOTAL)
    h.assert_same_checkpoint(h.latest_ckpt(ref), h.latest_ckpt(run_dir))
    h.assert_same_models(ref, run_dir)
    a, b = h.scalars(ref), h.scalars(run_dir)
    assert a.keys() == b.keys() and {"losses/qf_loss", "charts/episodic_return", "eval/mean_return"} <= a.keys()
    for tag in a:  # wall-clock speed: the same steps only
        assert [p[0] for p in a[tag]] == [p[0] for p in b[tag]] and (tag == "charts/SPS" or a[tag] == b[tag]), tag


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per env an uninterrupted run to TOTAL; for Pendulum-v1 also one that finished at MID (a copy is kept) and
    was then extended to TOTAL with only the flags that do not define the run (those come from the checkpoint)."""
    base = tmp_path_factory.mktemp("exact")
    flags = {env: ["--env-id", env, *RUN_DEFINING, *OTHERS] for env in ("Pendulum-v1", "Hopper-v5")}
    procs = [h.start(base / env, *flags[env], "--total-timesteps", TOTAL) for env in flags]
    procs.append(h.start(base / "split", *flags["Pendulum-v1"], "--total-timesteps", MID))
    for proc in procs:
        h.ok(h.finish(proc))
    shutil.copytree(base / "split" / "runs" / "r", base / "mid")
    extended = h.ok(h.run_script(base / "split", *OTHERS, "--total-timesteps", TOTAL))
    pendulum, hopper = ([*flags[env], "--total-timesteps", TOTAL] for env in flags)
    return SimpleNamespace(pendulum=pendulum, hopper=hopper, mid=base / "mid", extended=extended, base=base)


def test_a_finished_run_extended_is_bitwise_the_uninterrupted_run(runs):
    ref, split = runs.base / "Pendulum-v1" / "runs" / "r", runs.base / "split" / "runs" / "r"
    assert h.load_state(h.latest_ckpt(runs.mid))["global_step"] == MID and f"at step {MID}" in runs.extended.err
    assert "run: runs/r" in runs.extended.err
    # the stopped run also evaluated at MID (its end): its best evaluation and best_model.pt may differ
    h.assert_same_checkpoint(h.latest_ckpt(ref), h.latest_ckpt(split), ignore="best")
    assert torch.equal(*(torch.load(r / "model.pt", weights_only=True)["actor"]["mean.weight"] for r in (ref, split)))
    curves, ref_curves = h.scalars(split), h.scalars(ref)
    assert [s for s, _ in curves["eval/mean_return"]] == [MID, TOTAL]
    for tag in ("losses/qf_loss", "losses/alpha", "charts/episodic_return"):
        assert curves[tag] == ref_curves[tag], tag  # one curve: nothing doubled or lost around MID


def test_sigterm_exits_75_and_its_resume_command_ends_bitwise_like_the_uninterrupted_run(runs, tmp_path):
    """Hopper-v5: SIGTERM after the checkpoint at MID writes a checkpoint at the current step; the printed command
    (starting with $SAC_COMMAND), pasted into bash, continues to the same final state, flags and MjData included;
    a run name with a space and a quote and an output dir with a space are quoted."""
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(h.SCRIPT))}"
    where = ["--run-name", "my run's 1", "--output-dir", "out dir"]
    proc = h.start(tmp_path, *runs.hopper, *where, env={**os.environ, "SAC_COMMAND": command})
    run_dir = tmp_path / "out dir" / "my run's 1"
    wait_until(lambda: h.latest_name(run_dir) == h.step_name(MID), proc, "checkpoint at MID")
    proc.send_signal(signal.SIGTERM)
    res = h.finish(proc)
    assert res.code == sac.EXIT_INTERRUPTED == 75 and "Traceback" not in res.err, res.err
    m = re.search(r"stopped by SIGTERM at step (\d+); checkpoint (.+)\. Resume with: (.+)", res.err)
    assert m and m[3].startswith(command), res.err
    step = int(m[1])
    assert MID <= step < TOTAL and Path(m[2]).name == h.latest_name(run_dir) == h.step_name(step)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", h.step_name(step)]
    resumed = subprocess.run(["bash", "-c", m[3]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and f"at step {step}" in resumed.stderr, resumed.stderr[-3000:]
    assert_same_run(runs.base / "Hopper-v5" / "runs" / "r", run_dir)


def test_kill_9_then_the_same_resume_auto_command_ends_bitwise_like_the_uninterrupted_run(runs, tmp_path):
    """Killed after the checkpoint at MID, once its TensorBoard events went past it: the same command continues
    from MID, and TensorBoard shows exactly the uninterrupted curves (the killed points after MID hidden)."""
    run_dir = tmp_path / "runs" / "r"
    proc = h.start(tmp_path, *runs.pendulum)
    wait_until(lambda: h.latest_name(run_dir) == h.step_name(MID), proc, "checkpoint at MID")
    events = lambda: sum(p.stat().st_size for p in run_dir.glob("events.out.tfevents.*"))  # noqa: E731
    size = events()
    wait_until(lambda: events() > size + 2000, proc, "events after the checkpoint")
    proc.kill()
    proc.wait()
    assert max(s for s, _ in h.scalars(run_dir)["losses/qf_loss"]) > MID, "precondition: points past the checkpoint"
    res = h.ok(h.run_script(tmp_path, *runs.pendulum))
    assert f"at step {MID}" in res.err
    assert_same_run(runs.base / "Pendulum-v1" / "runs" / "r", run_dir)


# the script under a load average that swings between idle and busy at each reading, so that the default thread rule
# switches between one thread and every core at each loss log; it reports the thread counts it used
SWINGING_LOAD = """import atexit, itertools, os, runpy, sys, torch
loads, used, set_threads = itertools.cycle([0.0, 50.0]), set(), torch.set_num_threads
os.getloadavg = lambda: (next(loads),) * 3
torch.set_num_threads = lambda n: (used.add(n), set_threads(n))
atexit.register(lambda: print("threads used", sorted(used), file=sys.stderr))
runpy.run_path(SCRIPT, run_name="__main__")"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: the thread count cannot change")
def test_kill_9_and_resume_under_the_default_thread_rule_end_bitwise_like_one_thread(runs, tmp_path):
    """The default rule (no --num-threads, no OMP_NUM_THREADS) changes the thread count during the run; killed after
    MID and resumed under it, the run ends bit for bit like the uninterrupted one-thread run."""
    (wrapper := tmp_path / "swing.py").write_text(SWINGING_LOAD.replace("SCRIPT", repr(str(h.SCRIPT))))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    run_dir = tmp_path / "runs" / "r"
    proc = h.start(tmp_path, *runs.pendulum, script=wrapper, env=env)
    wait_until(lambda: h.latest_name(run_dir) == h.step_name(MID), proc, "checkpoint at MID")
    proc.kill()
    proc.wait()
    res = h.ok(h.run_script(tmp_path, *runs.pendulum, script=wrapper, env=env))
    assert f"at step {MID}" in res.err and f"threads used [1, {os.cpu_count()}]" in res.err, res.err
    ref = runs.base / "Pendulum-v1" / "runs" / "r"
    h.assert_same_checkpoint(h.latest_ckpt(ref), h.latest_ckpt(run_dir))
    h.assert_same_models(ref, run_dir)


@pytest.mark.skipif(importlib.util.find_spec("shimmy") is None, reason="needs shimmy[dm-control], dm-control")
def test_a_dm_control_task_killed_and_resumed_ends_bitwise_like_the_uninterrupted_run(tmp_path):
    """dm_control/cheetah-run-v0 through shimmy, its Dict observations flattened: killed after the checkpoint at step
    900 (inside its first 1000-step episode), the same command ends like the uninterrupted run, past the episode's
    end and the next reset: its MjData, step count and the task's RandomState are in the checkpoint."""
    flags = ["--env-id", "dm_control/cheetah-run-v0", "--learning-starts", 800, "--batch-size", 64, "--buffer-size"]
    flags += [400, "--eval-frequency", 0, "--eval-episodes", 1, "--checkpoint-frequency", 900, "--device", "cpu"]
    flags += ["--run-name", "r", "--resume", "auto", "--total-timesteps", 1100]
    ref, proc, run_dir = h.start(tmp_path / "ref", *flags), h.start(tmp_path, *flags), tmp_path / "runs" / "r"
    wait_until(lambda: h.latest_name(run_dir) == h.step_name(900), proc, "checkpoint at step 900")
    proc.kill()
    proc.wait()
    assert "at step 900" in h.ok(h.run_script(tmp_path, *flags)).err
    h.ok(h.finish(ref))
    h.assert_same_checkpoint(h.latest_ckpt(tmp_path / "ref" / "runs" / "r"), h.latest_ckpt(run_dir))
    h.assert_same_models(tmp_path / "ref" / "runs" / "r", run_dir)
    assert [s for s, _ in h.scalars(run_dir)["charts/episodic_return"]] == [1000]
    a, b = (sac.make_env("dm_control/cheetah-run-v0") for _ in range(2))  # the RandomState, used at resets only
    a.reset(seed=1)
    b.reset(seed=2)
    sac.set_env_state(b, sac.get_env_state(a))
    assert np.array_equal(a.reset()[0], b.reset()[0])


HOLD_UPDATE = """
import sys, time
from pathlib import Path
import sac_continuous as sac
original = sac.SAC.update
def update(self, batch):  # the 5th update waits until a signal ends the process
    if self.n_updates == 5:
        Path("in_update").touch()
        time.sleep(600)
    return original(self, batch)
sac.SAC.update = update
sys.argv[0] = sac.__file__
sac.main()
"""


def test_second_ctrl_c_exits_130_at_once(tmp_path):
    """The first SIGINT asks for a checkpoint after this step; a second one while the step still runs: exit 130."""
    (tmp_path / "hold.py").write_text(HOLD_UPDATE)
    flags = [*h.SMALL, "--total-timesteps", 1000, "--checkpoint-frequency", 500]
    proc = h.start(tmp_path, *flags, script=tmp_path / "hold.py")
    wait_until(lambda: (tmp_path / "in_update").exists(), proc, "held update")
    proc.send_signal(signal.SIGINT)
    time.sleep(1)  # the handler runs at once: the main thread sleeps in Python
    proc.send_signal(signal.SIGINT)
    res = h.finish(proc, timeout=60)
    assert res.code == sac.EXIT_ABORTED == 130 and "Traceback" not in res.err, res.err
    assert not (tmp_path / "runs" / "r" / "checkpoints").exists()


def small_buffer(step: int) -> sac.ReplayBuffer:
    """A full 64-slot buffer whose contents depend on step."""
    rb, g = sac.ReplayBuffer(64, 1, 3, 1, seed=0), np.random.default_rng(step)
    rb.start(g.standard_normal((1, 3), dtype=np.float32))
    for _ in range(100):
        (obs, action), done = g.standard_normal((2, 1, 3), dtype=np.float32), g.random(1) < 0.1
        rb.add(action[:, :1], action[0, :1], done, obs, done, obs)
    return rb


def save(run_dir: Path, step: int) -> None:
    run_dir.mkdir(exist_ok=True)
    sac.save_checkpoint(run_dir, {"global_step": step, "weights": torch.full((1000,), float(step))}, small_buffer(step))


def loadable(run_dir: Path) -> int:
    """The checkpoint a resume finds is complete: its own weights and buffer, every file whole."""
    ckpt = sac.find_checkpoint(run_dir)
    state = h.load_state(ckpt)
    step, rb = state["global_step"], small_buffer(state["global_step"])
    assert ckpt.name == h.step_name(step) and torch.equal(state["weights"], torch.full((1000,), float(step)))
    assert all(np.array_equal(a, getattr(rb, name)) for name, a in h.load_buffer(ckpt).items())
    return step


def test_a_crash_at_every_file_operation_of_a_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    """Checkpoint 100 exists; writing 200 dies at each file operation in turn (the file written last cut short).
    Each time a resume finds 100 or 200 whole; clear_leftovers (what a run does at start) leaves only that one,
    and the next write works."""
    save(tmp_path / "count", 100)
    with h.crash_at(None, str(tmp_path / "count")) as ops:
        save(tmp_path / "count", 200)
    assert ops.count >= 8
    for k in range(1, ops.count + 1):
        run_dir = tmp_path / f"crash_{k}"
        save(run_dir, 100)
        with h.crash_at(k, str(run_dir)), pytest.raises(h.Crash):
            save(run_dir, 200)
        step = loadable(run_dir)
        assert step in (100, 200), k
        sac.clear_leftovers(run_dir, None)
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", h.step_name(step)], k
        assert not h.temporaries(run_dir) and loadable(run_dir) == step
        save(run_dir, 300)
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", h.step_name(300)], k
        assert loadable(run_dir) == 300


class Evil:
    def __reduce__(self):
        return os.system, ("touch PWNED",)


def evil_mjdata(ckpt: Path) -> None:
    """Replace the pickled MjData (wherever the state keeps it) by a pickle that runs a command."""
    state, found = h.load_state(ckpt), []

    def walk(node):
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(value, bytes) and b"MjData" in value[:200]:
                node[key] = pickle.dumps(Evil())
                found.append(key)
            elif isinstance(value, (dict, list)):
                walk(value)

    walk(state)
    assert found, "no MjData in a Hopper-v5 checkpoint"
    torch.save(state, ckpt / "state.pt")


def finite(node) -> bool:
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, (list, tuple)):
        return all(finite(x) for x in node)
    return not isinstance(node, torch.Tensor) or not node.is_floating_point() or bool(torch.isfinite(node).all())


def cut(path: Path, size) -> None:
    path.write_bytes(path.read_bytes()[: size(path.stat().st_size)])


DAMAGE = {  # case: (damage the checkpoint, what --resume names relative to the run dir)
    "state.pt cut in half": (lambda c: cut(c / "state.pt", lambda n: n // 2), "."),
    "state.pt of another program": (lambda c: torch.save({"a": 1}, c / "state.pt"), "."),
    "state.pt runs code": (lambda c: torch.save({"x": Evil()}, c / "state.pt"), "."),
    "state.pt a list": (lambda c: torch.save([1, 2], c / "state.pt"), "."),
    "state.pt without args": (
        lambda c: torch.save({k: v for k, v in h.load_state(c).items() if k != "args"}, c / "state.pt"),
        ".",
    ),
    "MjData runs code": (evil_mjdata, "."),
    "obs.npy cut in half": (lambda c: cut(c / "buffer" / "obs.npy", lambda n: n // 2), "."),
    "actions.npy of another shape": (lambda c: np.save(c / "buffer" / "actions.npy", np.zeros((1, 5, 2))), "ckpt"),
    "valid.npy missing": (lambda c: (c / "buffer" / "valid.npy").unlink(), "."),
    "checkpoint removed": (shutil.rmtree, "."),
    "a model file": (lambda c: None, "model.pt"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_or_foreign_checkpoint_is_refused_in_one_line(runs, tmp_path, case):
    """Refused before anything is written, no code in the files run (weights_only loading, and an unpickler that
    accepts MjData only); one case in a real process, where import-time warnings could reach stderr."""
    run_dir = tmp_path / "runs" / "r"
    shutil.copytree(runs.base / "Hopper-v5" / "runs" / "r", run_dir)
    damage, target = DAMAGE[case]
    damage(h.latest_ckpt(run_dir))
    target = h.latest_ckpt(run_dir) if target == "ckpt" else run_dir / target
    before = h.tree(tmp_path)
    flags = ["--resume", target, "--device", "cpu", "--total-timesteps", TOTAL + 100, "--eval-episodes", 1]
    h.error_line((h.run_script if case == "MjData runs code" else h.main_in)(tmp_path, *flags))
    assert {k: v for k, v in h.tree(tmp_path).items() if not k.startswith("std")} == before
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("flag,value,saved", [("--env-id", "Hopper-v5", "Pendulum-v1"), ("--batch-size", 32, 256)])
def test_a_flag_that_conflicts_with_the_checkpoint_is_refused(runs, tmp_path, flag, value, saved):
    run_dir = tmp_path / "r"
    shutil.copytree(runs.mid, run_dir)
    before = h.tree(tmp_path)
    res = h.main_in(tmp_path, "--resume", run_dir, "--total-timesteps", TOTAL, flag, value)
    h.error_line(res, flag, value, saved)
    assert h.tree(tmp_path) == before


NAN_AFTER_75_UPDATES = """
import sys
import sac_continuous as sac
original, calls = sac.SAC.critic_loss, [0]
def critic_loss(self, *args):  # from the 76th update (step 126) on, the critic loss and its statistics are NaN
    calls[0] += 1
    loss, stats = original(self, *args)
    nan = float("nan") if calls[0] > 75 else 1.0
    return loss * nan, {k: v * nan for k, v in stats.items()}
sac.SAC.critic_loss = critic_loss
sys.argv[0] = sac.__file__
sac.main()
"""
CKPT_100, NO_EVAL, QUIET = ["--checkpoint-frequency", 100], ["--eval-frequency", 0], ["--log-frequency", 10**6]
ONLY_EVAL_100 = ["--checkpoint-frequency", 0, "--eval-frequency", 100]
NAN_CASES = {  # which check notices: (flags, the step it stops at, checkpoint 100 kept, the model files' step)
    "logged loss": ([*CKPT_100, *NO_EVAL, "--log-frequency", 10], 130, True, None),
    "weights at a checkpoint": ([*CKPT_100, *NO_EVAL, *QUIET], 200, True, None),
    "weights at the evaluation": ([*QUIET, *ONLY_EVAL_100, "--total-timesteps", 150], 150, False, 100),
}


def test_nan_stops_the_run_with_exit_3_keeping_the_last_good_checkpoint_and_models(tmp_path):
    (tmp_path / "nan.py").write_text(NAN_AFTER_75_UPDATES)
    flags = [*h.SMALL, "--total-timesteps", 400]
    procs = {
        c: h.start(tmp_path / str(i), *flags, *NAN_CASES[c][0], script=tmp_path / "nan.py")
        for i, c in enumerate(NAN_CASES)
    }
    for i, (case, proc) in enumerate(procs.items()):
        _, step, checkpoint, model_step = NAN_CASES[case]
        h.error_line(h.finish(proc), "diverged", f"at step {step}", code=sac.EXIT_DIVERGED)
        run_dir = tmp_path / str(i) / "runs" / "r"
        if checkpoint:
            assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", h.step_name(100)], case
            assert finite(h.load_state(h.latest_ckpt(run_dir))), case
        for name in ("model.pt", "best_model.pt") if model_step else ():
            model = torch.load(run_dir / name, weights_only=True)
            assert model["global_step"] == model_step and all(torch.isfinite(t).all() for t in model["actor"].values())
    # the kept checkpoint resumes (without the NaN) and finishes
    flags = [*h.SMALL, *NAN_CASES["weights at a checkpoint"][0], "--resume", "auto", "--total-timesteps", 150]
    h.ok(h.main_in(tmp_path / "1", *flags))
    assert h.latest_name(tmp_path / "1" / "runs" / "r") == h.step_name(150)
