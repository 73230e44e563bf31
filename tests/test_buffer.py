"""Replay buffer: synthetic streams check pairing of s and s', episode ends, wrap-around, several envs and sampling;
the real script's buffers check a time-limit truncation (Pendulum-v1, against a re-simulation) and terminations
(Hopper-v5, against its health rule)."""

import gymnasium as gym
import numpy as np
import pytest
from conftest import finish, latest_ckpt, load_buffer, ok, start

import sac_continuous as sac

# The observation of env e after step t is [e, t]; the reset observation after an episode that ended at step t is
# [e, -t] (the first one [e, 0]); the action and reward of step t are t. So each transition tells its s and s'.


def fill(rb, steps, episode_len, num_envs):
    """Env e ends an episode every episode_len + e steps, alternately by termination and by truncation."""
    lengths, envs = episode_len + np.arange(num_envs), np.arange(num_envs)
    rb.start(np.stack([envs, np.zeros(num_envs)], 1).astype(np.float32))
    for t in range(1, steps + 1):
        done = t % lengths == 0
        final = np.stack([envs, np.full(num_envs, t)], 1).astype(np.float32)
        reset = np.stack([envs, np.full(num_envs, -t)], 1).astype(np.float32)
        next_obs = np.where(done[:, None], reset, final)  # what a SAME_STEP autoreset vector env returns
        terminated = done & ((t // lengths) % 2 == 0)
        rb.add(
            np.full((num_envs, 1), t, np.float32), np.full(num_envs, t, np.float32), terminated, final, done, next_obs
        )
    return lengths


def check(batch, lengths):
    """Each transition is a real step of one env: s' its own next observation (never a reset one, never another
    env's), s the one before, never an episode's final observation; terminated exactly where it was."""
    obs, actions, rewards, terms, next_obs = batch
    assert obs.dtype == next_obs.dtype == actions.dtype == rewards.dtype == np.float32 and terms.dtype == np.bool_
    t, env = actions[:, 0], obs[:, 0].astype(int)
    assert (
        np.array_equal(rewards, t) and np.array_equal(next_obs[:, 0], obs[:, 0]) and np.array_equal(next_obs[:, 1], t)
    )
    assert np.array_equal(np.abs(obs[:, 1]), t - 1)
    assert not np.any((obs[:, 1] > 0) & (obs[:, 1] % lengths[env] == 0)), "a final observation starts a transition"
    assert np.array_equal(terms, (t % lengths[env] == 0) & ((t // lengths[env]) % 2 == 0))


@pytest.mark.parametrize(
    "capacity,num_envs,episode_len,steps",
    [(1000, 1, 7, 300), (10, 1, 100, 14), (10, 1, 9, 9), (600, 3, 11, 500)]
    + [(50, 1, n, 400) for n in (3, 24, 49, 50, 51, 1000)],
)
def test_stored_and_sampled_transitions_are_the_newest_real_steps(capacity, num_envs, episode_len, steps):
    rb, slots = sac.ReplayBuffer(capacity, num_envs, 2, 1, seed=0), capacity // num_envs
    lengths = fill(rb, steps, episode_len, num_envs)
    e, k = np.nonzero(rb.valid)  # the documented layout: slot k starts (obs[k], action[k], ..., obs[k + 1])
    stored = (
        rb.obs[e, k],
        rb.actions[e, k],
        rb.rewards[e, k],
        rb.terminations[e, k],
        rb.obs[e, (k + 1) % slots],
    )
    check(stored, lengths)
    for env in range(num_envs):  # each env's newest steps are all there, consecutively, each once
        kept = sorted(stored[1][e == env, 0])
        assert kept == list(range(steps - len(kept) + 1, steps + 1)) and len(kept) >= 0.6 * min(steps, slots)
    sampled = rb.sample(20 * len(e))
    check(sampled, lengths)
    assert set(zip(sampled[0][:, 0], sampled[1][:, 0])) == set(zip(stored[0][:, 0], stored[1][:, 0]))


def test_sampling_is_reproducible_from_the_seed():
    a, b, c = (sac.ReplayBuffer(200, 2, 2, 1, seed=s) for s in (5, 5, 6))
    for rb in (a, b, c):
        fill(rb, 60, 10, 2)
    for _ in range(3):
        batch_a, batch_b, batch_c = a.sample(64), b.sample(64), c.sample(64)
        assert all(np.array_equal(x, y) for x, y in zip(batch_a, batch_b))
        assert not np.array_equal(batch_a[0], batch_c[0])


@pytest.fixture(scope="module")
def buffers(tmp_path_factory):
    """The checkpointed buffers of two random-action runs: Pendulum-v1 in 2 envs (seed 3), Hopper-v5."""
    cwd = tmp_path_factory.mktemp("buffers")
    flags = ["--learning-starts", "1000", "--buffer-size", "1000", "--eval-episodes", "1", "--device", "cpu"]
    pendulum = ["--env-id", "Pendulum-v1", "--num-envs", 2, "--total-timesteps", 500, "--seed", 3, "--run-name", "p"]
    hopper = ["--env-id", "Hopper-v5", "--total-timesteps", 400, "--run-name", "h"]
    procs = [start(cwd, *pendulum, "--checkpoint-frequency", 500, *flags), start(cwd, *hopper, *flags)]
    for proc in procs:
        ok(finish(proc))
    return {name: load_buffer(latest_ckpt(cwd / "runs" / name)) for name in ("p", "h")}


def test_truncated_step_stores_the_real_final_observation(buffers):
    """Pendulum-v1 truncates at step 200. An independent Pendulum-v1 seeded as the script seeds sub-env e
    (--seed + e) and fed the stored actions reproduces every stored observation and reward; the slot after the
    truncated step holds the real final observation, not the reset one, and no termination is stored."""
    b = buffers["p"]
    obs, actions, rewards, valid = b["obs"], b["actions"], b["rewards"], b["valid"]
    assert not b["terminations"].any()
    for e in range(2):
        env = gym.make("Pendulum-v1")
        o, _ = env.reset(seed=3 + e)
        assert np.array_equal(obs[e, 0], o)
        terminated = truncated = None
        for k in range(251):
            if k == 200:  # slot 200: the final observation; the vector env resets without a new seed
                assert not valid[e, k] and np.array_equal(obs[e, k], o) and truncated and not terminated
                o, _ = env.reset()
                assert not np.allclose(obs[e, k], o) and np.array_equal(obs[e, k + 1], o)
                continue
            assert valid[e, k]
            o, r, terminated, truncated, _ = env.step(actions[e, k])
            assert np.array_equal(obs[e, k + 1], o) and rewards[e, k] == np.float32(r)
        env.close()


def hopper_healthy(obs):
    """Hopper-v5's health rule read from an observation (qpos[1:], then qvel clipped): height above 0.7, torso angle
    within (-0.2, 0.2), every state entry within (-100, 100)."""
    return obs[0] > 0.7 and -0.2 < obs[1] < 0.2 and bool(np.all(np.abs(obs[1:]) < 100))


def test_terminations_of_a_real_mujoco_env_follow_its_health_rule(buffers):
    """Random actions make Hopper-v5 fall within tens of steps: every stored termination is 'the stored s' is
    unhealthy', and the slot after a terminal s' holds the healthy reset observation that starts the next episode."""
    obs, terms, valid = buffers["h"]["obs"][0], buffers["h"]["terminations"][0], buffers["h"]["valid"][0]
    starts = np.flatnonzero(valid)
    assert len(starts) == 400 and terms.sum() >= 5, "precondition: 400 steps, several falls"
    for p in starts:
        assert bool(terms[p]) == (not hopper_healthy(obs[p + 1])), p
        if terms[p]:
            assert not valid[p + 1] and hopper_healthy(obs[p + 2]) and (p + 2 == len(obs) - 1 or valid[p + 2])
