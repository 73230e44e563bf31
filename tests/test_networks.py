"""Actor: log-density of the tanh-squashed, rescaled Gaussian; bounds; deterministic action."""

import numpy as np
import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import AffineTransform, TanhTransform

import sac_continuous as sac

LOW = np.array([-2.0, -1.0, 0.0], dtype=np.float32)
HIGH = np.array([2.0, 3.0, 1.0], dtype=np.float32)  # asymmetric: scale and bias both matter


def make_actor(seed=0):
    torch.manual_seed(seed)
    return sac.Actor(5, LOW, HIGH)


def test_log_prob_matches_torch_transformed_distribution():
    actor = make_actor()
    obs = torch.randn(512, 5)
    torch.manual_seed(1)
    action, log_prob = actor.sample(obs)
    mean, log_std = actor(obs)
    dist = TransformedDistribution(Normal(mean, log_std.exp()),
                                   [TanhTransform(cache_size=1), AffineTransform(actor.action_bias, actor.action_scale)])
    expected = dist.log_prob(action).sum(-1, keepdim=True)
    unsaturated = ((action - actor.action_bias).abs() / actor.action_scale < 0.99).all(-1)
    assert unsaturated.sum() > 400
    torch.testing.assert_close(log_prob[unsaturated], expected[unsaturated], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [60.0, -60.0])
def test_saturated_actions_have_finite_log_prob_and_stay_in_bounds(bias):
    actor = make_actor()
    with torch.no_grad():
        actor.mean.bias.fill_(bias)
    action, log_prob = actor.sample(torch.randn(256, 5))
    assert torch.isfinite(log_prob).all()
    assert (action >= torch.as_tensor(LOW)).all() and (action <= torch.as_tensor(HIGH)).all()


def test_actions_always_within_bounds():
    actor = make_actor()
    for scale in (0.1, 10.0, 1000.0):
        action, _ = actor.sample(torch.randn(1000, 5) * scale)
        assert (action >= torch.as_tensor(LOW)).all() and (action <= torch.as_tensor(HIGH)).all()


def test_deterministic_action_is_rescaled_tanh_of_mean():
    actor = make_actor()
    obs = torch.randn(16, 5)
    mean, _ = actor(obs)
    expected = torch.tanh(mean) * torch.as_tensor((HIGH - LOW) / 2) + torch.as_tensor((HIGH + LOW) / 2)
    torch.testing.assert_close(actor.deterministic(obs), expected)


def test_log_std_is_clamped():
    actor = make_actor()
    with torch.no_grad():
        actor.log_std.bias.fill_(100.0)
    _, log_std = actor(torch.randn(4, 5))
    assert log_std.max().item() == sac.LOG_STD_MAX
    with torch.no_grad():
        actor.log_std.bias.fill_(-100.0)
    _, log_std = actor(torch.randn(4, 5))
    assert log_std.min().item() == sac.LOG_STD_MIN
