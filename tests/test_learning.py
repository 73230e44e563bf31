"""One real Pendulum-v1 run (about 1.5 minutes on 2 CPU cores) learns, logs CleanRL's scalars and eval/*, evaluates
the untrained actor once before learning starts, leaves loadable model files (best_model.pt the best evaluation's),
and --eval-checkpoint of its model.pt reproduces the final evaluation, writing nothing."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import ok, run_script, scalars, tree

import sac_continuous as sac

CLEANRL_TAGS = ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/qf1_values"]
CLEANRL_TAGS += ["losses/qf2_values", "losses/qf1_loss", "losses/qf2_loss", "losses/qf_loss", "losses/actor_loss"]
CLEANRL_TAGS += ["losses/alpha", "losses/alpha_loss", "eval/mean_return", "eval/std_return"]
TOTAL, LEARNING_STARTS, EVERY = 6000, 1000, 400


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("learn")
    flags = ["--env-id", "Pendulum-v1", "--total-timesteps", TOTAL, "--learning-starts", LEARNING_STARTS, "--seed", 1]
    flags += ["--eval-frequency", EVERY, "--eval-episodes", 10, "--checkpoint-frequency", 0, "--run-name", "p"]
    ok(run_script(cwd, *flags))
    return cwd / "runs" / "p", scalars(cwd / "runs" / "p")


def test_pendulum_learns_and_the_untrained_actor_is_evaluated_once(pendulum):
    _, curves = pendulum
    evals = curves["eval/mean_return"]
    # 400: the untrained actor, the curve's first point; 800 (still before learning starts) is skipped
    assert [s for s, _ in evals] == [EVERY, *range(3 * EVERY, TOTAL + 1, EVERY)]
    assert evals[-1][1] > -300, evals  # a random policy scores about -1200; one that swings up and holds, above -300


def test_tensorboard_has_cleanrls_tags_and_eval_with_sane_points(pendulum):
    _, curves = pendulum
    assert set(CLEANRL_TAGS) <= curves.keys()
    assert curves["charts/episodic_length"] == [(s, 200.0) for s in range(200, TOTAL + 1, 200)]  # cut at 200 steps
    assert all(-2000 < r <= 0 for _, r in curves["charts/episodic_return"])
    # losses every 100 updates, one update per step after learning starts
    assert [s for s, _ in curves["losses/qf_loss"]] == list(range(LEARNING_STARTS + 100, TOTAL + 1, 100))
    alphas = [a for _, a in curves["losses/alpha"]]
    assert alphas[0] != pytest.approx(0.1, abs=1e-6) and all(a > 0 for a in alphas)  # autotuned from --alpha 0.1
    assert all(np.isfinite(v) for tag in CLEANRL_TAGS for _, v in curves[tag])


def test_model_files_load_and_best_model_is_the_best_evaluation(pendulum):
    run_dir, curves = pendulum
    args = json.loads((run_dir / "args.json").read_text())
    assert args["env_id"] == "Pendulum-v1" and args["total_timesteps"] == TOTAL and args["seed"] == 1
    best_step = max(curves["eval/mean_return"], key=lambda p: p[1])[0]
    for name, step in (("model.pt", TOTAL), ("best_model.pt", best_step)):
        model = torch.load(run_dir / name, weights_only=True)
        assert model["env_id"] == "Pendulum-v1" and model["global_step"] == step, name
        sac.Actor(3, np.array([-2.0], np.float32), np.array([2.0], np.float32)).load_state_dict(model["actor"])
        for critic in ("qf1", "qf2"):
            sac.SoftQNetwork(3, 1).load_state_dict(model[critic])


def test_eval_checkpoint_reproduces_the_final_evaluation_and_writes_nothing(pendulum, tmp_path):
    run_dir, curves = pendulum
    before = tree(run_dir)
    flags = ["--eval-checkpoint", run_dir / "model.pt", "--env-id", "Pendulum-v1", "--seed", 1, "--eval-episodes", 10]
    res = ok(run_script(tmp_path, *flags))
    mean, episodes = re.search(r"mean return (-?\d+\.\d) ± \d+\.\d over (\d+)", res.out).groups()
    assert episodes == "10" and float(mean) == pytest.approx(curves["eval/mean_return"][-1][1], abs=0.051)
    assert tree(run_dir) == before and sorted(p.name for p in tmp_path.iterdir()) == ["stderr_0.txt", "stdout_0.txt"]
