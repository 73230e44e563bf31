"""A short real Pendulum-v1 run must learn, and leave the promised outputs."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_script

TAGS = ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/qf1_values", "losses/qf2_values",
        "losses/qf1_loss", "losses/qf2_loss", "losses/qf_loss", "losses/actor_loss", "losses/alpha",
        "losses/alpha_loss", "eval/mean_return", "eval/std_return"]


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("learn")
    res = run_script("--env-id", "Pendulum-v1", "--total-timesteps", "6000", "--learning-starts", "1000",
                     "--seed", "1", "--eval-frequency", "3000", "--eval-episodes", "10", "--checkpoint-frequency", "0",
                     "--run-name", "p", cwd=cwd, timeout=600)
    assert res.returncode == 0, res.stderr
    events = EventAccumulator(str(cwd / "runs" / "p"))
    events.Reload()
    return cwd / "runs" / "p", events, res


def test_pendulum_learns(pendulum_run):
    _, events, _ = pendulum_run
    evals = events.Scalars("eval/mean_return")
    assert evals[-1].step == 6000
    # a random policy scores about -1200; a learned one swings up and holds
    assert evals[-1].value > -300, [e.value for e in evals]


def test_outputs(pendulum_run):
    run_dir, events, _ = pendulum_run
    assert set(TAGS) <= set(events.Tags()["scalars"])
    assert json.loads((run_dir / "args.json").read_text())["env_id"] == "Pendulum-v1"
    for name in ("model.pt", "best_model.pt"):
        model = torch.load(run_dir / name, weights_only=True)
        assert model["env_id"] == "Pendulum-v1" and "mean.weight" in model["actor"]


def test_eval_checkpoint_reproduces_the_final_eval(pendulum_run):
    run_dir, events, _ = pendulum_run
    res = run_script("--eval-checkpoint", str(run_dir / "model.pt"), "--env-id", "Pendulum-v1", "--seed", "1",
                     "--eval-episodes", "10", cwd=run_dir)
    assert res.returncode == 0, res.stderr
    final = events.Scalars("eval/mean_return")[-1].value
    assert f"mean return {final:.1f}" in res.stdout
