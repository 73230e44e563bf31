"""Critic target, Polyak averaging, temperature loss, and what one SAC update computes and changes."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sac_continuous as sac

pytestmark = pytest.mark.usefixtures("one_thread")

OBS_DIM, ACT_DIM = 3, 2


# ----------------------------------------------------------------------------------------------
# the loss functions
# ----------------------------------------------------------------------------------------------


def test_critic_target_bootstraps_from_the_smaller_q_unless_terminated():
    r = torch.tensor([[1.0], [1.0], [-2.0], [0.5]])
    term = torch.tensor([[1.0], [0.0], [0.0], [0.0]])  # rows 1-3: not terminated (e.g. truncated by a time limit)
    q1 = torch.tensor([[5.0], [5.0], [-4.0], [2.0]])
    q2 = torch.tensor([[3.0], [3.0], [7.0], [2.0]])  # the smaller one is q2 in row 1, q1 in row 2
    logp = torch.tensor([[-2.0], [-2.0], [1.5], [0.25]])
    alpha, gamma = 0.5, 0.9
    y = sac.critic_target(r, term, q1, q2, logp, alpha=alpha, gamma=gamma)
    assert y.shape == (4, 1)
    assert y[0].item() == 1.0  # terminated: the reward alone
    expected = [
        1.0 + gamma * (3.0 - alpha * -2.0),
        -2.0 + gamma * (-4.0 - alpha * 1.5),
        0.5 + gamma * (2.0 - alpha * 0.25),
    ]
    torch.testing.assert_close(y[1:, 0], torch.tensor(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("tau", [0.005, 0.3, 1.0])
def test_polyak_moves_each_target_parameter_by_exactly_tau_of_the_difference(tau):
    torch.manual_seed(0)
    online, target = sac.SoftQNetwork(4, 2), sac.SoftQNetwork(4, 2)
    before = [p.detach().clone() for p in target.parameters()]
    online_before = [p.detach().clone() for p in online.parameters()]
    sac.polyak_update(list(online.parameters()), list(target.parameters()), tau=tau)
    for b, p_t, p, p0 in zip(before, target.parameters(), online.parameters(), online_before):
        assert torch.equal(p, p0)  # the online network is untouched
        torch.testing.assert_close(p_t - b, tau * (p - b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("log_alpha_value", [0.0, -2.3])
def test_alpha_loss_value_and_gradient_direction(log_alpha_value):
    """J(alpha) = alpha * mean(-log pi - H_target). Entropy below the target -> dJ/dlog_alpha < 0, so a
    gradient-descent step raises alpha; entropy above the target -> alpha falls."""
    target_entropy = -2.0
    for log_prob, should in ((torch.full((8, 1), 5.0), "rise"), (torch.full((8, 1), -5.0), "fall")):
        # log_prob 5: entropy -5 < -2 (too deterministic); log_prob -5: entropy 5 > -2
        log_alpha = torch.tensor([log_alpha_value], requires_grad=True)
        loss = sac.alpha_loss_fn(log_alpha, log_prob, target_entropy)
        expected = np.exp(log_alpha_value) * (-log_prob.mean().item() - target_entropy)
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        loss.backward()
        assert (log_alpha.grad.item() < 0) == (should == "rise")
        assert log_alpha.grad.item() == pytest.approx(expected, rel=1e-6)  # d(alpha c)/dlog_alpha = alpha c


# ----------------------------------------------------------------------------------------------
# SAC.update on a tiny problem
# ----------------------------------------------------------------------------------------------


def make_agent(device="cpu", **kw):
    """A small SAC agent (also used by test_fast_path.py)."""
    torch.manual_seed(0)
    args = sac.Args(env_id="test", **kw)
    low, high = np.array([-1.0, 0.0], np.float32), np.array([1.0, 4.0], np.float32)
    agent = sac.SAC(OBS_DIM, low, high, args, torch.device(device))
    with torch.no_grad():  # targets different from the online critics, so using the wrong ones shows
        for p in (*agent.qf1_target.parameters(), *agent.qf2_target.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    return agent


def make_batch(n=32, seed=0):
    g = np.random.default_rng(seed)
    return (
        g.normal(size=(n, OBS_DIM)).astype(np.float32),
        g.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        g.normal(size=n).astype(np.float32),
        g.random(n) < 0.3,
        g.normal(size=(n, OBS_DIM)).astype(np.float32),
    )


def params(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("kw", [{}, {"autotune": False, "alpha": 0.3, "gamma": 0.9}])
def test_update_losses_are_the_sac_losses(kw):
    """Recompute the critic and actor losses of one update independently, with the same noise."""
    agent = make_agent(**kw)
    alpha, gamma = agent.alpha.item(), agent.args.gamma  # a float: agent.alpha is updated in place
    before = {k: copy.deepcopy(m) for k, m in agent.modules().items()}
    obs, act, rew, term, next_obs = (torch.as_tensor(np.asarray(x, np.float32)) for x in make_batch())

    torch.manual_seed(11)
    stats = agent.update(make_batch())

    torch.manual_seed(11)
    with torch.no_grad():
        next_a, next_logp = before["actor"].sample(next_obs)
        next_q = torch.min(before["qf1_target"](next_obs, next_a), before["qf2_target"](next_obs, next_a))
        y = rew[:, None] + gamma * (1 - term[:, None]) * (next_q - alpha * next_logp)
        qf1 = before["qf1"](obs, act)
        qf2 = before["qf2"](obs, act)
    torch.testing.assert_close(stats["qf1_loss"], F.mse_loss(qf1, y))
    torch.testing.assert_close(stats["qf2_loss"], F.mse_loss(qf2, y))
    torch.testing.assert_close(stats["qf_loss"], (F.mse_loss(qf1, y) + F.mse_loss(qf2, y)) / 2)
    torch.testing.assert_close(stats["qf1_values"], qf1.mean())
    torch.testing.assert_close(stats["qf2_values"], qf2.mean())
    # the actor step comes after the critic step: the critics it uses are the updated ones
    with torch.no_grad():
        pi, logp = before["actor"].sample(obs)
        min_q = torch.min(agent.qf1(obs, pi), agent.qf2(obs, pi))
    torch.testing.assert_close(stats["actor_loss"], (alpha * logp - min_q).mean())
    # the temperature step, on the actor step's log-probs, towards the target entropy -dim(A)
    if agent.args.autotune:
        target_entropy = -float(ACT_DIM)
        torch.testing.assert_close(stats["alpha_loss"], (alpha * (-logp - target_entropy)).mean())
    else:
        assert "alpha_loss" not in stats


def test_actor_step_leaves_the_critics_gradients_alone():
    """The actor loss differentiates through the critics with respect to the action only."""
    agent = make_agent()
    agent.q_optimizer.zero_grad(set_to_none=True)
    agent.update_actor(torch.randn(16, OBS_DIM))
    assert all(p.grad is None for p in agent.q_params)
    assert all(p.grad is not None for p in agent.actor.parameters())


def test_update_steps_critics_actor_and_moves_targets_by_tau():
    agent = make_agent(tau=0.1)
    snap = {k: params(m) for k, m in agent.modules().items()}
    agent.update(make_batch())
    for k in ("actor", "qf1", "qf2"):
        assert all(not torch.equal(a, b) for a, b in zip(snap[k], agent.modules()[k].parameters())), k
    for k in ("qf1", "qf2"):  # Polyak towards the online critic after its step
        for old, p_t, p in zip(
            snap[k + "_target"], agent.modules()[k + "_target"].parameters(), agent.modules()[k].parameters()
        ):
            torch.testing.assert_close(p_t.detach() - old, 0.1 * (p.detach() - old), rtol=1e-5, atol=1e-7)


def test_autotune_moves_log_alpha_against_the_alpha_loss_gradient():
    agent = make_agent(alpha=0.2)
    assert agent.alpha.item() == pytest.approx(0.2) and agent.log_alpha.item() == pytest.approx(np.log(0.2))
    stats = agent.update(make_batch())
    step = agent.log_alpha.item() - np.log(0.2)
    # dJ/dlog_alpha = J here (J = alpha * c): Adam's first step goes against its sign, by the learning rate
    assert step != 0 and np.sign(step) == -np.sign(stats["alpha_loss"].item())
    assert abs(step) == pytest.approx(agent.args.q_lr, rel=0.01)
    assert agent.alpha.item() == pytest.approx(np.exp(agent.log_alpha.item()), rel=1e-6)  # the alpha the losses use


def test_entropy_too_low_raises_alpha_in_a_real_update():
    """A nearly deterministic actor (log-std at its minimum) has entropy far below -dim(A): alpha must rise."""
    agent = make_agent()
    with torch.no_grad():
        agent.actor.log_std.bias.fill_(-100.0)
    start = agent.alpha.item()
    for i in range(3):
        agent.update(make_batch(seed=i))
    assert agent.alpha.item() > start


def test_no_autotune_keeps_alpha_fixed():
    agent = make_agent(autotune=False, alpha=0.3)
    assert agent.a_optimizer is None
    for i in range(5):
        stats = agent.update(make_batch(seed=i))
        assert "alpha_loss" not in stats and "actor_loss" in stats
    assert agent.alpha.item() == np.float32(0.3) and agent.log_alpha.item() == pytest.approx(np.log(0.3))


def test_update_reads_nothing_back_to_the_host(monkeypatch):
    """alpha stays a device tensor: an update makes no .item()/float() call, each of which would wait for
    a GPU (a sync per update). Only logging reads values back."""
    agent = make_agent()
    agent.update(make_batch())  # the first update may set things up

    def refuse(*a, **kw):
        raise AssertionError("host read-back (.item/float/bool) during an update")

    for name in ("item", "__float__", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    alpha = agent.alpha
    for i in range(3):
        agent.update(make_batch(seed=i))
    monkeypatch.undo()
    assert agent.alpha is alpha and isinstance(alpha, torch.Tensor)  # updated in place, never replaced
    assert agent.alpha.item() == pytest.approx(np.exp(agent.log_alpha.item()), rel=1e-6)


def test_alpha_step_sends_no_gradient_to_the_actor():
    agent = make_agent()
    agent.actor.zero_grad(set_to_none=True)
    _, log_pi = agent.actor.sample(torch.randn(16, OBS_DIM))  # a live graph into the actor
    agent.update_alpha(log_pi)  # the log-probs are detached inside: no gradient reaches them
    assert all(p.grad is None for p in agent.actor.parameters())
    assert agent.log_alpha.grad is not None


def test_policy_frequency_delays_and_repeats_actor_updates():
    agent = make_agent(policy_frequency=2)
    actor_steps = []
    original = agent.update_actor
    agent.update_actor = lambda obs: actor_steps.append(agent.n_updates) or original(obs)
    for i in range(4):
        stats = agent.update(make_batch(seed=i))
        assert ("actor_loss" in stats) == (i % 2 == 0)
    assert actor_steps == [0, 0, 2, 2]  # every 2nd update, twice (TD3/CleanRL's delayed updates)


def test_target_network_frequency_delays_polyak_updates():
    agent = make_agent(target_network_frequency=2)
    for i in range(4):
        targets = params(agent.qf1_target) + params(agent.qf2_target)
        agent.update(make_batch(seed=i))
        moved = any(
            not torch.equal(a, b)
            for a, b in zip(targets, [*agent.qf1_target.parameters(), *agent.qf2_target.parameters()])
        )
        assert moved == (i % 2 == 0)
