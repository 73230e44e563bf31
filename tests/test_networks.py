"""Networks: the actor's tanh-squashed, rescaled Gaussian (its log-density against torch's own distribution, its
bounds, the evaluation action, the log-std clamp) and the critic's Q for the actor step."""

import numpy as np
import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import AffineTransform, TanhTransform

import sac_continuous as sac

LOW = np.array([-2.0, -1.0, 0.0], dtype=np.float32)
HIGH = np.array([2.0, 3.0, 1.0], dtype=np.float32)  # asymmetric: scale (2, 2, 0.5) and bias (0, 1, 0.5) both matter
SCALE, BIAS = torch.as_tensor((HIGH - LOW) / 2), torch.as_tensor((HIGH + LOW) / 2)
OBS_DIM = 5


def make_actor():
    torch.manual_seed(0)
    return sac.Actor(OBS_DIM, LOW, HIGH)


def sample_and_reference(actor, obs, monkeypatch):
    """actor.get_action(obs) with its Gaussian noise fixed, and the same noise pushed through torch's tanh and affine
    transforms, whose caches let log_prob use this very u (exact even where tanh saturates)."""
    eps = torch.randn(obs.shape[0], 3)
    monkeypatch.setattr(torch, "randn_like", lambda t: eps.clone())
    with torch.no_grad():
        action, log_prob = actor.get_action(obs)
        mean, log_std = actor(obs)
    monkeypatch.undo()
    dist = TransformedDistribution(
        Normal(mean, log_std.exp()), [TanhTransform(cache_size=1), AffineTransform(BIAS, SCALE, cache_size=1)]
    )
    y = mean + log_std.exp() * eps
    for transform in dist.transforms:
        y = transform(y)
    return action, log_prob, y, dist.log_prob(y).sum(-1, keepdim=True)


@pytest.mark.parametrize("mean_bias", [0.0, 50.0, -50.0], ids=["plain", "saturated-high", "saturated-low"])
def test_sample_is_the_squashed_gaussian_with_its_log_density(mean_bias, monkeypatch):
    """tanh(+-50) rounds to +-1 in float32, where the naive log(1 - tanh^2) is log 0."""
    actor = make_actor()
    with torch.no_grad():
        actor.mean.bias.fill_(mean_bias)
    action, log_prob, ref_action, ref_log_prob = sample_and_reference(actor, torch.randn(512, OBS_DIM) * 3, monkeypatch)
    assert log_prob.shape == (512, 1) and torch.isfinite(log_prob).all()
    torch.testing.assert_close(action, ref_action)
    torch.testing.assert_close(log_prob, ref_log_prob, rtol=1e-5, atol=1e-3 if mean_bias else 1e-4)
    if mean_bias:
        assert torch.equal(action, torch.as_tensor(HIGH if mean_bias > 0 else LOW).expand_as(action))


def test_actions_fill_the_bounds_and_the_evaluation_action_is_tanh_of_the_mean():
    actor = make_actor()
    low, high = torch.as_tensor(LOW), torch.as_tensor(HIGH)
    with torch.no_grad():
        for scale in (0.1, 10.0, 1000.0):
            obs = torch.randn(2000, OBS_DIM) * scale
            for action in (actor.get_action(obs)[0], actor.deterministic(obs)):
                assert ((action >= low) & (action <= high)).all()
        action = actor.get_action(torch.randn(5000, OBS_DIM) * 10)[0]
        obs = torch.randn(16, OBS_DIM)
        torch.testing.assert_close(actor.deterministic(obs), torch.tanh(actor(obs)[0]) * SCALE + BIAS)
    assert ((action.min(0).values - low) < 0.05 * (high - low)).all()  # both ends of every dimension reached
    assert ((high - action.max(0).values) < 0.05 * (high - low)).all()


def test_log_std_is_clamped_to_minus_5_and_2():
    actor = make_actor()
    for bias, bound in ((100.0, 2.0), (-100.0, -5.0)):
        with torch.no_grad():
            actor.log_std.bias.fill_(bias)
            assert torch.all(actor(torch.randn(4, OBS_DIM))[1] == bound)


def test_critic_with_fixed_weights_is_the_same_q_with_a_gradient_for_the_action_only():
    """The actor's loss runs the critic with its weights held fixed, where the first layer is computed in two parts:
    the same values and dQ/da as the trained critic's pass, and no gradient into the weights."""
    torch.manual_seed(0)
    q = sac.SoftQNetwork(OBS_DIM, 3)
    obs, action = torch.randn(64, OBS_DIM), torch.randn(64, 3, requires_grad=True)
    trained = q(obs, action)
    dq_da = torch.autograd.grad(trained.sum(), action)[0]
    q.requires_grad_(False)
    fixed = q(obs, action)
    fixed.sum().backward()
    torch.testing.assert_close(fixed, trained, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(action.grad, dq_da, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in q.parameters())
