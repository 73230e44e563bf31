"""Training speed after learning starts: sac_continuous.py vs Stable-Baselines3 SAC, in one process.

    pip install -r requirements.txt -r benchmark/perf/requirements-bench.txt
    OMP_NUM_THREADS=1 python benchmark/perf/speed.py --env-id Humanoid-v5 --rounds 6 --steps 200 --threads 1
    python benchmark/perf/speed.py --device cuda --compile --cudagraphs      # our GPU fast path vs SB3 on CUDA

Both sides use 256-256 networks, batch 256, one gradient step per env step, autotuned alpha, the
same device and the same torch thread count. After --learning-starts random steps each, the two
alternate for --rounds rounds of --steps steps each (A B A B ...), so a machine that gets slower
or faster affects both. Printed: steps/s per round and median for each, the per-round ratio, and
where our step spends its time. Each round is also timed in CPU time (time.process_time, all
threads of this process): on a machine shared with other jobs, wall time counts the time the
process waited for a core and CPU time does not, so with one torch thread steps per CPU second is
the steadier figure (on CUDA it means little: use steps/s). SB3 runs its own loop (`model.learn`).
Ours runs the loop body of sac_continuous.py's main loop from the script's own functions, so each
phase can be timed. Nothing here asserts a speed. The numbers are what this machine did this time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import sac_continuous as sac  # noqa: E402


class PhaseTimer:
    """Wraps callables so each call's time is added to a named phase: CPU time on the CPU (not the
    time spent waiting for a core on a shared machine), wall time after a device sync on CUDA."""

    def __init__(self, device: torch.device):
        self.totals: dict[str, float] = defaultdict(float)
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.clock = time.perf_counter if device.type == "cuda" else time.process_time
        self.unit = "wall" if device.type == "cuda" else "CPU"

    def wrap(self, name: str, fn):
        def timed(*a, **kw):
            self.sync()
            t = self.clock()
            out = fn(*a, **kw)
            self.sync()
            self.totals[name] += self.clock() - t
            return out

        return timed


class Ours:
    def __init__(self, env_id: str, learning_starts: int, device: torch.device, seed: int, phases: bool, **fast):
        self.args = sac.Args(env_id=env_id, learning_starts=learning_starts, seed=seed, **fast)
        self.envs = sac.make_vector_env(env_id, 1)
        obs_dim = self.envs.single_observation_space.shape[0]
        low, high = self.envs.single_action_space.low, self.envs.single_action_space.high
        torch.manual_seed(seed)
        self.agent = sac.SAC(obs_dim, low, high, self.args, device)
        self.rb = sac.ReplayBuffer(100_000, 1, obs_dim, low.shape[0], seed)
        self.obs, _ = self.envs.reset(seed=seed)
        self.envs.action_space.seed(seed)
        self.rb.start(self.obs)
        self.device = device
        self.timer = PhaseTimer(device)
        self.act = self.agent.act
        if phases:  # on CUDA the timer's syncs slow the loop down: the round figures are then without them
            t = self.timer
            self.envs.step = t.wrap("env step", self.envs.step)
            self.rb.add = t.wrap("buffer add", self.rb.add)
            self.rb.sample = t.wrap("buffer sample", self.rb.sample)
            # with --cudagraphs the actor and alpha steps are one graph (update_policy)
            steps = ["update_policy"] if self.args.cudagraphs else ["update_actor", "update_alpha"]
            for name in ("update_critics", *steps, "update_targets"):
                setattr(self.agent, name, t.wrap(name.replace("update_", ""), getattr(self.agent, name)))
            self.act = t.wrap("act", self.act)
        self.steps = 0

    def run(self, n: int, learn: bool) -> None:
        """The body of sac_continuous.py's main loop, from the script's own functions."""
        for _ in range(n):
            if learn:
                actions = self.act(self.obs)
            else:
                actions = self.envs.action_space.sample()
            next_obs, rewards, terminations, truncations, infos = self.envs.step(actions)
            dones = terminations | truncations
            real_next_obs = sac.real_next_observations(next_obs, dones, infos)
            self.rb.add(actions, rewards, terminations, real_next_obs, dones, next_obs)
            self.obs = next_obs
            if learn:
                self.agent.update(self.rb.sample(self.args.batch_size))
        self.steps += n


class SB3:
    def __init__(self, env_id: str, learning_starts: int, device: torch.device, seed: int):
        import gymnasium as gym
        from stable_baselines3 import SAC

        self.model = SAC(
            "MlpPolicy",
            gym.make(env_id),
            learning_rate=3e-4,
            buffer_size=100_000,
            learning_starts=learning_starts,
            batch_size=256,
            tau=0.005,
            gamma=0.99,
            train_freq=1,
            gradient_steps=1,
            ent_coef="auto_0.1",
            target_update_interval=1,
            policy_kwargs=dict(net_arch=[256, 256]),
            device=device,
            seed=seed,
            verbose=0,
        )

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
    p.add_argument(
        "--phases",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time our phases (default: on the CPU only; on CUDA each phase needs a sync)",
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    try:
        sac.check_fast_path(sac.Args(compile=a.compile, cudagraphs=a.cudagraphs), device)
    except sac.UserError as e:
        p.error(str(e))
    phases = a.phases if a.phases is not None else device.type != "cuda"

    sides = {
        "sac_continuous": Ours(
            a.env_id, a.learning_starts, device, a.seed, phases, compile=a.compile, cudagraphs=a.cudagraphs
        ),
        "sb3": SB3(a.env_id, a.learning_starts, device, a.seed),
    }
    for side in sides.values():  # fill past learning_starts, then one warm-up round
        side.run(a.learning_starts, learn=False)
        side.run(max(a.steps // 4, 10), learn=True)
    ours = sides["sac_continuous"]
    ours.timer.totals.clear()
    ours.steps = 0

    sps: dict[str, list[float]] = {k: [] for k in sides}  # steps per wall-clock second
    cps: dict[str, list[float]] = {k: [] for k in sides}  # steps per CPU second
    for r in range(a.rounds):
        for name, side in sides.items():
            t, c = time.perf_counter(), time.process_time()
            side.run(a.steps, learn=True)
            sps[name].append(a.steps / (time.perf_counter() - t))
            cps[name].append(a.steps / (time.process_time() - c))
        print(
            f"round {r + 1}: sac_continuous {sps['sac_continuous'][-1]:.1f} steps/s, sb3 {sps['sb3'][-1]:.1f} steps/s, "
            f"ratio {sps['sac_continuous'][-1] / sps['sb3'][-1]:.2f} (per CPU second: "
            f"{cps['sac_continuous'][-1]:.1f} vs {cps['sb3'][-1]:.1f}, "
            f"ratio {cps['sac_continuous'][-1] / cps['sb3'][-1]:.2f})",
            flush=True,
        )

    fast = " ".join(f for f, on in (("--compile", a.compile), ("--cudagraphs", a.cudagraphs)) if on) or "eager"
    print(
        f"\n{a.env_id}, device {a.device}, {a.threads} torch threads, {a.rounds} rounds x {a.steps} steps, ours {fast}"
    )
    for label, per in (("steps/s", sps), ("steps per CPU second", cps)):
        ratios = [x / y for x, y in zip(per["sac_continuous"], per["sb3"])]
        print(f"{label}:")
        for name in sides:
            print(
                f"{name:>15}: median {statistics.median(per[name]):.1f} "
                f"(min {min(per[name]):.1f}, max {max(per[name]):.1f})"
            )
        print(f"{'ratio':>15}: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
    total = sum(ours.timer.totals.values())
    if not total:
        return
    print(f"\nsac_continuous, {ours.timer.unit} time per env step by phase ({ours.steps} steps):")
    for name, secs in sorted(ours.timer.totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:>14}: {secs / ours.steps * 1e3:7.3f} ms  {100 * secs / total:5.1f}%")


if __name__ == "__main__":
    main()
