"""Replay buffer: pairing of s and s', episode ends, wrap-around, sampling; the time-limit truncation
case on the real script and a real Pendulum-v1, checked against an independent re-simulation."""

import gymnasium as gym
import numpy as np
import pytest

import sac_continuous as sac

# Synthetic streams: the observation of env e after step t is [e, t]; the reset observation that follows
# an episode ending at step t is [e, -t] (the very first one is [e, 0]); the action and reward of step t
# are t. So every stored or sampled transition tells which step it is and what its s and s' must be.


def fill(rb, steps, episode_len, num_envs=1):
    """Env e ends an episode every episode_len + e steps, alternately by termination and by truncation."""
    lengths = episode_len + np.arange(num_envs)
    rb.start(np.stack([np.arange(num_envs), np.zeros(num_envs)], 1).astype(np.float32))
    for t in range(1, steps + 1):
        done = t % lengths == 0
        terminated = done & ((t // lengths) % 2 == 0)
        final = np.stack([np.arange(num_envs), np.full(num_envs, t)], 1).astype(np.float32)
        reset = np.stack([np.arange(num_envs), np.full(num_envs, -t)], 1).astype(np.float32)
        next_obs = np.where(done[:, None], reset, final)  # what a SAME_STEP autoreset vector env returns
        rb.add(
            np.full((num_envs, 1), t, np.float32), np.full(num_envs, t, np.float32), terminated, final, done, next_obs
        )
    return lengths


def expected_termination(env, t, lengths):
    return t % lengths[env] == 0 and (t // lengths[env]) % 2 == 0


def check_transitions(obs, actions, rewards, terms, next_obs, lengths):
    """Each transition is a real step of one env: s' is the step's own next observation (never a reset
    observation, never another env's), s is the one before it, s is never an episode's final observation."""
    t = actions[:, 0]
    env = obs[:, 0].astype(int)
    assert np.array_equal(rewards, t)
    assert np.array_equal(next_obs[:, 0], obs[:, 0])
    assert np.array_equal(next_obs[:, 1], t)
    assert np.array_equal(np.abs(obs[:, 1]), t - 1)
    assert not np.any((obs[:, 1] > 0) & (obs[:, 1] % lengths[env] == 0)), "a final observation starts a transition"
    assert np.array_equal(terms, [expected_termination(e, s, lengths) for e, s in zip(env, t)])


def stored_transitions(rb):
    """Every transition the buffer holds, read from its arrays by the documented layout."""
    e, k = np.nonzero(rb.valid)
    nxt = (k + 1) % rb.capacity
    return rb.obs[e, k], rb.actions[e, k], rb.rewards[e, k], rb.terminations[e, k], rb.obs[e, nxt]


def test_pairs_and_episode_ends_without_wrap():
    rb = sac.ReplayBuffer(1000, 1, 2, 1, seed=0)
    lengths = fill(rb, 300, episode_len=7)
    stored = stored_transitions(rb)
    check_transitions(*stored, lengths)
    assert len(rb) == 300 and sorted(stored[1][:, 0]) == list(range(1, 301))  # every step kept, once
    # the slot after the step that ends an episode holds its final observation and starts nothing
    assert rb.obs[0, 7].tolist() == [0, 7] and not rb.valid[0, 7] and rb.obs[0, 8].tolist() == [0, -7]
    sampled = rb.sample(2000)
    check_transitions(*sampled, lengths)
    assert np.any(sampled[0][:, 1] < 0) and np.any(sampled[3])  # episode starts and terminal steps are drawn


@pytest.mark.parametrize("episode_len", [3, 9, 24, 49, 50, 51, 1000])
def test_wrap_around_overwrites_oldest_and_keeps_pairs_consistent(episode_len):
    capacity, steps = 50, 400
    rb = sac.ReplayBuffer(capacity, 1, 2, 1, seed=0)
    lengths = fill(rb, steps, episode_len)
    # old slots were overwritten: every stored observation is from the last `capacity` steps
    assert np.abs(rb.obs[0, :, 1]).min() > steps - capacity
    stored = stored_transitions(rb)
    check_transitions(*stored, lengths)
    # every slot starts a transition except the current observation and episodes' final observations
    finals = np.sum((rb.obs[0, :, 1] > 0) & (rb.obs[0, :, 1] % episode_len == 0))
    assert len(rb) == capacity - 1 - finals
    # the newest steps are all there, consecutively
    assert sorted(stored[1][:, 0]) == list(range(steps - len(rb) + 1, steps + 1))
    sampled = rb.sample(3000)
    check_transitions(*sampled, lengths)
    assert set(sampled[1][:, 0]) == set(stored[1][:, 0])  # samples cover every stored transition, nothing else


def test_transition_across_the_wrap_point():
    """Slot capacity-1 pairs with slot 0."""
    rb = sac.ReplayBuffer(10, 1, 2, 1, seed=0)
    lengths = fill(rb, 14, episode_len=100)  # no episode end: slot k holds step 14 - ((4 - k) % 10)
    assert rb.valid[0, 9] and rb.obs[0, 9, 1] == 9 and rb.obs[0, 0, 1] == 10 and rb.actions[0, 9, 0] == 10
    sampled = rb.sample(500)
    check_transitions(*sampled, lengths)
    assert 10 in sampled[1][:, 0]


def test_episode_end_at_the_last_slot_wraps_final_and_reset_observations():
    rb = sac.ReplayBuffer(10, 1, 2, 1, seed=0)
    lengths = fill(rb, 9, episode_len=9)  # step 9 ends the episode: final obs -> slot 9, reset obs -> slot 0
    assert rb.obs[0, 9].tolist() == [0, 9] and not rb.valid[0, 9]
    assert rb.obs[0, 0].tolist() == [0, -9] and not rb.valid[0, 0]  # the current observation, no action yet
    check_transitions(*rb.sample(500), lengths)


def test_multiple_envs_are_separate_streams_with_their_own_episode_ends():
    rb = sac.ReplayBuffer(600, 3, 2, 1, seed=0)  # 200 slots per env, 500 steps: every ring wraps
    lengths = fill(rb, 500, episode_len=11, num_envs=3)  # episodes of 11, 12 and 13 steps
    check_transitions(*stored_transitions(rb), lengths)
    obs, *_ = sampled = rb.sample(3000)
    check_transitions(*sampled, lengths)
    assert set(np.unique(obs[:, 0])) == {0.0, 1.0, 2.0}


def test_sample_shapes_and_dtypes():
    rb = sac.ReplayBuffer(100, 2, 3, 2, seed=0)
    rb.start(np.zeros((2, 3), np.float32))
    for _ in range(30):
        rb.add(
            np.ones((2, 2), np.float32),
            np.ones(2, np.float32),
            np.zeros(2, bool),
            np.ones((2, 3), np.float32),
            np.zeros(2, bool),
            np.ones((2, 3), np.float32),
        )
    obs, actions, rewards, terms, next_obs = rb.sample(32)
    assert obs.shape == next_obs.shape == (32, 3) and actions.shape == (32, 2)
    assert rewards.shape == terms.shape == (32,)
    assert obs.dtype == next_obs.dtype == actions.dtype == rewards.dtype == np.float32 and terms.dtype == np.bool_


def test_sampling_is_reproducible_from_the_seed():
    a, b, c = (sac.ReplayBuffer(200, 2, 2, 1, seed=s) for s in (5, 5, 6))
    for rb in (a, b, c):
        fill(rb, 60, episode_len=10, num_envs=2)
    for _ in range(3):
        batch_a, batch_b, batch_c = a.sample(64), b.sample(64), c.sample(64)
        assert all(np.array_equal(x, y) for x, y in zip(batch_a, batch_b))
        assert not np.array_equal(batch_a[0], batch_c[0])


def test_real_next_observations_uses_final_obs_only_where_done():
    next_obs = np.array([[1.0], [2.0], [3.0]])
    infos = {
        "final_obs": np.array([None, np.array([9.0]), None], dtype=object),
        "_final_obs": np.array([False, True, False]),
    }
    real = sac.real_next_observations(next_obs, np.array([False, True, False]), infos)
    assert real.tolist() == [[1.0], [9.0], [3.0]]
    assert next_obs.tolist() == [[1.0], [2.0], [3.0]]  # the reset observation is kept for the next step


def test_truncated_transition_stores_the_real_final_observation(run, tmp_path):
    """Pendulum-v1 truncates at step 200 and never terminates. The real script runs 250 steps in two envs
    and checkpoints its buffer; an independent Pendulum-v1, seeded as the script seeds sub-env e
    (--seed + e) and fed the stored actions, must reproduce every stored observation and reward, the
    slot after the truncated step must hold the real final observation, not the reset one, and the
    truncation must not be stored as a termination."""
    seed = 3
    res = run(
        "--env-id",
        "Pendulum-v1",
        "--num-envs",
        "2",
        "--total-timesteps",
        "500",
        "--buffer-size",
        "1000",
        "--learning-starts",
        "1000",
        "--checkpoint-frequency",
        "500",
        "--eval-episodes",
        "1",
        "--device",
        "cpu",
        "--run-name",
        "t",
        "--seed",
        str(seed),
    )
    assert res.returncode == 0, res.stderr
    ckpt = tmp_path / "runs" / "t" / "checkpoints"
    buf = ckpt / (ckpt / "latest").read_text().strip() / "buffer"
    obs, actions, rewards, terms, valid = (np.load(buf / f"{n}.npy") for n in sac.ReplayBuffer.ARRAYS)
    assert obs.shape == (2, 252, 3)  # the first observation, 250 steps, one extra slot for the episode end
    assert not terms.any()

    for e in range(2):
        env = gym.make("Pendulum-v1")
        o, _ = env.reset(seed=seed + e)
        assert np.array_equal(obs[e, 0], o)
        for t in range(200):
            assert valid[e, t]
            o, r, terminated, truncated, _ = env.step(actions[e, t])
            assert rewards[e, t] == np.float32(r)
            if t < 199:
                assert np.array_equal(obs[e, t + 1], o)
        assert truncated and not terminated
        final_obs = o
        reset_obs, _ = env.reset()  # what the vector env's autoreset does: no new seed
        assert not np.allclose(final_obs, reset_obs)
        assert np.array_equal(obs[e, 200], final_obs), "s' of the truncated step is not the real final observation"
        assert not valid[e, 200]  # the final observation starts no transition
        assert np.array_equal(obs[e, 201], reset_obs)
        o = reset_obs
        for k in range(201, 251):  # the next episode goes on from the reset observation
            assert valid[e, k]
            o, r, *_ = env.step(actions[e, k])
            assert np.array_equal(obs[e, k + 1], o) and rewards[e, k] == np.float32(r)
        assert not valid[e, 251]  # the current observation: no action taken from it yet
        env.close()


def hopper_healthy(obs):
    """Hopper-v5's health rule, read from an observation (qpos[1:] then qvel clipped to +-10): height above 0.7,
    torso angle within (-0.2, 0.2), every state entry within (-100, 100)."""
    return obs[0] > 0.7 and -0.2 < obs[1] < 0.2 and bool(np.all(np.abs(obs[1:]) < 100))


def test_terminations_of_a_real_mujoco_env_follow_its_health_rule(run, tmp_path):
    """Hopper-v5 with uniformly random actions falls within tens of steps. In the buffer the real script
    checkpoints, every stored termination flag must equal 'the stored s' is unhealthy', and the s' of a
    terminal step must be that final (fallen) observation, with the healthy reset observation in the slot
    after it starting the next episode."""
    res = run(
        "--env-id",
        "Hopper-v5",
        "--total-timesteps",
        "400",
        "--buffer-size",
        "1000",
        "--learning-starts",
        "1000",
        "--checkpoint-frequency",
        "400",
        "--eval-episodes",
        "1",
        "--device",
        "cpu",
        "--run-name",
        "h",
    )
    assert res.returncode == 0, res.stderr
    ckpt = tmp_path / "runs" / "h" / "checkpoints"
    buf = ckpt / (ckpt / "latest").read_text().strip() / "buffer"
    obs, _, rewards, terms, valid = (np.load(buf / f"{n}.npy")[0] for n in sac.ReplayBuffer.ARRAYS)
    starts = np.flatnonzero(valid)
    falls = [p for p in starts if not hopper_healthy(obs[p + 1])]
    assert len(starts) == 400 and len(falls) >= 5, "precondition: 400 steps, several falls"
    for p in starts:
        s_next = obs[p + 1]
        assert bool(terms[p]) == (not hopper_healthy(s_next)), (p, s_next[:2])
        if terms[p]:
            assert not valid[p + 1], "the final observation starts no transition"
            assert hopper_healthy(obs[p + 2]), "the slot after the final observation holds the reset observation"
            assert p + 2 == len(obs) - 1 or valid[p + 2]
