"""Critic target, Polyak update, temperature loss, and what one SAC update changes."""

import numpy as np
import torch

import sac_continuous as sac


def test_critic_target_bootstraps_unless_terminated():
    r = torch.tensor([[1.0], [1.0]])
    q1, q2 = torch.tensor([[5.0], [5.0]]), torch.tensor([[3.0], [3.0]])
    logp = torch.tensor([[-2.0], [-2.0]])
    y = sac.critic_target(r, torch.tensor([[1.0], [0.0]]), q1, q2, logp, alpha=0.5, gamma=0.9)
    assert y[0].item() == 1.0  # terminated: the reward alone
    # not terminated (e.g. truncated by a time limit): r + gamma * (min Q - alpha * log pi)
    assert abs(y[1].item() - (1.0 + 0.9 * (3.0 + 0.5 * 2.0))) < 1e-6


def test_polyak_moves_target_by_exactly_tau():
    torch.manual_seed(0)
    online, target = sac.SoftQNetwork(4, 2), sac.SoftQNetwork(4, 2)
    before = [p.detach().clone() for p in target.parameters()]
    sac.polyak_update(online, target, tau=0.005)
    for b, p_t, p in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(p_t - b, 0.005 * (p - b), rtol=1e-5, atol=1e-7)


def test_alpha_loss_gradient_raises_alpha_when_entropy_is_too_low():
    target_entropy = -2.0
    for log_prob, alpha_should in ((torch.full((8, 1), 5.0), "rise"), (torch.full((8, 1), -5.0), "fall")):
        log_alpha = torch.zeros(1, requires_grad=True)
        sac.alpha_loss_fn(log_alpha, log_prob, target_entropy).backward()
        # entropy -log_prob = -5 < -2 must raise alpha: gradient descent step -grad > 0
        assert (log_alpha.grad.item() < 0) == (alpha_should == "rise")


def test_alpha_loss_does_not_reach_the_actor():
    log_alpha = torch.zeros(1, requires_grad=True)
    log_prob = torch.randn(8, 1, requires_grad=True)
    sac.alpha_loss_fn(log_alpha, log_prob, -1.0).backward()
    assert log_prob.grad is None


def _agent(**kw):
    torch.manual_seed(0)
    args = sac.Args(env_id="test", **kw)
    return sac.SAC(3, -np.ones(2, np.float32), np.ones(2, np.float32), args, torch.device("cpu"))


def _batch(n=32, seed=0):
    g = np.random.default_rng(seed)
    return (g.normal(size=(n, 3)).astype(np.float32), g.uniform(-1, 1, (n, 2)).astype(np.float32),
            g.normal(size=n).astype(np.float32), np.zeros(n, bool), g.normal(size=(n, 3)).astype(np.float32))


def test_autotune_trains_log_alpha_and_no_autotune_keeps_alpha():
    agent = _agent()
    start = agent.log_alpha.item()
    for i in range(5):
        agent.update(_batch(seed=i))
    assert agent.log_alpha.item() != start
    assert abs(agent.alpha - np.exp(agent.log_alpha.item())) < 1e-6
    fixed = _agent(autotune=False, alpha=0.3)
    for i in range(5):
        stats = fixed.update(_batch(seed=i))
    assert fixed.alpha == 0.3 and "alpha_loss" not in stats


def test_update_steps_critics_actor_and_targets():
    agent = _agent()
    snap = {k: [p.detach().clone() for p in m.parameters()] for k, m in agent.modules().items()}
    agent.update(_batch())
    for k, m in agent.modules().items():
        assert any(not torch.equal(a, b) for a, b in zip(snap[k], m.parameters())), k


def test_policy_frequency_delays_actor_updates():
    agent = _agent(policy_frequency=2)
    agent.update(_batch(seed=0))  # update 0: actor steps (twice)
    actor_after_first = [p.detach().clone() for p in agent.actor.parameters()]
    stats = agent.update(_batch(seed=1))  # update 1: critics only
    assert "actor_loss" not in stats
    assert all(torch.equal(a, b) for a, b in zip(actor_after_first, agent.actor.parameters()))
