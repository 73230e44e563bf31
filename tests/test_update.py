"""The SAC update: its losses recomputed independently (critic target, actor, temperature), what each step changes
(critics, actor, Polyak targets by tau, alpha), and the delayed actor and target updates."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ACT_DIM, OBS_DIM, make_agent, make_batch

import sac_continuous as sac


def params(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


@pytest.mark.parametrize("kw", [{}, {"autotune": False, "alpha": 0.3, "gamma": 0.9}], ids=["autotune", "fixed-alpha"])
def test_update_losses_are_the_sac_losses(kw):
    """y = r + gamma (1 - terminated) (min_j Q'_j(s', a') - alpha log pi(a'|s')); the actor loss on the critics
    after their step; the temperature loss alpha (-log pi - H) with H = -dim(A)."""
    agent = make_agent(**kw)
    alpha, gamma = agent.alpha.item(), kw.get("gamma", 0.99)
    before = copy.deepcopy(agent)
    obs, act, rew, term, next_obs = (torch.as_tensor(np.asarray(x, np.float32)) for x in make_batch())
    torch.manual_seed(11)
    stats = agent.update(make_batch())
    torch.manual_seed(11)
    with torch.no_grad():
        next_a, next_logp = before.actor.get_action(next_obs)
        next_q = torch.min(before.qf1_target(next_obs, next_a), before.qf2_target(next_obs, next_a))
        y = rew[:, None] + gamma * (1 - term[:, None]) * (next_q - alpha * next_logp)
        qf1, qf2 = before.qf1(obs, act), before.qf2(obs, act)
        pi, logp = before.actor.get_action(obs)
        min_q = torch.min(agent.qf1(obs, pi), agent.qf2(obs, pi))
    expected = dict(qf1_loss=F.mse_loss(qf1, y), qf2_loss=F.mse_loss(qf2, y), qf1_values=qf1.mean())
    expected.update(qf2_values=qf2.mean(), qf_loss=(F.mse_loss(qf1, y) + F.mse_loss(qf2, y)) / 2)
    expected["actor_loss"] = (alpha * logp - min_q).mean()
    if agent.a_optimizer is not None:
        expected["alpha_loss"] = (alpha * (-logp + ACT_DIM)).mean()
    assert stats.keys() == expected.keys()
    for k, v in expected.items():
        torch.testing.assert_close(stats[k], v, msg=k)


def test_update_steps_critics_and_actor_and_moves_targets_by_tau():
    agent = make_agent(tau=0.1)
    actor, online = params(agent.actor), params(agent.qf1, agent.qf2)
    targets = params(agent.qf1_target, agent.qf2_target)
    agent.update(make_batch())
    assert all(not torch.equal(a, b) for a, b in zip(actor + online, params(agent.actor, agent.qf1, agent.qf2)))
    for old, new, p in zip(targets, params(agent.qf1_target, agent.qf2_target), params(agent.qf1, agent.qf2)):
        torch.testing.assert_close(new - old, 0.1 * (p - old), rtol=1e-5, atol=1e-7)  # towards the stepped critic
    assert agent.n_updates == 1


def test_actor_loss_sends_no_gradient_into_the_critics():
    agent = make_agent()
    loss, log_pi = agent.actor_loss(torch.randn(16, OBS_DIM))
    assert log_pi.shape == (16, 1)
    loss.backward()
    assert all(p.grad is None for p in (*agent.qf1.parameters(), *agent.qf2.parameters()))
    assert all(p.grad is not None for p in agent.actor.parameters())


def test_alpha_rises_when_the_entropy_is_too_low_and_stays_without_autotune():
    agent = make_agent()
    with torch.no_grad():  # a nearly deterministic actor: entropy far below -dim(A)
        agent.actor.log_std.bias.fill_(-100.0)
    for i in range(3):
        agent.update(make_batch(seed=i))
    assert agent.alpha.item() > 0.1 and agent.alpha.item() == pytest.approx(np.exp(agent.log_alpha.item()), rel=1e-6)
    fixed = make_agent(autotune=False, alpha=0.3)
    assert fixed.a_optimizer is None
    for i in range(3):
        assert "alpha_loss" not in fixed.update(make_batch(seed=i))
    assert fixed.alpha.item() == np.float32(0.3)


def test_policy_and_target_network_frequency_delay_the_updates():
    """Every 2nd update: 2 actor steps at once (TD3/CleanRL's delayed updates), and one Polyak update."""
    agent = make_agent(policy_frequency=2, target_network_frequency=2)
    first_weight = next(agent.actor.parameters())
    for i in range(4):
        targets = params(agent.qf1_target, agent.qf2_target)
        stats = agent.update(make_batch(seed=i))
        assert ("actor_loss" in stats) == (i % 2 == 0)
        moved = any(not torch.equal(a, b) for a, b in zip(targets, params(agent.qf1_target, agent.qf2_target)))
        assert moved == (i % 2 == 0)
        assert agent.actor_optimizer.state[first_weight]["step"].item() == 2 * (i // 2 + 1)


# 1, 2 and 4 threads: the same weights after a few updates, and the same actions, at two network sizes
THREADS_COMPARED = """import numpy as np, torch, sac_continuous as sac
for obs_dim, act_dim in [(3, 2), (348, 17)]:  # small; Humanoid-v5
    results = []
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        bound = np.ones(act_dim, np.float32)
        agent = sac.SAC(obs_dim, -bound, bound, sac.Args(), torch.device("cpu"))
        g = np.random.default_rng(0)
        for _ in range(4):
            x = [g.normal(size=(256, n)).astype(np.float32) for n in (obs_dim, act_dim, 1, 1, obs_dim)]
            agent.update((x[0], x[1], x[2][:, 0], x[3][:, 0] > 1, x[4]))
        actions = agent.act(g.normal(size=(8, obs_dim)).astype(np.float32))
        results.append([p.detach().numpy() for m in agent.networks.values() for p in m.parameters()] + [actions])
    same = all(np.array_equal(a, b) for other in results[1:] for a, b in zip(results[0], other))
    print(obs_dim, act_dim, "same" if same else "DIFFERENT")
"""
AMD_CPUINFO = "vendor_id : AuthenticAMD\nflags : fpu sse2 avx avx2 fma\n"


@pytest.mark.parametrize("cpu", ["this CPU", "AMD (MKL's AVX2 path)"])
def test_the_thread_count_does_not_change_the_arithmetic(cpu):
    """Exact resume and the same bits under the default thread rule, which changes the count during a run. A fresh
    process, since MKL reads its mode once; an AMD CPU is simulated by the mode the script gives it."""
    env = dict(os.environ)
    if cpu.startswith("AMD"):
        env["MKL_CBWR"] = sac.mkl_strict_mode(AMD_CPUINFO)
    res = subprocess.run([sys.executable, "-c", THREADS_COMPARED], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.split("\n")[:2] == ["3 2 same", "348 17 same"], res.stdout + res.stderr


def test_mkl_strict_mode_per_cpu():
    assert sac.mkl_strict_mode("vendor_id : GenuineIntel\nflags : avx avx2 avx512f\n") == "AUTO,STRICT"
    assert sac.mkl_strict_mode(AMD_CPUINFO) == "AVX2,STRICT"
    assert sac.mkl_strict_mode("vendor_id : GenuineIntel\nflags : sse2 avx\n") is None  # no strict path in MKL
