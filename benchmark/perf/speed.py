"""Training speed after learning starts: sac_continuous.py vs Stable-Baselines3 SAC, in one process.

    pip install -r requirements.txt -r benchmark/perf/requirements-bench.txt
    OMP_NUM_THREADS=1 python benchmark/perf/speed.py --env-id Humanoid-v5 --rounds 6 --steps 200 --threads 1
    python benchmark/perf/speed.py --device cuda --compile --cudagraphs      # our GPU fast path vs SB3 on CUDA

Both sides use 256-256 networks, batch 256, one gradient step per env step, autotuned alpha, the same device and
thread count. After --learning-starts random steps each, they alternate for --rounds rounds of --steps steps
(A B A B ...), so a machine that gets slower or faster affects both. Printed: steps/s per round and median, the
ratio, steps per CPU second (steadier on a shared CPU: waiting for a core is not counted) and, with --phases,
where our step spends its time. Ours is the loop body of sac_continuous.py from the script's public API.
Nothing is asserted; results and commands: docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import gymnasium as gym
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import sac_continuous as sac  # noqa: E402


class Ours:
    def __init__(self, env_id: str, learning_starts: int, device: torch.device, seed: int, phases: bool, **fast):
        self.args = sac.Args(env_id=env_id, learning_starts=learning_starts, seed=seed, **fast)
        self.envs = sac.make_envs(self.args)
        obs_dim, space = self.envs.single_observation_space.shape[0], self.envs.single_action_space
        torch.manual_seed(seed)
        self.agent = sac.SAC(obs_dim, space.low, space.high, self.args, device)
        sac.speed_up(self.agent, self.args)  # --compile, --cudagraphs
        self.rb = sac.ReplayBuffer(100_000, 1, obs_dim, space.low.shape[0], seed)
        self.obs, _ = self.envs.reset(seed=seed)
        self.envs.action_space.seed(seed)
        self.rb.start(self.obs)
        # per phase: CPU time on the CPU (not the wait for a core), wall time after a sync on CUDA
        self.totals: dict[str, float] = defaultdict(float)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        clock = time.perf_counter if device.type == "cuda" else time.process_time
        self.unit, self.steps = ("wall" if device.type == "cuda" else "CPU"), 0

        def timed(name, fn):
            def call(*a):
                sync()
                t = clock()
                out = fn(*a)
                sync()
                self.totals[name] += clock() - t
                return out

            return call if phases else fn

        self.step, self.add = timed("env step", self.envs.step), timed("buffer add", self.rb.add)
        self.sample, self.act = timed("buffer sample", self.rb.sample), timed("act", self.agent.act)
        self.update = timed("update", self.agent.update)

    def run(self, n: int, learn: bool) -> None:
        """The body of sac_continuous.py's loop."""
        for _ in range(n):
            actions = self.act(self.obs) if learn else self.envs.action_space.sample()
            next_obs, rewards, terminations, truncations, infos = self.step(actions)
            dones = terminations | truncations
            self.add(actions, rewards, terminations, sac.real_next_obs(next_obs, infos), dones, next_obs)
            self.obs = next_obs
            if learn:
                self.update(self.sample(self.args.batch_size))
        self.steps += n


class SB3:
    def __init__(self, env_id: str, learning_starts: int, device: torch.device, seed: int):
        from stable_baselines3 import SAC

        kw = dict(learning_rate=3e-4, buffer_size=100_000, learning_starts=learning_starts, batch_size=256, tau=0.005)
        kw |= dict(gamma=0.99, train_freq=1, gradient_steps=1, ent_coef="auto_0.1", target_update_interval=1)
        kw |= dict(policy_kwargs=dict(net_arch=[256, 256]), device=device, seed=seed, verbose=0)
        self.model = SAC("MlpPolicy", gym.make(env_id), **kw)

    def run(self, n: int, learn: bool) -> None:
        self.model.learn(n, reset_num_timesteps=False, progress_bar=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env-id", default="Humanoid-v5")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=400, help="env steps (one update each) per round and side")
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="sac_continuous.py --compile")
    p.add_argument("--cudagraphs", action="store_true", help="sac_continuous.py --cudagraphs (CUDA only)")
    p.add_argument("--phases", action="store_true", help="time our phases (on CUDA each needs a sync: slower)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    ours = Ours(a.env_id, a.learning_starts, device, a.seed, a.phases, compile=a.compile, cudagraphs=a.cudagraphs)
    sides = {"sac_continuous": ours, "sb3": SB3(a.env_id, a.learning_starts, device, a.seed)}
    for side in sides.values():  # fill past learning_starts, then one warm-up round
        side.run(a.learning_starts, learn=False)
        side.run(max(a.steps // 4, 10), learn=True)
    ours.totals.clear()
    ours.steps = 0
    sps: dict[str, list[float]] = {k: [] for k in sides}  # steps per wall-clock second
    cps: dict[str, list[float]] = {k: [] for k in sides}  # steps per CPU second
    for r in range(a.rounds):
        for name, side in sides.items():
            t, c = time.perf_counter(), time.process_time()
            side.run(a.steps, learn=True)
            sps[name].append(a.steps / (time.perf_counter() - t))
            cps[name].append(a.steps / (time.process_time() - c))
        (o, s), (oc, sc) = (sps[k][-1] for k in sides), (cps[k][-1] for k in sides)
        print(f"round {r + 1}: ours {o:.1f} steps/s, sb3 {s:.1f}, ratio {o / s:.2f} (per CPU second {oc / sc:.2f})")
    fast = " ".join(f for f, on in (("--compile", a.compile), ("--cudagraphs", a.cudagraphs)) if on) or "eager"
    print(f"\n{a.env_id}, {a.device}, {a.threads} torch threads, {a.rounds} rounds x {a.steps} steps, ours {fast}")
    for label, per in (("steps/s", sps), ("steps per CPU second", cps)):
        ratios = [x / y for x, y in zip(per["sac_continuous"], per["sb3"])]
        print(f"{label}:")
        for name, v in [*per.items(), ("ratio", ratios)]:
            print(f"{name:>15}: median {statistics.median(v):.2f} (min {min(v):.2f}, max {max(v):.2f})")
    total = sum(ours.totals.values())
    if total:
        print(f"\nsac_continuous, {ours.unit} time per env step by phase ({ours.steps} steps):")
        for name, secs in sorted(ours.totals.items(), key=lambda kv: -kv[1]):
            print(f"  {name:>14}: {secs / ours.steps * 1e3:7.3f} ms  {100 * secs / total:5.1f}%")


if __name__ == "__main__":
    main()
