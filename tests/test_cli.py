"""Command line: --help documents every flag; bad input gives one line on stderr, exit code 2, and writes
nothing. The refusals call main() in this process (the script's imports cost seconds per process); two
cases run the real script (a valid run, and a refusal whose torch warning must not reach stderr), and the
triton import order needs fresh processes. Every case uses flags that would make a run finish in seconds,
so a check that went missing shows as a wrong exit code, not as a hung test."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SCRIPT

import sac_continuous as sac

# A complete, tiny Pendulum-v1 run: each case below breaks exactly one thing in it.
FAST = {
    "--env-id": "Pendulum-v1",
    "--total-timesteps": "50",
    "--learning-starts": "10",
    "--batch-size": "8",
    "--buffer-size": "100",
    "--eval-episodes": "1",
    "--checkpoint-frequency": "0",
    "--device": "cpu",
    "--output-dir": "out",
    "--run-name": "r",
}


def flags(**changes):
    """FAST with changes (name_with_underscores=value; None removes the flag) as an argument list."""
    merged = dict(FAST)
    for name, value in changes.items():
        key = "--" + name.replace("_", "-")
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    return [x for kv in merged.items() for x in kv]


def snapshot(root):
    """Every file and directory under root, with each file's size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns) if name in filenames else "dir"
    return out


def assert_one_line_error(res, *words):
    assert res.returncode == sac.EXIT_BAD_INPUT == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for w in words:
        assert w in lines[0], lines[0]


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def main_here(monkeypatch, tmp_path, capfd, one_thread):
    """main_here(*args) -> Result of sac_continuous.main() called in this process, in tmp_path, with its
    exit code and what it wrote to stdout/stderr; signal handlers restored afterwards."""
    monkeypatch.chdir(tmp_path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def call(*args):
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, args)])
        capfd.readouterr()
        try:
            with pytest.raises(SystemExit) as exit_info:
                sac.main()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        out = capfd.readouterr()
        return Result(exit_info.value.code, out.out, out.err)

    return call


# CleanRL's sac_continuous_action.py flags that this script keeps, and the ones it adds. A fixed list:
# renaming or dropping a flag in Args must fail here, not silently change the list the test checks.
CLEANRL_FLAGS = [
    "--env-id",
    "--total-timesteps",
    "--seed",
    "--torch-deterministic",
    "--capture-video",
    "--buffer-size",
    "--gamma",
    "--tau",
    "--batch-size",
    "--learning-starts",
    "--policy-lr",
    "--q-lr",
    "--policy-frequency",
    "--target-network-frequency",
    "--alpha",
    "--autotune",
]
OWN_FLAGS = [
    "--device",
    "--num-envs",
    "--eval-frequency",
    "--eval-episodes",
    "--checkpoint-frequency",
    "--resume",
    "--eval-checkpoint",
    "--run-name",
    "--output-dir",
    "--log-frequency",
    "--compile",
    "--cudagraphs",
]


def test_help_documents_every_flag(main_here):
    res = main_here("--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.translate(str.maketrans("│╭╮╰╯─", "      ")).split())  # tyro's box, unwrapped
    for flag in CLEANRL_FLAGS + OWN_FLAGS:
        assert flag + " " in text or flag + "," in text, flag
    # the field docstrings are the flags' help texts
    for words in (
        "the id of a gymnasium environment",
        "replay buffer capacity in observation slots",
        "target smoothing coefficient",
        "evaluate this model.pt",
        "learn alpha so that the policy entropy",
    ):
        assert words in text, words
    # the FAST flags below are real flags (otherwise the refusal cases would prove nothing)
    for flag in FAST:
        assert flag in text


def test_fast_flags_make_a_valid_run(run, tmp_path):
    """The baseline every refusal below is a one-change variant of: it succeeds, and it does write."""
    res = run(*flags())
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "r" / "model.pt").is_file()


BAD = {
    "unknown env": (dict(env_id="NotAnEnv-v0"), ["NotAnEnv-v0"]),
    "discrete env": (dict(env_id="CartPole-v1"), ["CartPole-v1", "Discrete"]),
    "batch larger than buffer": (dict(batch_size=512, buffer_size=256), ["--batch-size", "--buffer-size"]),
    "zero steps": (dict(total_timesteps=0), ["--total-timesteps"]),
    "zero envs": (dict(num_envs=0), ["--num-envs"]),
    "resume auto without run name": (dict(resume="auto", run_name=None), ["--resume auto", "--run-name"]),
    "missing eval checkpoint": (dict(eval_checkpoint="missing/model.pt"), ["missing/model.pt", "does not exist"]),
    "cuda without CUDA": (dict(device="cuda"), ["--device cuda", "CUDA is not available"]),
    "gamma 0": (dict(gamma=0), ["--gamma", "(0, 1]"]),
    "tau 2": (dict(tau=2), ["--tau", "(0, 1]"]),
    "resume a missing path": (dict(resume="missing/run"), ["--resume missing/run", "no checkpoint"]),
    "resume with eval checkpoint": (dict(resume="auto", eval_checkpoint="model.pt"), ["--resume", "--eval-checkpoint"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_and_nothing_written(main_here, tmp_path, case):
    if case == "cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    changes, words = BAD[case]
    res = main_here(*flags(**changes))
    assert_one_line_error(res, *words)
    assert snapshot(tmp_path) == {}


def test_cudagraphs_off_cuda_is_refused(main_here, tmp_path):
    """CUDA graphs exist only on CUDA: --device cpu, and auto on a machine without CUDA, are refused."""
    res = main_here(*flags(), "--cudagraphs")
    assert_one_line_error(res, "--cudagraphs", "CUDA", "cpu")
    assert snapshot(tmp_path) == {}
    if not torch.cuda.is_available():
        res = main_here(*flags(device="auto"), "--cudagraphs")
        assert_one_line_error(res, "--cudagraphs", "CUDA")
        assert snapshot(tmp_path) == {}


def test_compile_on_cpu_without_a_compiler_is_refused(main_here, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    res = main_here(*flags(), "--compile")
    assert_one_line_error(res, "--compile", "no-such-compiler")
    assert snapshot(tmp_path) == {}


def test_unwritable_output_dir(main_here, tmp_path):
    (tmp_path / "file").write_text("x")  # a directory below a regular file cannot exist, even for root
    before = snapshot(tmp_path)
    res = main_here(*flags(output_dir="file/sub"))
    assert_one_line_error(res, "file/sub", "--output-dir")
    assert snapshot(tmp_path) == before and (tmp_path / "file").read_text() == "x"


def test_existing_run_dir_is_refused_and_left_untouched(main_here, tmp_path):
    old = tmp_path / "out" / "r"
    old.mkdir(parents=True)
    (old / "model.pt").write_text("precious")
    (old / "args.json").write_text("{}")
    before = snapshot(tmp_path)
    res = main_here(*flags())
    assert_one_line_error(res, "--resume auto", "--run-name")
    assert snapshot(tmp_path) == before
    assert (old / "model.pt").read_text() == "precious" and (old / "args.json").read_text() == "{}"


def save_model(path, env_id, obs_dim, act_dim):
    """A model file as the script writes it, for an untrained agent (nothing is trained)."""
    torch.manual_seed(0)
    agent = sac.SAC(
        obs_dim, -np.ones(act_dim, np.float32), np.ones(act_dim, np.float32), sac.Args(), torch.device("cpu")
    )
    sac.save_model(agent, env_id, 0, path)
    return path


def test_eval_checkpoint_of_another_env_is_refused(main_here, tmp_path):
    path = save_model(tmp_path / "model.pt", "Hopper-v5", 11, 3)
    before = snapshot(tmp_path)
    res = main_here(*flags(eval_checkpoint=path))
    assert_one_line_error(res, "Hopper-v5", "Pendulum-v1")
    assert snapshot(tmp_path) == before


GARBAGE = {
    "random": np.random.default_rng(0).bytes(4096),
    # a pickle PROTO opcode with an unknown protocol first: torch also prints a warning, which must not show
    "bad-pickle-protocol": b"\x80\xb3" + bytes(range(256)) * 16,
    "empty": b"",
}


@pytest.mark.parametrize("content", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_eval_checkpoint_is_refused(main_here, run, tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    before = snapshot(tmp_path)
    # torch's warning for the unknown protocol comes at import-time settings of a real process: run that one for real
    res = (
        run(*flags(eval_checkpoint=path))
        if content == GARBAGE["bad-pickle-protocol"]
        else main_here(*flags(eval_checkpoint=path))
    )
    assert_one_line_error(res, str(path))
    assert snapshot(tmp_path) == before


def test_eval_checkpoint_of_the_right_env_runs_and_writes_nothing(main_here, tmp_path):
    path = save_model(tmp_path / "model.pt", "Pendulum-v1", 3, 1)
    before = snapshot(tmp_path)
    res = main_here(*flags(eval_checkpoint=path, eval_episodes=2))
    assert res.returncode == 0, res.stderr
    assert "mean return" in res.stdout and "over 2 episodes" in res.stdout
    assert snapshot(tmp_path) == before


FAKE_TRITON = """
import json, os, sys
with open(os.environ["TRITON_PROBE"], "w") as f:  # what was already loaded when triton was imported
    json.dump({"mujoco_loaded": "mujoco" in sys.modules}, f)
"""


@pytest.mark.parametrize("mujoco_gl", ["osmesa", "egl"])
def test_triton_is_imported_before_mujoco_under_osmesa(tmp_path, mujoco_gl):
    """OSMesa and torch's triton (CUDA builds) each carry an LLVM; triton imported after OSMesa segfaults
    the process (seen in the CUDA Docker image with --capture-video on a CPU). A stand-in triton records
    whether mujoco was loaded before it."""
    (tmp_path / "fake" / "triton").mkdir(parents=True)
    (tmp_path / "fake" / "triton" / "__init__.py").write_text(FAKE_TRITON)
    probe = tmp_path / "probe.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path / "fake"),
        "TRITON_PROBE": str(probe),
        "MUJOCO_GL": mujoco_gl,
        "OMP_NUM_THREADS": "1",
    }
    res = subprocess.run(
        [sys.executable, str(sac.__file__), *flags(total_timesteps=0)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(res, "--total-timesteps")  # the import comes first, before any input check
    if mujoco_gl == "osmesa":
        assert json.loads(probe.read_text()) == {"mujoco_loaded": False}
    else:  # EGL has no such clash: no reason to import triton
        assert not probe.exists()


def test_progress_labels_the_random_phase_and_takes_the_eta_from_the_training_rate(monkeypatch):
    """1,000 random steps per second, then 10 training steps per second: no ETA until training is measured,
    then the one the training rate gives (the random phase's rate would promise a 100 times shorter run)."""
    clock = [0.0]
    monkeypatch.setattr(sac.time, "time", lambda: clock[0])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress = sac.Progress(total=30_000, start=0, learning_starts=25_000)
    try:
        task = progress.bar.tasks[0]
        clock[0] = 10.0
        progress.update(10_000, -5.0)
        assert task.description == "SAC: random actions until 25,000" and task.fields["eta"] == "-"
        clock[0] = 25.0
        progress.update(25_000, -5.0)  # training starts: its rate is measured from here
        clock[0] = 125.0
        progress.update(26_000, -4.0)
        assert task.description == "SAC: training" and task.fields["sps"] == "10"
        assert task.fields["eta"] == "0:06:40"  # 4,000 steps left at 10 per second
    finally:
        progress.close()
