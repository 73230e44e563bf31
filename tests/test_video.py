"""--capture-video on this host: a short InvertedPendulum-v5 run and --eval-checkpoint of its model record
MP4s whose decoded frames are the evaluated episode; without the OpenGL library (OSMesa on a CPU) or
pygame (classic-control envs), the script refuses in one line before writing anything."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SCRIPT, run_script

import sac_continuous as sac


def gl_loads(env: dict) -> bool:
    """Can `import mujoco` load its OpenGL library with the MUJOCO_GL the script would pick on this host?"""
    res = subprocess.run([sys.executable, "-c", "import mujoco"], env=env, capture_output=True, timeout=120)
    return res.returncode == 0


def video_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("MUJOCO_GL", "osmesa")  # what the script picks on a machine without CUDA
    return env


def read_frames(path):
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:  # not list(reader): its len() is inf for ffmpeg
        return np.stack([frame for frame in reader])


def steps(episode_return):
    """InvertedPendulum-v5 gives reward 1 per step but 0 on the terminating one (an untrained policy's episode
    terminates long before the time limit): the episode had return + 1 steps."""
    return round(episode_return) + 1


def assert_rendered_episode(path, n_frames):
    frames = read_frames(path)
    assert frames.shape == (n_frames, 480, 480, 3), frames.shape  # one frame per step of the first episode
    assert frames.std() > 10, "blank frames"
    # the pole moves: the episode's first and last frames differ (more than MP4 noise)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.5


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    if not gl_loads(video_env()):
        pytest.skip(f"MUJOCO_GL={video_env()['MUJOCO_GL']}: OpenGL library not loadable (apt-get install libosmesa6)")
    cwd = tmp_path_factory.mktemp("video")
    res = run_script(
        "--env-id",
        "InvertedPendulum-v5",
        "--total-timesteps",
        "60",
        "--learning-starts",
        "30",
        "--batch-size",
        "16",
        "--buffer-size",
        "100",
        "--eval-frequency",
        "30",
        "--eval-episodes",
        "1",
        "--checkpoint-frequency",
        "0",
        "--capture-video",
        "--device",
        "cpu",
        "--run-name",
        "v",
        cwd=cwd,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd / "runs" / "v", res


def test_training_records_one_video_per_evaluation(video_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = video_run
    videos = sorted(p.name for p in (run_dir / "videos").iterdir())
    assert videos == ["eval_step_000000000030.mp4", "eval_step_000000000060.mp4"]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    for point in events.Scalars("eval/mean_return"):
        assert_rendered_episode(run_dir / "videos" / f"eval_step_{point.step:012d}.mp4", steps(point.value))


def test_eval_checkpoint_records_the_evaluated_episode(video_run, tmp_path):
    run_dir, _ = video_run
    res = run_script(
        "--eval-checkpoint",
        str(run_dir / "model.pt"),
        "--env-id",
        "InvertedPendulum-v5",
        "--eval-episodes",
        "1",
        "--capture-video",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    mean = float(re.search(r"mean return (\d+\.\d)", res.stdout).group(1))
    video = run_dir / "videos" / "eval_model.mp4"
    assert f"video: {video}" in res.stdout
    assert_rendered_episode(video, steps(mean))


# The OpenGL library made unloadable for this process only: PyOpenGL opens it with ctypes.CDLL.
NO_GL_WRAPPER = """
import ctypes, sys
sys.path.insert(0, {root!r})
real_init = ctypes.CDLL.__init__

def init(self, name, *args, **kwargs):
    if name and ("OSMesa" in str(name) or "EGL" in str(name)):
        raise OSError(f"{{name}}: cannot open shared object file: No such file or directory")
    real_init(self, name, *args, **kwargs)

ctypes.CDLL.__init__ = init
import sac_continuous as sac
sys.argv[0] = sac.__file__
sac.main()
"""


@pytest.mark.parametrize(
    "gl,flags",
    [("osmesa", ["--capture-video"]), ("osmesa", []), ("egl", ["--capture-video"])],
    ids=["osmesa-video", "osmesa-no-video", "egl-video"],
)
def test_missing_gl_library_is_one_line(tmp_path, gl, flags):
    wrapper = tmp_path / "no_gl.py"
    wrapper.write_text(NO_GL_WRAPPER.format(root=str(ROOT)))
    env = {**os.environ, "MUJOCO_GL": gl, "OMP_NUM_THREADS": "1"}
    env.pop("PYOPENGL_PLATFORM", None)
    res = subprocess.run(
        [
            sys.executable,
            str(wrapper),
            "--env-id",
            "Hopper-v5",
            "--total-timesteps",
            "50",
            "--device",
            "cpu",
            "--run-name",
            "r",
            *flags,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == sac.EXIT_BAD_INPUT == 2, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    package = {"osmesa": "libosmesa6", "egl": "libegl1"}[gl]
    assert lines[0].startswith("error: ") and f"MUJOCO_GL={gl}" in lines[0] and package in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_gl.py"]  # nothing written


def test_video_of_an_env_that_cannot_render_is_refused(tmp_path, monkeypatch, capfd):
    """Pendulum-v1 renders with pygame, which is not a requirement: refused before anything is written."""
    try:
        import pygame  # noqa: F401

        pytest.skip("pygame is installed: Pendulum-v1 can render here")
    except ImportError:
        pass
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MUJOCO_GL", "egl")  # restored afterwards; main() leaves a set MUJOCO_GL alone
    for flags in (["--total-timesteps", "50"], ["--eval-checkpoint", str(tmp_path / "model.pt")]):
        monkeypatch.setattr(
            sys,
            "argv",
            [str(SCRIPT), "--env-id", "Pendulum-v1", "--capture-video", "--device", "cpu", "--run-name", "r", *flags],
        )
        with pytest.raises(SystemExit) as exit_info:
            sac.main()
        err = capfd.readouterr().err
        assert exit_info.value.code == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "--capture-video" in lines[0] and "pygame" in lines[0], err
        assert list(tmp_path.iterdir()) == []
