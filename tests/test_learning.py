"""One short real Pendulum-v1 run (about 1.5 minutes on 2 CPU cores) must learn, log CleanRL's scalars and
leave loadable model files; its model.pt must then work with --eval-checkpoint."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sac_continuous as sac

TAGS = [
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "losses/qf1_values",
    "losses/qf2_values",
    "losses/qf1_loss",
    "losses/qf2_loss",
    "losses/qf_loss",
    "losses/actor_loss",
    "losses/alpha",
    "losses/alpha_loss",
    "eval/mean_return",
    "eval/std_return",
]
TOTAL, LEARNING_STARTS = 6000, 1000


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("learn")
    res = run_script(
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        str(TOTAL),
        "--learning-starts",
        str(LEARNING_STARTS),
        "--seed",
        "1",
        "--eval-frequency",
        "0",
        "--eval-episodes",
        "10",
        "--checkpoint-frequency",
        "0",
        "--run-name",
        "p",
        cwd=cwd,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = cwd / "runs" / "p"
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # keep every point
    events.Reload()
    return run_dir, events, res


def test_pendulum_learns(pendulum_run):
    _, events, _ = pendulum_run
    evals = events.Scalars("eval/mean_return")
    assert [e.step for e in evals] == [TOTAL]  # --eval-frequency 0: one evaluation, at the end
    # a random policy scores about -1200; one that swings the pendulum up and holds it, above -300
    assert evals[-1].value > -300, evals[-1].value


def test_tensorboard_has_every_cleanrl_tag_with_sane_points(pendulum_run):
    _, events, _ = pendulum_run
    assert set(TAGS) <= set(events.Tags()["scalars"])
    lengths = events.Scalars("charts/episodic_length")
    assert [e.step for e in lengths] == list(range(200, TOTAL + 1, 200))  # every episode, at its last step
    assert all(e.value == 200 for e in lengths)  # Pendulum-v1 is cut at 200 steps
    returns = [e.value for e in events.Scalars("charts/episodic_return")]
    assert len(returns) == TOTAL // 200 and all(-2000 < r <= 0 for r in returns)
    # losses every 100 updates; one update per step after learning starts
    assert [e.step for e in events.Scalars("losses/qf_loss")] == list(range(LEARNING_STARTS + 100, TOTAL + 1, 100))
    alphas = [e.value for e in events.Scalars("losses/alpha")]
    assert alphas[0] != pytest.approx(0.1, abs=1e-6) and all(a > 0 for a in alphas)  # autotuned from --alpha 0.1
    assert all(np.isfinite(e.value) for tag in TAGS for e in events.Scalars(tag))


def test_output_files(pendulum_run):
    run_dir, events, _ = pendulum_run
    args = json.loads((run_dir / "args.json").read_text())
    assert args["env_id"] == "Pendulum-v1" and args["total_timesteps"] == TOTAL and args["seed"] == 1
    assert not (run_dir / "checkpoints").exists()  # --checkpoint-frequency 0: none
    for name in ("model.pt", "best_model.pt"):
        model = torch.load(run_dir / name, weights_only=True)
        assert model["env_id"] == "Pendulum-v1" and model["global_step"] == TOTAL
        actor = sac.Actor(3, np.array([-2.0], np.float32), np.array([2.0], np.float32))
        actor.load_state_dict(model["actor"])  # a complete actor state dict for Pendulum's sizes
        for critic in ("qf1", "qf2"):
            sac.SoftQNetwork(3, 1).load_state_dict(model[critic])
    # one evaluation: best_model.pt is that model
    model, best = (torch.load(run_dir / n, weights_only=True) for n in ("model.pt", "best_model.pt"))
    assert all(torch.equal(model["actor"][k], best["actor"][k]) for k in model["actor"])


def mean_return(stdout):
    m = re.search(r"mean return (-?\d+\.\d) ± (\d+\.\d) over (\d+) episodes", stdout)
    assert m, stdout
    return float(m[1]), int(m[3])


def test_eval_checkpoint_reproduces_the_final_evaluation(pendulum_run):
    """Same model, seed and episode count as the run's last evaluation: the same mean return."""
    run_dir, events, _ = pendulum_run
    res = run_script(
        "--eval-checkpoint",
        str(run_dir / "model.pt"),
        "--env-id",
        "Pendulum-v1",
        "--seed",
        "1",
        "--eval-episodes",
        "10",
        cwd=run_dir.parent.parent,
    )
    assert res.returncode == 0, res.stderr
    mean, episodes = mean_return(res.stdout)
    assert episodes == 10
    assert mean == pytest.approx(events.Scalars("eval/mean_return")[-1].value, abs=0.051)
