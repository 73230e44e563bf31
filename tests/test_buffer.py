"""Replay buffer: pairing of s and s', wrap-around, episode ends, sampling; the truncation case."""

import gymnasium as gym
import numpy as np

import sac_continuous as sac


def fill(rb, steps, episode_len, num_envs=1):
    """Observations encode (env, step-in-stream) so every sampled pair can be checked."""
    t = 0
    obs = np.array([[e, 0.0] for e in range(num_envs)], np.float32)
    rb.start(obs)
    for _ in range(steps):
        t += 1
        done = np.full(num_envs, t % episode_len == 0)
        final = np.array([[e, t] for e in range(num_envs)], np.float32)
        reset = np.array([[e, -t] for e in range(num_envs)], np.float32)  # reset obs: negative mark
        nxt = np.where(done[:, None], reset, final)
        rb.add(np.full((num_envs, 1), t, np.float32), np.full(num_envs, t, np.float32), done, final, done, nxt)
    return t


def check_pairs(rb, n=2000):
    obs, actions, rewards, terms, next_obs = rb.sample(n)
    t = actions[:, 0]
    assert np.array_equal(rewards, t)
    assert np.array_equal(next_obs[:, 1], t)  # s' is the real successor, never a reset obs (negative)
    start = np.abs(obs[:, 1])
    assert np.array_equal(start, t - 1)  # s is the previous step (or the reset obs before it)
    assert np.array_equal(obs[:, 0], next_obs[:, 0])  # same env stream
    return obs, actions, rewards, terms, next_obs


def test_pairs_and_episode_ends_without_wrap():
    rb = sac.ReplayBuffer(1000, 1, 2, 1, seed=0)
    fill(rb, 300, episode_len=7)
    obs, actions, rewards, terms, next_obs = check_pairs(rb)
    assert np.array_equal(terms, actions[:, 0] % 7 == 0)
    assert len(rb) == 300


def test_wrap_around_overwrites_oldest_and_keeps_pairs_consistent():
    rb = sac.ReplayBuffer(50, 1, 2, 1, seed=0)
    last = fill(rb, 400, episode_len=9)
    obs, actions, *_ = check_pairs(rb)
    assert actions[:, 0].min() > last - 50  # only recent transitions survive
    assert len(rb) <= 50 - 1


def test_multiple_envs_are_separate_streams():
    rb = sac.ReplayBuffer(600, 3, 2, 1, seed=0)
    fill(rb, 500, episode_len=11, num_envs=3)
    obs, *_ = check_pairs(rb)
    assert set(np.unique(obs[:, 0])) == {0.0, 1.0, 2.0}


def test_sample_shapes_and_dtypes():
    rb = sac.ReplayBuffer(100, 1, 2, 1, seed=0)
    fill(rb, 60, episode_len=10)
    obs, actions, rewards, terms, next_obs = rb.sample(32)
    assert obs.shape == next_obs.shape == (32, 2) and actions.shape == (32, 1)
    assert rewards.shape == terms.shape == (32,)
    assert obs.dtype == next_obs.dtype == actions.dtype == rewards.dtype == np.float32 and terms.dtype == np.bool_


def test_truncated_transition_stores_the_final_observation(run, tmp_path):
    """Pendulum-v1 truncates at step 200. The slot after that transition must hold the env's real final
    observation (re-simulated independently here), not the reset observation."""
    res = run("--env-id", "Pendulum-v1", "--total-timesteps", "250", "--learning-starts", "1000",
              "--checkpoint-frequency", "250", "--eval-episodes", "1", "--run-name", "t", "--seed", "3")
    assert res.returncode == 0, res.stderr
    ckpt = tmp_path / "runs" / "t" / "checkpoints"
    buf = ckpt / (ckpt / "latest").read_text().strip() / "buffer"
    obs, actions, valid = (np.load(buf / f"{n}.npy")[0] for n in ("obs", "actions", "valid"))

    env = gym.make("Pendulum-v1")
    o, _ = env.reset(seed=3)  # sub-env 0 of the vector env is seeded with --seed
    assert np.array_equal(obs[0], o)
    for t in range(200):
        o, _, terminated, truncated, _ = env.step(actions[t])
    assert truncated and not terminated
    reset_obs, _ = env.reset()
    assert np.array_equal(obs[200], o.astype(np.float32)), "s' of the truncated step is not the final observation"
    assert not np.array_equal(obs[200], reset_obs)
    assert not valid[200] and valid[199]  # the final observation starts no transition
    assert np.array_equal(obs[201], reset_obs.astype(np.float32))
    assert np.array_equal(actions[201], actions[201]) and valid[201]


def test_real_next_observations_uses_final_obs_only_where_done():
    nxt = np.array([[1.0], [2.0]])
    infos = {"final_obs": np.array([None, np.array([9.0])], dtype=object), "_final_obs": np.array([False, True])}
    real = sac.real_next_observations(nxt, np.array([False, True]), infos)
    assert real.tolist() == [[1.0], [9.0]] and nxt.tolist() == [[1.0], [2.0]]
