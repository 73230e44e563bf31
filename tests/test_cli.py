"""Command line: --help documents every flag; bad input gives one line, exit 2, and writes nothing."""

import dataclasses
import os

import pytest
import torch

import sac_continuous as sac


def test_help_documents_every_flag(run):
    res = run("--help")
    assert res.returncode == 0
    for field in dataclasses.fields(sac.Args):
        assert "--" + field.name.replace("_", "-") in res.stdout, field.name


def assert_one_line_error(res, *words):
    assert res.returncode == sac.EXIT_BAD_INPUT, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.stderr
    for w in words:
        assert w in lines[0], lines[0]


BAD = [
    (["--env-id", "NotAnEnv-v0"], ["NotAnEnv-v0"]),
    (["--env-id", "CartPole-v1"], ["Discrete", "Box"]),
    (["--env-id", "Pendulum-v1", "--batch-size", "512", "--buffer-size", "256"], ["--batch-size"]),
    (["--env-id", "Pendulum-v1", "--total-timesteps", "0"], ["--total-timesteps"]),
    (["--env-id", "Pendulum-v1", "--num-envs", "0"], ["--num-envs"]),
    (["--env-id", "Pendulum-v1", "--gamma", "1.5"], ["--gamma"]),
    (["--env-id", "Pendulum-v1", "--resume", "auto"], ["--run-name"]),
    (["--env-id", "Pendulum-v1", "--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "nonsense"], ["--device"]),
    (["--eval-checkpoint", "missing/model.pt", "--env-id", "Pendulum-v1"], ["does not exist"]),
]


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_and_nothing_written(run, tmp_path, args, words):
    res = run(*args, "--output-dir", "out")
    assert_one_line_error(res, *words)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir(run, tmp_path):
    (tmp_path / "file").write_text("x")
    res = run("--env-id", "Pendulum-v1", "--output-dir", "file/sub", "--total-timesteps", "10")
    assert_one_line_error(res, "file/sub")


def test_existing_run_dir_is_not_overwritten(run, tmp_path):
    old = tmp_path / "runs" / "r"
    old.mkdir(parents=True)
    (old / "model.pt").write_text("precious")
    res = run("--env-id", "Pendulum-v1", "--run-name", "r", "--total-timesteps", "10")
    assert_one_line_error(res, "--resume auto")
    assert sorted(p.name for p in old.iterdir()) == ["model.pt"] and (old / "model.pt").read_text() == "precious"


def _model(tmp_path, env_id, obs_dim, act_dim):
    torch.manual_seed(0)
    import numpy as np
    agent = sac.SAC(obs_dim, -np.ones(act_dim, np.float32), np.ones(act_dim, np.float32), sac.Args(), torch.device("cpu"))
    path = tmp_path / "model.pt"
    torch.save(sac.model_payload(agent, env_id, obs_dim, 0), path)
    return path


def test_eval_checkpoint_of_another_env_is_refused(run, tmp_path):
    path = _model(tmp_path, "Hopper-v5", 11, 3)
    res = run("--eval-checkpoint", str(path), "--env-id", "Pendulum-v1")
    assert_one_line_error(res, "Hopper-v5")


def test_garbage_eval_checkpoint_is_refused(run, tmp_path):
    path = tmp_path / "model.pt"
    # a pickle PROTO opcode with an unknown protocol first: torch would also print a warning
    path.write_bytes(b"\x80\xb3" + bytes(range(256)) * 16)
    res = run("--eval-checkpoint", str(path), "--env-id", "Pendulum-v1")
    assert_one_line_error(res, "unreadable")


def test_eval_only_runs_a_saved_model(run, tmp_path):
    path = _model(tmp_path, "Pendulum-v1", 3, 1)
    res = run("--eval-checkpoint", str(path), "--env-id", "Pendulum-v1", "--eval-episodes", "2")
    assert res.returncode == 0, res.stderr
    assert "mean return" in res.stdout
