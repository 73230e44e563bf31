"""Actor: log-density of the tanh-squashed, rescaled Gaussian; bounds; deterministic action; log-std clamp."""

import numpy as np
import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import AffineTransform, TanhTransform

import sac_continuous as sac

pytestmark = pytest.mark.usefixtures("one_thread")

LOW = np.array([-2.0, -1.0, 0.0], dtype=np.float32)
HIGH = np.array([2.0, 3.0, 1.0], dtype=np.float32)  # asymmetric: scale (2, 2, 0.5) and bias (0, 1, 0.5) both matter
OBS_DIM = 5
SCALE, BIAS = torch.as_tensor((HIGH - LOW) / 2), torch.as_tensor((HIGH + LOW) / 2)


def make_actor(seed=0):
    torch.manual_seed(seed)
    return sac.Actor(OBS_DIM, LOW, HIGH)


def reference(actor, obs, cache):
    """torch's own tanh-squashed, rescaled Gaussian with the actor's mean and std for obs."""
    with torch.no_grad():
        mean, log_std = actor(obs)
    return TransformedDistribution(
        Normal(mean, log_std.exp()), [TanhTransform(cache_size=1), AffineTransform(BIAS, SCALE, cache_size=cache)]
    )


def in_box(action):
    return bool(((action >= torch.as_tensor(LOW)) & (action <= torch.as_tensor(HIGH))).all())


def sample_with_noise(actor, obs, eps, monkeypatch):
    """actor.sample(obs) with its Gaussian noise fixed to eps."""

    def randn_like(t):
        assert t.shape == eps.shape
        return eps.clone()

    monkeypatch.setattr(torch, "randn_like", randn_like)
    with torch.no_grad():
        out = actor.sample(obs)
    monkeypatch.undo()
    return out


def reference_sample(actor, obs, eps):
    """Push the same noise through torch's distribution: u = mean + std * eps, then each transform, whose
    caches let log_prob use this very u instead of inverting the action (exact even when saturated)."""
    dist = reference(actor, obs, cache=1)
    y = dist.base_dist.loc + dist.base_dist.scale * eps
    for transform in dist.transforms:
        y = transform(y)
    return y, dist.log_prob(y).sum(-1, keepdim=True)


def test_sample_matches_torch_transformed_distribution_with_the_same_noise(monkeypatch):
    actor = make_actor()
    obs = torch.randn(512, OBS_DIM) * 3
    eps = torch.randn(512, 3)
    action, log_prob = sample_with_noise(actor, obs, eps, monkeypatch)
    ref_action, expected = reference_sample(actor, obs, eps)
    assert log_prob.shape == (512, 1)
    torch.testing.assert_close(action, ref_action)
    torch.testing.assert_close(log_prob, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mean_bias", [50.0, -50.0])
def test_saturated_actions_have_finite_correct_log_prob_and_stay_in_bounds(mean_bias, monkeypatch):
    """tanh(+-50) rounds to +-1 in float32; the naive log(1 - tanh^2) would give log 0 there."""
    actor = make_actor()
    with torch.no_grad():
        actor.mean.bias.fill_(mean_bias)
    obs, eps = torch.randn(256, OBS_DIM), torch.randn(256, 3)
    action, log_prob = sample_with_noise(actor, obs, eps, monkeypatch)
    assert torch.isfinite(log_prob).all()
    assert in_box(action)
    bound = torch.as_tensor(HIGH if mean_bias > 0 else LOW)
    assert torch.equal(action, bound.expand_as(action))  # really saturated
    _, expected = reference_sample(actor, obs, eps)
    torch.testing.assert_close(log_prob, expected, rtol=1e-5, atol=1e-3)


def test_actions_always_within_bounds():
    actor = make_actor()
    for scale in (0.1, 10.0, 1000.0):
        with torch.no_grad():
            action, _ = actor.sample(torch.randn(1000, OBS_DIM) * scale)
            assert in_box(action)
            assert in_box(actor.deterministic(torch.randn(1000, OBS_DIM) * scale))
    # and the whole box is reachable: both ends of every dimension are approached
    with torch.no_grad():
        action, _ = actor.sample(torch.randn(5000, OBS_DIM) * 10)
    span = torch.as_tensor(HIGH - LOW)
    assert ((action.min(0).values - torch.as_tensor(LOW)) < 0.05 * span).all()
    assert ((torch.as_tensor(HIGH) - action.max(0).values) < 0.05 * span).all()


def test_deterministic_action_is_rescaled_tanh_of_mean():
    actor = make_actor()
    obs = torch.randn(16, OBS_DIM)
    with torch.no_grad():
        mean, _ = actor(obs)
        det = actor.deterministic(obs)
    expected = torch.tanh(mean) * SCALE + BIAS
    torch.testing.assert_close(det, expected)


def test_log_std_is_clamped():
    actor = make_actor()
    with torch.no_grad():
        actor.log_std.bias.fill_(100.0)
        _, log_std = actor(torch.randn(4, OBS_DIM))
    assert log_std.max().item() == sac.LOG_STD_MAX == 2.0
    with torch.no_grad():
        actor.log_std.bias.fill_(-100.0)
        _, log_std = actor(torch.randn(4, OBS_DIM))
    assert log_std.min().item() == sac.LOG_STD_MIN == -5.0


def test_critic_value_for_actor_is_q_with_a_gradient_for_the_action_only():
    """The actor step's Q: the same values and dQ/da as forward, no gradient into the critic's weights."""
    torch.manual_seed(0)
    q = sac.SoftQNetwork(OBS_DIM, 3)
    obs, action = torch.randn(64, OBS_DIM), torch.randn(64, 3, requires_grad=True)
    plain = q(obs, action)
    dq_da = torch.autograd.grad(plain.sum(), action)[0]
    q.zero_grad(set_to_none=True)
    value = q.value_for_actor(obs, action)
    value.sum().backward()
    torch.testing.assert_close(value, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(action.grad, dq_da, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in q.parameters())
