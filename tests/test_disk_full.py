"""A failed write of a checkpoint, model file, args.json or TensorBoard event (videos: test_video.py): exit 74, one
line (path, reason, step, last intact checkpoint, resume command), no temporary files, the last checkpoint and model
files untouched, no training past it; then `--resume auto` ends bit for bit like an uninterrupted run. A crashed
process's leftovers are cleared at the next start; as root, a real full tmpfs. Runs call main() in-process."""

import errno
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import conftest as h
import numpy as np
import pytest
import torch

import sac_continuous as sac

TOTAL, EVERY = 150, 60  # checkpoints and evaluations at 60 (the first), 120 (a later one) and 150 (the end)
FLAGS = [*h.SMALL, "--checkpoint-frequency", EVERY, "--eval-frequency", EVERY, "--log-frequency", 10]
FLAGS += ["--resume", "auto", "--total-timesteps", TOTAL]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    cwd = tmp_path_factory.mktemp("reference")
    h.ok(h.main_in(cwd, *FLAGS))
    return cwd / "runs" / "r"


def test_best_model_is_the_best_evaluation_and_model_the_last(reference):
    curve = h.scalars(reference)["eval/mean_return"]  # at 60, 120 and 150
    best = max(curve, key=lambda p: p[1])[0]
    assert best != TOTAL, "precondition: the last evaluation is not the best"
    models = [torch.load(reference / name, weights_only=True) for name in ("best_model.pt", "model.pt")]
    assert [m["global_step"] for m in models] == [best, TOTAL]


def intact(run_dir: Path) -> dict:
    """The bytes of `latest`, the checkpoint it names, model.pt, best_model.pt and args.json."""
    keep = ["model.pt", "best_model.pt", "args.json", "checkpoints/latest", f"checkpoints/{h.latest_name(run_dir)}"]
    return {k: v for k, v in h.tree(run_dir).items() if any(k == p or k.startswith(p + "/") for p in keep)}


def assert_resume_finishes_like(reference: Path, cwd: Path) -> str:
    res = h.ok(h.main_in(cwd, *FLAGS))
    assert not h.temporaries(cwd / "runs" / "r")
    h.assert_same_checkpoint(h.latest_ckpt(reference), h.latest_ckpt(cwd / "runs" / "r"))
    h.assert_same_models(reference, cwd / "runs" / "r")
    return res.err


def fail_write(monkeypatch, name: str, nth: int, code: int, run_dir: Path) -> SimpleNamespace:
    """The nth write of a file called `name` (its temporary name too) writes 1,000 bytes, then fails with `code`."""
    original, fault = sac.write_file, SimpleNamespace(calls=0, before=None)

    def write_file(path, write):
        if re.sub(r"^\.|\.tmp(?=\.|$)", "", Path(path).name) == name:
            fault.calls += 1
            if fault.calls == nth:
                fault.before = intact(run_dir)

                def write(f, write=write):
                    f.write(b"\0" * 1000)
                    raise OSError(code, os.strerror(code))

        return original(path, write)

    monkeypatch.setattr(sac, "write_file", write_file)
    return fault


SITES = {  # file: (which write of it fails, with what, the step the run stops at)
    "obs.npy": (1, errno.ENOSPC, EVERY),
    "state.pt": (2, errno.ENOSPC, 2 * EVERY),
    "latest": (2, errno.EIO, 2 * EVERY),
    "model.pt": (2, errno.EDQUOT, 2 * EVERY),
    "best_model.pt": (1, errno.ENOSPC, EVERY),
    "args.json": (1, errno.EACCES, 0),
}


@pytest.mark.parametrize("name", SITES)
def test_a_failed_write_exits_74_in_one_line_and_resume_auto_finishes(reference, tmp_path, monkeypatch, name):
    nth, code, step = SITES[name]
    run_dir = tmp_path / "runs" / "r"
    with monkeypatch.context() as m:
        fault = fail_write(m, name, nth, code, run_dir)
        res = h.main_in(tmp_path, *FLAGS)
    assert fault.before is not None, f"no {nth}. write of {name}"
    line = h.error_line(res, "cannot write ", f"({os.strerror(code)})", f"at step {step}", code=sac.EXIT_IO_ERROR)
    assert "runs/r" in line and (name in line or h.step_name(step) in line), line
    assert not h.temporaries(run_dir) and intact(run_dir) == fault.before
    assert all(s <= step for points in h.scalars(run_dir).values() for s, _ in points), "trained past the failure"
    if h.latest_name(run_dir):
        assert f"the last checkpoint runs/r/checkpoints/{h.latest_name(run_dir)} is intact" in line, line
        if name in ("obs.npy", "state.pt", "latest"):  # failed before its rename: the one before it is the newest
            kept = [h.step_name(step - EVERY)] + ([h.step_name(step)] if name == "latest" else [])  # renamed: complete
            assert h.latest_name(run_dir) == kept[-1]
            assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", *kept]
    else:
        assert "no checkpoint was written yet" in line, line
    assert "python sac_continuous.py" in line and "--resume" in line, line
    assert_resume_finishes_like(reference, tmp_path)


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # the writer thread's traceback
def test_a_failed_event_write_exits_74_in_one_line_and_resume_auto_finishes(reference, tmp_path, monkeypatch):
    """TensorBoard writes from a thread and raises a failed write at a later call: the run stops by the next
    checkpoint at the latest, quietly (no thread traceback), with the checkpoint before it intact."""
    from tensorboard.compat.tensorflow_stub.io import gfile

    run_dir, original, fault = tmp_path / "runs" / "r", gfile.LocalFileSystem.append, SimpleNamespace(before=None)

    def append(self, filename, *args, **kwargs):
        if fault.before is None and h.latest_name(run_dir) == h.step_name(EVERY):
            fault.before = intact(run_dir)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, filename, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(gfile.LocalFileSystem, "append", append)
        res = h.main_in(tmp_path, *FLAGS)
    line = h.error_line(res, "runs/r/events.out.tfevents", "(No space left on device)", code=sac.EXIT_IO_ERROR)
    assert EVERY < int(re.search(r"at step (\d+)", line)[1]) <= 2 * EVERY, line
    assert not h.temporaries(run_dir) and intact(run_dir) == fault.before
    assert_resume_finishes_like(reference, tmp_path)


NOT_WRITES = {  # what the first evaluation meets, and the line
    "read": (FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "assets/a.xml"), "cannot read assets/a.xml"),
    "render": (OSError(errno.EIO, os.strerror(errno.EIO)), "cannot render (Input/output error)"),
}


@pytest.mark.parametrize("case", NOT_WRITES)
def test_a_failed_read_or_render_is_named_so_not_a_write(tmp_path, monkeypatch, case):
    """Once the run has started, making the evaluation's env fails (a read) or its first frame (a render): exit 74,
    and the line names the operation and the error's own path, not TensorBoard's file."""
    error, words = NOT_WRITES[case]
    original, started = sac.make_env, lambda: (tmp_path / "runs" / "r" / "args.json").exists()

    def make_env(env_id, render_mode=None):  # frames without a rendering library (pygame), black until then
        if case == "read" and started():
            raise error

        def render():
            if started():
                raise error
            return np.zeros((8, 8, 3), np.uint8)

        env = original(env_id)
        env.render = render
        return env

    monkeypatch.setattr(sac, "make_env", make_env)
    monkeypatch.setenv("MUJOCO_GL", "egl")  # what --capture-video would set for good
    line = h.error_line(h.main_in(tmp_path, *FLAGS, "--capture-video"), words, f"at step {EVERY}", code=74)
    assert "cannot write" not in line, line


@pytest.mark.parametrize("under,nth", [("rewards.npy", 2), ("latest", 1), ("latest", 2)])
def test_a_process_that_died_mid_checkpoint_resumes_from_the_newest_complete_one(
    reference, tmp_path, monkeypatch, under, nth
):
    """Dying at the first operation on `under` of checkpoint 60 or 120: amid its buffer files (a partial one is
    left), or renamed into place with `latest` not yet switched (at 60 there is no `latest`, as if deleted). The
    same command clears the leftovers, resumes from the newest complete checkpoint and finishes exactly."""
    with h.crash_at(None, under) as ops:  # how many operations on `under` one checkpoint makes
        h.ok(h.main_in(tmp_path / "count", *FLAGS[:-1], EVERY))
    run_dir, resumed = tmp_path / "runs" / "r", EVERY * nth if under == "latest" else EVERY
    with h.crash_at(ops.count * (nth - 1) + 1, under), pytest.raises(h.Crash):
        h.main_in(tmp_path, *FLAGS)
    assert (run_dir / "checkpoints" / "latest").exists() == (nth > 1)
    assert h.temporaries(run_dir) or len(list((run_dir / "checkpoints").iterdir())) > 2 or nth == 1, "leftovers"
    original, seen = sac.write_file, []

    def write_file(path, write):  # the resumed run's first write finds the leftovers gone already
        seen.append(seen or (sorted(p.name for p in (run_dir / "checkpoints").iterdir()), h.temporaries(run_dir)))
        return original(path, write)

    monkeypatch.setattr(sac, "write_file", write_file)
    assert f"(resumed at step {resumed} from" in assert_resume_finishes_like(reference, tmp_path)
    assert seen[0] == (["latest"] * (nth > 1) + [h.step_name(resumed)], [])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", h.step_name(TOTAL)]


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root; the faults above cover the same paths")
        where = tmp_path / size
        where.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_real_full_tmpfs_at_the_first_and_a_later_checkpoint(tmpfs):
    """2 MB: the first checkpoint (about 3 MB) does not fit; 6 MB: the second does not fit next to the first and
    the model files. With room made (remounted larger), the same command finishes the run."""
    flags = [*FLAGS[:-1], 200, "--checkpoint-frequency", 100, "--eval-frequency", 0, "--learning-starts", 90]
    for size, last in (("2m", None), ("6m", h.step_name(100))):
        cwd = tmpfs(size)
        h.error_line(h.main_in(cwd, *flags), "(No space left on device)", code=sac.EXIT_IO_ERROR)
        assert not h.temporaries(cwd / "runs" / "r") and h.latest_name(cwd / "runs" / "r") == last
    subprocess.run(["mount", "-o", "remount,size=64m", str(cwd)], check=True)
    assert "at step 100" in h.ok(h.main_in(cwd, *flags)).err
    assert sorted(p.name for p in (cwd / "runs" / "r" / "checkpoints").iterdir()) == ["latest", h.step_name(200)]
