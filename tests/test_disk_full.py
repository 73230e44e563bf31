"""A full disk (or another failed write) during a run: exit 74 with one line on stderr, no traceback, the
temporary files of the failed write removed, the previous checkpoint and model files intact, and
`--resume auto` then finishing the run bit for bit like an uninterrupted one.

Faults are injected in this process at the real write calls (numpy's write_array, torch.save, fsync,
TensorBoard's file appends, ffmpeg's writer), at the first and at a later checkpoint; as root, two runs
also fill a real small tmpfs. Runs are small (Pendulum-v1, 150 steps) and call main() in this process.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoint import (
    SCRIPT,
    SMALL_PENDULUM,
    assert_one_error_line,
    assert_same_checkpoint,
    assert_same_model_file,
    latest_ckpt,
    latest_name,
    step_name,
    tree,
)

import sac_continuous as sac

TOTAL, EVERY = 150, 60  # checkpoints and evaluations at 60 (the first), 120 (a later one) and 150 (the end)
FLAGS = [
    *SMALL_PENDULUM,
    "--checkpoint-frequency",
    str(EVERY),
    "--eval-frequency",
    str(EVERY),
    "--eval-episodes",
    "1",
    "--log-frequency",
    "10",
    "--device",
    "cpu",
    "--run-name",
    "r",
    "--resume",
    "auto",
    "--total-timesteps",
    str(TOTAL),
]


def main_in(cwd: Path, *flags: str) -> tuple[int, str]:
    """sac_continuous.main() in this process, in cwd, on one torch thread: its exit code and stderr."""
    cwd.mkdir(parents=True, exist_ok=True)
    old_cwd, argv, threads = os.getcwd(), sys.argv, torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    err = io.StringIO()
    os.chdir(cwd)
    sys.argv = [str(SCRIPT), *flags]
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
            sac.main()
    finally:
        os.chdir(old_cwd)
        sys.argv = argv
        torch.set_num_threads(threads)
        for s, h in handlers.items():
            signal.signal(s, h)
    return exit_info.value.code, err.getvalue()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    cwd = tmp_path_factory.mktemp("reference")
    code, err = main_in(cwd, *FLAGS)
    assert code == 0, err
    return cwd / "runs" / "r"


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Fault:
    """Replace module.name by a wrapper that, at the nth call whose file matches, writes a little (a half-written
    file), records the last checkpoint's bytes as they were at that instant, and raises."""

    def __init__(self, monkeypatch, module, name: str, matches, nth: int, error, run_dir: Path):
        self.matches, self.nth, self.error, self.run_dir = matches, nth, error, run_dir
        self.calls, self.fired, self.before = 0, False, None
        original, free_bytes = getattr(module, name), sac.free_bytes
        # the disk is not really full: once the fault fired, it looks full (the advice names what to free)
        monkeypatch.setattr(sac, "free_bytes", lambda path: 0 if self.fired else free_bytes(path))

        def wrapper(*args, **kwargs):
            if not self.fired and self.matches(*args):
                self.calls += 1
                if self.calls == self.nth:
                    self.fired = True
                    self.before = snapshot(self.run_dir)
                    self.partial(*args)
                    raise self.error()
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    def partial(self, *args) -> None:
        for a in args:
            if hasattr(a, "write") and hasattr(a, "name"):
                a.write(b"\0" * 1000)
                a.flush()


def snapshot(run_dir: Path) -> dict:
    """The bytes of the last checkpoint (and `latest`), model.pt and best_model.pt."""
    if not run_dir.is_dir():
        return {}
    keep = ["model.pt", "best_model.pt", "args.json"]
    name = latest_name(run_dir)
    if name:
        keep += ["checkpoints/latest", f"checkpoints/{name}"]
    return {k: v for k, v in tree(run_dir).items() if any(k == p or k.startswith(p + "/") for p in keep)}


def file_name(f) -> str:
    return os.path.basename(getattr(f, "name", "") or "")


def fd_name(fd) -> str:
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) if isinstance(fd, int) else ""


def torch_zip_error(code: int = errno.ENOSPC) -> RuntimeError:
    """What torch.save into a file object raises on a full disk: the zip writer's error, the OSError its context."""
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    error.__context__ = OSError(code, os.strerror(code))
    return error


def numpy_short_write() -> OSError:
    return OSError("725232 requested and 126944 written")  # numpy's tofile: no errno


# site: (module, function, which calls count, the n-th of them fails, its error, the step the run stops at)
SITES = {
    "buffer-first-checkpoint": (
        np.lib.format,
        "write_array",
        lambda f, *a, **k: file_name(f) == "obs.npy",
        1,
        enospc,
        EVERY,
    ),
    "buffer-later-checkpoint-numpy-short-write": (
        np.lib.format,
        "write_array",
        lambda f, *a, **k: file_name(f) == "rewards.npy",
        2,
        numpy_short_write,
        2 * EVERY,
    ),
    "state-later-checkpoint": (
        torch,
        "save",
        lambda obj, f: file_name(f) == ".state.pt.tmp",
        2,
        torch_zip_error,
        2 * EVERY,
    ),
    "latest-switch-io-error": (
        os,
        "fsync",
        lambda fd: fd_name(fd) == ".latest.tmp",
        2,
        lambda: OSError(errno.EIO, os.strerror(errno.EIO)),
        2 * EVERY,
    ),
    "model-later-quota": (
        torch,
        "save",
        lambda obj, f: file_name(f) == ".model.pt.tmp",
        2,
        lambda: torch_zip_error(errno.EDQUOT),
        2 * EVERY,
    ),
    "best-model-first": (torch, "save", lambda obj, f: file_name(f) == ".best_model.pt.tmp", 1, torch_zip_error, EVERY),
    "args-json": (os, "fsync", lambda fd: fd_name(fd) == ".args.json.tmp", 1, enospc, 0),
    "args-json-read-only": (
        os,
        "fsync",
        lambda fd: fd_name(fd) == ".args.json.tmp",
        1,
        lambda: OSError(errno.EACCES, os.strerror(errno.EACCES)),
        0,
    ),
}
MENTIONS = {
    "buffer": f"checkpoints/{step_name(EVERY)} (No space left on device) at step {EVERY}",
    "state": f"checkpoints/{step_name(2 * EVERY)} (No space left on device) at step {2 * EVERY}",
    "latest": f"checkpoints/{step_name(2 * EVERY)} (Input/output error) at step {2 * EVERY}",
    "model": f"model.pt (Disk quota exceeded) at step {2 * EVERY}",
    "best": f"best_model.pt (No space left on device) at step {EVERY}",
    "args": "args.json (",
}
FINISH = {"buffer-first-checkpoint", "state-later-checkpoint"}  # these also resume to the end (the others: cost)


def one_error_line(err: str, *must_mention: str) -> str:
    """The one line of the failure; the evaluation results printed before it are the run's normal output."""
    return assert_one_error_line(
        "\n".join(x for x in err.splitlines() if not re.match(r"step \d+: eval return", x)), *must_mention
    )


def no_temporaries(run_dir: Path) -> None:
    left = [p for p in run_dir.rglob("*") if p.name.startswith(".") or p.name.endswith(".part.mp4")]
    assert not left, f"temporary files left: {left}"


@pytest.mark.parametrize("site", list(SITES))
def test_failed_write_exits_74_in_one_line_and_resume_auto_finishes(reference, tmp_path, monkeypatch, site):
    module, name, matches, nth, error, stop_step = SITES[site]
    run_dir = tmp_path / "runs" / "r"
    with monkeypatch.context() as m:
        fault = Fault(m, module, name, matches, nth, error, run_dir)
        code, err = main_in(tmp_path, *FLAGS)
    assert fault.fired, f"the fault at {site} was never reached"
    assert code == sac.EXIT_IO_ERROR == 74, err
    line = one_error_line(err)
    mention = MENTIONS["state" if "short-write" in site else site.split("-")[0]]
    assert mention in line, line
    assert str(run_dir) in line or "runs/r" in line
    if site.endswith("read-only"):
        assert "writable" in line, line
    elif "io-error" in site:
        assert "check the disk" in line, line
    else:
        assert "free about" in line and " MB at " in line, line
    no_temporaries(run_dir)
    assert snapshot(run_dir) == fault.before, "the previous checkpoint or model files changed"
    if stop_step > EVERY:  # the checkpoint before the failed one stays what `latest` names, and loads
        assert latest_name(run_dir) == step_name(stop_step - EVERY)
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", step_name(stop_step - EVERY)]
        assert "the last checkpoint" in line and "resume with: python sac_continuous.py --resume" in line
        sac.read_checkpoint(latest_ckpt(run_dir))
    else:
        assert latest_name(run_dir) is None and "no checkpoint was written yet" in line
    if site in FINISH:
        code, err = main_in(tmp_path, *FLAGS)
        assert code == 0, err
        assert_same_checkpoint(latest_ckpt(reference), latest_ckpt(run_dir))
        assert_same_model_file(reference / "model.pt", run_dir / "model.pt")
        assert_same_model_file(reference / "best_model.pt", run_dir / "best_model.pt")


def test_failed_event_write_stops_the_run_in_one_line(tmp_path, monkeypatch):
    """TensorBoard writes from a thread, which dies on a failed write: the run stops at the next event
    (not at the end, not silently, no thread traceback), with the checkpoint before it intact."""
    from tensorboard.compat.tensorflow_stub.io import gfile

    run_dir = tmp_path / "runs" / "r"
    original, calls = gfile.LocalFileSystem.append, []

    def append(self, filename, *args, **kwargs):
        if os.path.basename(os.fsdecode(filename)).startswith("events.") and latest_name(run_dir) == step_name(EVERY):
            calls.append(filename)
            if len(calls) == 1:
                raise enospc()
        return original(self, filename, *args, **kwargs)

    monkeypatch.setattr(gfile.LocalFileSystem, "append", append)
    before = {}
    original_save = sac.save_checkpoint

    def save_checkpoint(run_dir_, state, rb):
        path = original_save(run_dir_, state, rb)
        before.update(snapshot(run_dir))
        return path

    monkeypatch.setattr(sac, "save_checkpoint", save_checkpoint)
    thread_errors = []  # what would reach stderr as "Exception in thread ..." with a traceback
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    monkeypatch.setattr(sac, "_thread_excepthook", thread_errors.append)
    code, err = main_in(tmp_path, *FLAGS)
    assert not thread_errors, [e.exc_value for e in thread_errors]
    assert calls, "no event was written after the first checkpoint"
    assert code == 74, err
    line = one_error_line(err, "events.out.tfevents.", "No space left on device", "the last checkpoint")
    stopped_at = int(line.split(" at step ")[1].split(";")[0])
    assert EVERY < stopped_at <= 2 * EVERY, line  # at the latest at the flush before the next checkpoint
    assert latest_name(run_dir) == step_name(EVERY)
    assert {k: v for k, v in snapshot(run_dir).items() if "checkpoints" in k} == {
        k: v for k, v in before.items() if "checkpoints" in k
    }


def test_failed_video_write_removes_the_partial_file(tmp_path, monkeypatch):
    """ffmpeg's broken pipe on a full disk: DiskError naming the video, no .part.mp4 left, the old video kept."""
    import gymnasium as gym
    import imageio.v2 as imageio

    env = gym.make("Pendulum-v1")
    env.render = lambda: np.zeros((16, 16, 3), dtype=np.uint8)
    monkeypatch.setattr(sac, "make_env", lambda env_id, render_mode=None: env)

    def mimsave(path, frames, **kwargs):
        Path(path).write_bytes(b"\0" * 1000)
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(imageio, "mimsave", mimsave)
    monkeypatch.setattr(sac, "free_bytes", lambda path: 0)
    video = tmp_path / "videos" / "eval_step_000000000100.mp4"
    video.parent.mkdir()
    video.write_bytes(b"old video")
    actor = sac.Actor(3, np.array([-2.0], dtype=np.float32), np.array([2.0], dtype=np.float32))
    with pytest.raises(sac.DiskError) as info:
        sac.evaluate(actor, "Pendulum-v1", 1, 0, torch.device("cpu"), video)
    assert info.value.path == video and info.value.code == errno.ENOSPC
    assert str(info.value) == f"cannot write {video} (No space left on device)"
    assert sorted(p.name for p in video.parent.iterdir()) == [video.name] and video.read_bytes() == b"old video"


def test_resume_auto_clears_a_crashed_process_leftovers_before_probing(tmp_path, monkeypatch):
    """A process killed (or failed) mid-write left a temporary checkpoint, temp model files and a checkpoint
    that `latest` does not name; on this disk they are what keeps it full. `--resume auto` removes them
    before it probes the run directory, and continues from `latest`."""
    code, err = main_in(tmp_path, *FLAGS[:-1], str(2 * EVERY))
    assert code == 0, err
    run_dir = tmp_path / "runs" / "r"
    root = run_dir / "checkpoints"
    leftovers = [root / f".tmp_{step_name(TOTAL)}", root / step_name(EVERY), root / ".latest.tmp"]
    leftovers += [run_dir / ".model.pt.tmp", run_dir / ".best_model.pt.tmp", run_dir / "videos" / "eval.part.mp4"]
    for p in leftovers:
        if p.suffix in (".tmp", ".mp4"):
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(b"\0" * 1000)
        else:
            (p / "buffer").mkdir(parents=True)
            (p / "buffer" / "obs.npy").write_bytes(b"\0" * 1000)
    original = Path.write_text

    def write_text(self, *args, **kwargs):  # the disk is full while any leftover is there
        if self.name == ".write_test" and any(p.exists() for p in leftovers):
            raise enospc()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    code, err = main_in(tmp_path, *FLAGS)
    assert code == 0, err
    assert not any(p.exists() for p in leftovers)
    assert f"at step {2 * EVERY} from {step_name(2 * EVERY)}" in err
    assert sorted(p.name for p in root.iterdir()) == ["latest", step_name(TOTAL)]


def test_an_explicitly_resumed_checkpoint_is_never_cleared(tmp_path):
    """clear_leftovers keeps what `latest` names and the checkpoint being resumed, even if they differ."""
    root = tmp_path / "checkpoints"
    for name in (step_name(100), step_name(200), f".tmp_{step_name(300)}"):
        (root / name).mkdir(parents=True)
    (root / "latest").write_text(step_name(200) + "\n")
    sac.clear_leftovers(tmp_path, root / step_name(100))
    assert sorted(p.name for p in root.iterdir()) == ["latest", step_name(100), step_name(200)]


def test_without_latest_no_checkpoint_is_cleared(tmp_path):
    """No readable `latest`: the step_* directories may be all the run has, so only temporary ones go."""
    root = tmp_path / "checkpoints"
    for name in (step_name(100), f".tmp_{step_name(200)}"):
        (root / name).mkdir(parents=True)
    sac.clear_leftovers(tmp_path, None)
    assert sorted(p.name for p in root.iterdir()) == [step_name(100)]


@pytest.mark.parametrize("free_mb,warned", [(1, True), (10_000, False)])
def test_low_free_space_warns_once_and_runs_on(tmp_path, monkeypatch, free_mb, warned):
    """Free space below two checkpoints (about 2 x 5 MB here): one warning line at setup, and the run goes on."""
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(sac.shutil, "disk_usage", lambda path: usage._replace(free=free_mb * 10**6))
    code, err = main_in(tmp_path, *FLAGS[:-1], str(EVERY), "--eval-frequency", "0", "--learning-starts", "100")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == (1 if warned else 0), err
    if warned:
        assert "1.0 MB free" in warnings[0] and "twice" in warnings[0] and "--output-dir" in warnings[0]
    assert "Traceback" not in err and latest_name(tmp_path / "runs" / "r") == step_name(EVERY)


# ----------------------------------------------------------------------------------------------
# a real full disk: a small tmpfs (root only)
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root; the in-process faults above cover the same paths")
        where = tmp_path / f"tmpfs_{size}"
        where.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
        mounted.append(where)
        return where

    mounted = []
    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_real_full_tmpfs_at_the_first_and_a_later_checkpoint(small_tmpfs):
    """2 MB: the first checkpoint (about 3 MB) does not fit; 6 MB: the second does not fit next to the first and
    the model files. Then, with room made (remount larger), the same command finishes the run."""
    flags = [*FLAGS[:-1], "200", "--checkpoint-frequency", "100", "--eval-frequency", "0", "--learning-starts", "90"]
    for size in ("2m", "6m"):
        cwd = small_tmpfs(size)
        code, err = main_in(cwd, *flags)
        print(err)
        assert code == 74, err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in err, err
        line = errors[0]
        assert "(No space left on device)" in line and "free about" in line and f"MB at {cwd}" in line, line
        run_dir = cwd / "runs" / "r"
        no_temporaries(run_dir)
        if size == "2m":
            assert f"{step_name(100)} (No space" in line and latest_name(run_dir) is None, line
        else:
            assert f"{step_name(200)} (No space" in line and latest_name(run_dir) == step_name(100), line
            sac.read_checkpoint(latest_ckpt(run_dir))
    # room made: the same command continues the later case from its checkpoint to the end, nothing cleaned by hand
    subprocess.run(["mount", "-o", "remount,size=64m", str(cwd)], check=True)
    code, err = main_in(cwd, *flags)
    assert code == 0 and f"at step 100 from {step_name(100)}" in err, err
    assert sorted(p.name for p in (cwd / "runs" / "r" / "checkpoints").iterdir()) == ["latest", step_name(200)]
