"""--capture-video: training and --eval-checkpoint record MP4s of the evaluated episode; a failed video write exits 74;
without MuJoCo's OpenGL library, or pygame for a classic-control env, a one-line refusal before anything is written."""

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import SCRIPT, error_line, main_in, ok, run_script, scalars, temporaries

VIDEO = ["--env-id", "InvertedPendulum-v5", "--total-timesteps", 60, "--learning-starts", 20, "--batch-size", 16]
VIDEO += ["--buffer-size", 100, "--eval-frequency", 30, "--eval-episodes", 1, "--checkpoint-frequency", 0]
VIDEO += ["--capture-video", "--device", "cpu", "--run-name", "v"]


def assert_rendered_episode(path, episode_return):
    """One 480x480 frame per step of the episode: InvertedPendulum-v5 gives 1 per step but 0 on the terminating
    one, so the untrained policy's (terminated) episode had return + 1 steps. Not blank, and the pole moves."""
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        frames = np.stack(list(iter(reader)))
    assert frames.shape == (round(episode_return) + 1, 480, 480, 3) and frames.std() > 10
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.5


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}  # what the script picks without CUDA
    if subprocess.run([sys.executable, "-c", "import mujoco"], env=env, capture_output=True).returncode:
        pytest.skip(f"MUJOCO_GL={env['MUJOCO_GL']}: the OpenGL library does not load (apt-get install libosmesa6)")
    cwd = tmp_path_factory.mktemp("video")
    ok(run_script(cwd, *VIDEO))
    return cwd / "runs" / "v"


def test_training_records_one_video_per_evaluation(video_run):
    assert sorted(p.name for p in (video_run / "videos").iterdir()) == [
        "eval_step_000000000030.mp4",
        "eval_step_000000000060.mp4",
    ]
    for step, value in scalars(video_run)["eval/mean_return"]:
        assert_rendered_episode(video_run / "videos" / f"eval_step_{step:012d}.mp4", value)


def test_eval_checkpoint_records_the_evaluated_episode(video_run, tmp_path):
    flags = ["--eval-checkpoint", video_run / "model.pt", "--env-id", "InvertedPendulum-v5", "--eval-episodes", 1]
    res = ok(run_script(tmp_path, *flags, "--capture-video", "--device", "cpu"))
    video = video_run / "videos" / "eval_model.mp4"
    assert f"video: {video}" in res.out
    assert_rendered_episode(video, float(re.search(r"mean return (\d+\.\d)", res.out)[1]))


FULL_AT_SECOND_VIDEO = """
import errno, os, sys
from pathlib import Path
import imageio.v2 as imageio
original, calls = imageio.mimsave, [0]
def mimsave(path, *args, **kwargs):  # the second video: ffmpeg wrote part of it, then the disk was full
    calls[0] += 1
    if calls[0] == 2:
        Path(path).write_bytes(bytes(1000))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return original(path, *args, **kwargs)
imageio.mimsave = imageio.mimwrite = mimsave
import sac_continuous as sac
sys.argv[0] = sac.__file__
sac.main()
"""


def test_a_failed_video_write_exits_74_in_one_line_and_leaves_no_partial_file(video_run, tmp_path):
    (tmp_path / "full.py").write_text(FULL_AT_SECOND_VIDEO)
    res = run_script(tmp_path, *VIDEO, script=tmp_path / "full.py")
    error_line(res, "eval_step_000000000060.mp4", "(No space left on device)", "at step 60", code=74)
    run_dir = tmp_path / "runs" / "v"
    assert not temporaries(run_dir) and [p.name for p in (run_dir / "videos").iterdir()] == [
        "eval_step_000000000030.mp4"
    ]


NO_GL = """
import ctypes, sys
real_init = ctypes.CDLL.__init__
def init(self, name, *args, **kwargs):  # the OpenGL library made unloadable for this process only
    if name and ("OSMesa" in str(name) or "EGL" in str(name)):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")
    real_init(self, name, *args, **kwargs)
ctypes.CDLL.__init__ = init
import sac_continuous as sac
sys.argv[0] = sac.__file__
sac.main()
"""


@pytest.mark.parametrize("gl,video", [("osmesa", False), ("egl", True)], ids=["osmesa", "egl-capture-video"])
def test_a_missing_gl_library_is_refused_in_one_line(tmp_path, gl, video):
    (tmp_path / "no_gl.py").write_text(NO_GL)
    env = {k: v for k, v in os.environ.items() if k != "PYOPENGL_PLATFORM"} | {"MUJOCO_GL": gl}
    flags = ["--env-id", "Hopper-v5", "--total-timesteps", 50, "--device", "cpu", "--run-name", "r"]
    res = run_script(tmp_path, *flags, *(["--capture-video"] if video else []), script=tmp_path / "no_gl.py", env=env)
    error_line(res, f"MUJOCO_GL={gl}", {"osmesa": "libosmesa6", "egl": "libegl1"}[gl])
    assert not (tmp_path / "runs").exists()


def test_video_of_an_env_that_needs_pygame_is_refused_in_one_line(tmp_path, monkeypatch):
    """Pendulum-v1 renders with pygame, which is not a requirement: refused before anything is written."""
    if importlib.util.find_spec("pygame"):
        pytest.skip("pygame is installed: Pendulum-v1 can render here")
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))  # main() leaves a set MUJOCO_GL alone
    for flags in (["--total-timesteps", 50], ["--eval-checkpoint", SCRIPT]):
        res = main_in(tmp_path, "--env-id", "Pendulum-v1", "--capture-video", "--device", "cpu", *flags)
        error_line(res, "--capture-video", "pygame")
        assert list(tmp_path.iterdir()) == []
