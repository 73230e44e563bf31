"""Soft Actor-Critic for continuous control, in one file: python sac_continuous.py --env-id Humanoid-v5

Tanh-squashed Gaussian actor, twin Q critics, automatic entropy tuning (Haarnoja et al. 2018, arXiv:1812.05905). Exit
codes: 0 done, 2 bad input (nothing written), 3 diverged, 74 a write failed (e.g. disk full), 75 stopped by a signal
(checkpoint written), 130 aborted."""

import dataclasses
import importlib.util
import io
import json
import math
import os
import pickle
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

EXIT_BAD_INPUT = 2  # a flag, file or environment that cannot be used; nothing was written
EXIT_DIVERGED = 3  # a loss or weight became NaN/Inf; the last checkpoint is left as it was
EXIT_IO_ERROR = 74  # a write failed (disk full, I/O error...): temporary files removed, the last checkpoint intact
EXIT_INTERRUPTED = 75  # SIGINT/SIGTERM: a checkpoint was written; rerun with --resume to continue
EXIT_ABORTED = 130  # a second Ctrl-C: stopped at once


# --- Args -----------------------------------------------------------------------------------------
@dataclass
class Args:
    env_id: str = "Humanoid-v5"  # the id of a gymnasium environment with a Box action space
    total_timesteps: int = 1_000_000  # environment steps to train for, over all envs (on --resume, the new total)
    seed: int = 1  # seed of python, numpy, torch, the environments and the replay buffer
    torch_deterministic: bool = True  # make cuDNN deterministic (`torch.backends.cudnn.deterministic`)
    device: str = "auto"  # auto (CUDA, else MPS, else CPU), or a torch device such as cpu, cuda, cuda:1, mps
    num_threads: int = 0  # torch CPU threads; 0: OMP_NUM_THREADS if set, else torch's default (all cores)
    num_envs: int = 1  # parallel environments; one gradient update is made per vector step (num_envs transitions)
    buffer_size: int = 1_000_000  # replay buffer capacity in observation slots, shared by all envs
    gamma: float = 0.99  # discount factor
    tau: float = 0.005  # target smoothing coefficient: target <- (1 - tau) * target + tau * online
    batch_size: int = 256  # transitions per gradient update
    learning_starts: int = 25_000  # steps of uniformly random actions before learning starts
    policy_lr: float = 3e-4  # actor learning rate
    q_lr: float = 3e-4  # critic (and entropy temperature) learning rate
    policy_frequency: int = 1  # update the actor every N critic updates (N actor updates at once, as in TD3/CleanRL)
    target_network_frequency: int = 1  # update the target critics every N critic updates
    alpha: float = 0.1  # entropy temperature; the initial value when --autotune
    autotune: bool = True  # learn alpha so that the policy entropy tracks -dim(A)
    eval_frequency: int = 10_000  # evaluate the deterministic policy every N steps (0: only at the end)
    eval_episodes: int = 10  # episodes per evaluation
    capture_video: bool = False  # record the first episode of each evaluation to videos/ as MP4
    checkpoint_frequency: int = 50_000  # resumable checkpoint every N steps and at the end (0: only on a signal)
    resume: str = ""  # continue from a checkpoint: a run dir, a checkpoint dir, or 'auto' (this --run-name's latest)
    eval_checkpoint: str = ""  # evaluate this model.pt (or best_model.pt) and exit, without training
    exp_name: str = "sac"  # the experiment's name, part of the default --run-name
    run_name: str = ""  # the run directory under --output-dir; empty: <env-id>__<exp-name>__<seed>__<unix time>
    output_dir: str = "runs"  # where run directories are created
    log_frequency: int = 100  # write loss scalars to TensorBoard every N gradient updates
    track: bool = False  # also log to Weights & Biases (pip install wandb); --resume continues the same W&B run
    wandb_project_name: str = "sac_continuous"  # the W&B project
    wandb_entity: str | None = None  # the W&B team or user (default: your default entity)
    compile: bool = False  # torch.compile the critic and actor losses: a speed option for GPUs, the same algorithm
    cudagraphs: bool = False  # CUDA: replay updates as CUDA graphs (the same algorithm; exact resume not guaranteed)


class Exit(Exception):  # main() prints the message as one line on stderr and exits with the code
    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_args(args: Args) -> torch.device:  # refuses unusable flags before anything is written
    positive = ["total_timesteps", "num_envs", "buffer_size", "batch_size", "eval_episodes", "log_frequency"]
    for name in positive + ["policy_frequency", "target_network_frequency", "policy_lr", "q_lr", "alpha"]:
        if not getattr(args, name) > 0:  # `not >` also refuses NaN
            raise Exit(f"{flag(name)} must be positive, got {getattr(args, name)}")
    for name in ["learning_starts", "eval_frequency", "checkpoint_frequency", "num_threads"]:
        if getattr(args, name) < 0:
            raise Exit(f"{flag(name)} must be 0 or more, got {getattr(args, name)}")
    for name in ["gamma", "tau"]:
        if not 0 < getattr(args, name) <= 1:
            raise Exit(f"{flag(name)} must be in (0, 1], got {getattr(args, name)}")
    if args.buffer_size < 3 * args.num_envs:
        raise Exit(f"--buffer-size {args.buffer_size} is too small for {args.num_envs} envs; use at least 3 per env")
    if args.batch_size > args.buffer_size:
        raise Exit(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}")
    if args.resume == "auto" and not args.run_name:
        raise Exit("--resume auto needs a fixed --run-name to find the run again; add --run-name NAME")
    if args.resume and args.eval_checkpoint:
        raise Exit("--resume and --eval-checkpoint exclude each other; pass one of them")
    if args.track and importlib.util.find_spec("wandb") is None:
        raise Exit("--track needs Weights & Biases: pip install wandb")
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    auto = "cuda" if available["cuda"] else "mps" if available["mps"] else "cpu"
    try:
        device = torch.device(auto if args.device == "auto" else args.device)
    except RuntimeError:
        raise Exit(f"--device '{args.device}' is not a torch device; use auto, cpu, cuda or mps") from None
    if not available.get(device.type, True):
        raise Exit(f"--device {args.device}: {device.type.upper()} is not available here; use --device cpu or auto")
    if args.cudagraphs and device.type != "cuda":
        raise Exit(f"--cudagraphs needs a CUDA device, but the device is {device}; drop it or use --device cuda")
    cxx, cc = os.environ.get("CXX", "g++"), os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")
    if args.compile and device.type == "cpu" and shutil.which(cxx) is None:
        raise Exit(f"--compile on CPU needs a C++ compiler ({cxx}, or set CXX); install it or drop --compile")
    if args.compile and device.type == "cuda" and (importlib.util.find_spec("triton") is None or not cc):
        raise Exit("--compile on CUDA needs triton and a C compiler (gcc, or set CC); install them or drop --compile")
    return device


# --- Environments ---------------------------------------------------------------------------------
def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    try:
        env = gym.make(env_id, render_mode=render_mode)
    except gym.error.Error as e:  # NameNotFound, VersionNotFound, DeprecatedEnv, missing extras...
        raise Exit(f"cannot make environment '{env_id}': {str(e).rstrip('.')}. Check --env-id") from None
    except ImportError as e:
        raise Exit(f"environment '{env_id}' needs a missing package ({e}); install it") from None
    space, obs_space = env.action_space, env.observation_space
    if not isinstance(space, gym.spaces.Box):
        problem = f"has a {type(space).__name__} action space; SAC here needs a continuous (Box) one"
    elif not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        problem = f"has observation space {obs_space}; this script needs a flat Box"
    elif not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        problem = "has an unbounded action space; SAC squashes actions into finite bounds"
    else:
        return env
    env.close()
    raise Exit(f"'{env_id}' {problem}")


def check_rendering(env_id: str, capture_video: bool) -> None:
    """Before anything is written: MuJoCo's OpenGL library loads, and --capture-video's env renders (pygame...)."""
    gl, spec = os.environ.get("MUJOCO_GL"), gym.registry.get(env_id)
    try:
        if gl in ("osmesa", "egl") and spec and "mujoco" in str(spec.entry_point):
            importlib.import_module("mujoco")  # PyOpenGL loads the library here
        if capture_video:
            with make_env(env_id, render_mode="rgb_array") as env:
                env.reset(seed=0)
                env.render()
    except gym.error.DependencyNotInstalled as e:
        raise Exit(f"--capture-video: {env_id} cannot render ({str(e).splitlines()[0]}); install that") from None
    except (ImportError, AttributeError, OSError):
        package = {"osmesa": "libosmesa6", "egl": "libegl1"}.get(gl, "an OpenGL library")
        raise Exit(f"MUJOCO_GL={gl}: cannot load its OpenGL library; install {package} (e.g. apt-get)") from None


def make_vector_env(env_id: str, num_envs: int) -> gym.vector.SyncVectorEnv:
    """SAME_STEP autoreset: an episode's last step returns the reset obs and the real one in infos["final_obs"]."""
    envs = [lambda: gym.wrappers.RecordEpisodeStatistics(make_env(env_id)) for _ in range(num_envs)]
    return gym.vector.SyncVectorEnv(envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


# --- Networks -------------------------------------------------------------------------------------

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
HIDDEN = 256


def mlp(in_dim: int, out_dim: int | None) -> nn.Sequential:
    layers = [nn.Linear(in_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU()]
    return nn.Sequential(*layers, *([nn.Linear(HIDDEN, out_dim)] if out_dim else []))


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1))

    def value_for_actor(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q(s, a) for the actor's loss, which needs dQ/da only: detached weights, and the first layer W [s; a] + b
        split into W_s s + (W_a a + b), so that backward multiplies by W_a alone."""
        first, _, hidden, _, out = self.net
        w_obs, w_act = first.weight.detach().split([obs.shape[-1], action.shape[-1]], dim=1)
        h = F.relu(F.linear(obs, w_obs) + F.linear(action, w_act, first.bias.detach()))
        h = F.relu(F.linear(h, hidden.weight.detach(), hidden.bias.detach()))
        return F.linear(h, out.weight.detach(), out.bias.detach())


class Actor(nn.Module):
    """Gaussian policy squashed by tanh and rescaled to the action bounds: a = scale * tanh(u) + bias."""

    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.trunk = mlp(obs_dim, None)
        self.mean, self.log_std = nn.Linear(HIDDEN, low.shape[0]), nn.Linear(HIDDEN, low.shape[0])
        scale = torch.as_tensor((high - low) / 2.0, dtype=torch.float32)
        self.register_buffer("action_scale", scale)
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2.0, dtype=torch.float32))
        self.register_buffer("log_scale_sum", torch.log(scale).sum())  # log|det| of the affine rescaling
        for m in self.modules():  # Xavier-uniform weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        return self.mean(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized action and log pi(a|s), shape (B, 1). With u = mean + std * eps, a = scale * tanh(u) + bias:
            log pi(a) = log N(u; mean, std) - sum_i [log(1 - tanh(u_i)^2) + log scale_i]
        where log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)) stays finite when tanh(u) rounds to +-1."""
        mean, log_std = self(obs)
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        log_normal = -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)  # (u - mean) / std = eps
        log_det_tanh = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        log_prob = (log_normal - log_det_tanh).sum(-1, keepdim=True) - self.log_scale_sum
        return torch.tanh(u) * self.action_scale + self.action_bias, log_prob

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:  # the evaluation action
        return torch.tanh(self(obs)[0]) * self.action_scale + self.action_bias


# --- Replay buffer --------------------------------------------------------------------------------
class ReplayBuffer:
    """One ring of observation slots per env, each observation stored once: the transition at slot k of env e is
    (obs[e, k], actions[e, k], rewards[e, k], terminations[e, k], obs[e, k + 1]). At an episode's end in slot k the
    real final observation goes to slot k + 1, which starts no transition (valid False), and the reset one to k + 2.
    An overwritten slot stays invalid until its own transition is written, so wrap-around never mixes episodes."""

    ARRAYS = ("obs", "actions", "rewards", "terminations", "valid")

    def __init__(self, buffer_size: int, num_envs: int, obs_dim: int, act_dim: int, seed: int):
        self.num_envs, self.capacity = num_envs, buffer_size // num_envs
        n, c = num_envs, self.capacity
        self.obs, self.actions = np.zeros((n, c, obs_dim), np.float32), np.zeros((n, c, act_dim), np.float32)
        self.rewards = np.zeros((n, c), np.float32)
        self.terminations, self.valid = np.zeros((n, c), bool), np.zeros((n, c), bool)
        self.pos = np.zeros(n, dtype=np.int64)  # slot holding each env's current observation
        self.written = np.zeros(n, dtype=np.int64)  # slots ever written per env (not wrapped)
        self.rng, self.envs = np.random.default_rng(seed), np.arange(n)

    def start(self, obs: np.ndarray, envs: np.ndarray | None = None) -> None:  # obs that start a trajectory
        envs = self.envs if envs is None else envs
        self.obs[envs, self.pos[envs]] = obs
        self.valid[envs, self.pos[envs]] = False
        self.written[envs] += 1

    def add(self, actions, rewards, terminations, real_next_obs, dones, next_obs) -> None:
        """real_next_obs: s' (infos["final_obs"] where an episode ended); next_obs: the reset observation there."""
        e, p = self.envs, self.pos
        self.actions[e, p], self.rewards[e, p], self.terminations[e, p] = actions, rewards, terminations
        self.valid[e, p] = True
        self.pos = (p + 1) % self.capacity
        self.start(real_next_obs)
        ended = np.flatnonzero(dones)
        if ended.size:  # the reset observation takes the next slot; the final one starts nothing
            self.pos[ended] = (self.pos[ended] + 1) % self.capacity
            self.start(next_obs[ended], ended)

    def sample(self, batch_size: int) -> tuple[np.ndarray, ...]:
        filled = np.minimum(self.written, self.capacity)
        env = self.rng.integers(0, self.num_envs, size=batch_size)
        slot = self.rng.integers(0, filled[env])
        bad = np.flatnonzero(~self.valid[env, slot])
        while bad.size:  # redraw final-observation and not-yet-complete slots (a few percent at most)
            slot[bad] = self.rng.integers(0, filled[env[bad]])
            bad = bad[~self.valid[env[bad], slot[bad]]]
        row, next_row = env * self.capacity + slot, env * self.capacity + (slot + 1) % self.capacity
        obs = self.obs.reshape(-1, self.obs.shape[-1]).take(np.concatenate([row, next_row]), axis=0)  # one gather
        actions = self.actions.reshape(-1, self.actions.shape[-1]).take(row, axis=0)
        rewards, terminations = self.rewards.reshape(-1).take(row), self.terminations.reshape(-1).take(row)
        return obs[:batch_size], actions, rewards, terminations, obs[batch_size:]

    def save(self, directory: Path) -> dict:  # one plain .npy file per array; returns the rest of the state
        n = int(np.minimum(self.written, self.capacity).max())  # slots beyond n were never written
        for name in self.ARRAYS:
            array = getattr(self, name)[:, :n]
            write_file(directory / f"{name}.npy", lambda f: np.lib.format.write_array(f, array, allow_pickle=False))
        meta = {"pos": self.pos.tolist(), "written": self.written.tolist(), "slots": n}
        return meta | {"rng": self.rng.bit_generator.state}

    def load(self, directory: Path, meta: dict) -> None:
        for name in self.ARRAYS:
            target, path = getattr(self, name)[:, : meta["slots"]], directory / f"{name}.npy"
            try:
                data = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise Exit(f"checkpoint buffer file {path} is unreadable ({e}): truncated or corrupt") from None
            if data.shape != target.shape or data.dtype != target.dtype:
                raise Exit(f"checkpoint buffer file {path} is {data.shape} {data.dtype}, not {target.shape}")
            target[...] = data
        self.pos, self.written = np.asarray(meta["pos"]), np.asarray(meta["written"])
        self.rng.bit_generator.state = meta["rng"]


# === Speed path (--compile, --cudagraphs): optional, a plain run never enters it ==================
def cuda_graphed(step, warmup_calls: int = 3):
    """step(*tensors), recorded once as a CUDA graph and replayed: one launch per call. Every call is a real step:
    warmup_calls eager ones on a side stream (creating gradients and optimizer state), one that records, then replays
    on the recorded inputs, refilled. Needs what SAC provides: in-place state, capturable Adam, no host sync."""
    calls, graph, static_inputs, static_outputs = 0, None, None, None

    def run(*inputs):
        nonlocal calls, graph, static_inputs, static_outputs
        if graph is None and calls < warmup_calls:
            calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = step(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if graph is None:
            static_inputs, graph = [x.clone() for x in inputs], torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records the kernels, runs none of them
                static_outputs = step(*static_inputs)
        else:
            for static, x in zip(static_inputs, inputs):
                static.copy_(x, non_blocking=True)
        graph.replay()
        return static_outputs

    return run


# === End of the speed path ========================================================================


# --- The SAC update -------------------------------------------------------------------------------
class SAC:
    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray, args: Args, device: torch.device):
        self.obs_dim, self.act_dim, self.args, self.device = obs_dim, low.shape[0], args, device
        self.actor = Actor(obs_dim, low, high).to(device)
        critics = [SoftQNetwork(obs_dim, self.act_dim).to(device) for _ in range(4)]
        self.qf1, self.qf2, self.qf1_target, self.qf2_target = critics
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.q_params = [*self.qf1.parameters(), *self.qf2.parameters()]
        self.q_target_params = [*self.qf1_target.parameters(), *self.qf2_target.parameters()]
        # fused: one kernel for all parameters; capturable: the step count stays on the device (CUDA graphs)
        adam = dict(fused=device.type in ("cpu", "cuda"), capturable=args.cudagraphs)
        self.q_optimizer = torch.optim.Adam(self.q_params, lr=args.q_lr, **adam)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.policy_lr, **adam)
        self.target_entropy = -float(self.act_dim)
        # the optimizer holds log_alpha; alpha = exp(log_alpha) stays on the device (no host sync per update)
        self.log_alpha = torch.tensor([math.log(args.alpha)], device=device, requires_grad=args.autotune)
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=args.q_lr, **adam) if args.autotune else None
        self.alpha = torch.tensor([args.alpha], dtype=torch.float32, device=device)
        self.n_updates = 0
        if args.compile:  # speed path: Inductor kernels for the losses' forward and backward
            self.critic_loss, self.actor_loss = torch.compile(self.critic_loss), torch.compile(self.actor_loss)
        for name in ("update_critics", "update_policy", "update_targets", "sample_action") if args.cudagraphs else ():
            setattr(self, name, cuda_graphed(getattr(self, name)))  # speed path: one CUDA graph launch per call

    def modules(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in ("actor", "qf1", "qf2", "qf1_target", "qf2_target")}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        names = ("q_optimizer", "actor_optimizer", "a_optimizer")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def to_device(self, batch: tuple[np.ndarray, ...]) -> list[torch.Tensor]:
        tensors = [torch.from_numpy(np.asarray(x, dtype=np.float32)) for x in batch]
        cuda = self.device.type == "cuda"
        return [(t.pin_memory() if cuda else t).to(self.device, non_blocking=cuda) for t in tensors]

    def act(self, obs: np.ndarray) -> np.ndarray:  # an exploration action a ~ pi(.|s) per env
        return self.sample_action(*self.to_device([obs])).cpu().numpy()

    @torch.no_grad()
    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor.sample(obs)[0]

    def update(self, batch: tuple[np.ndarray, ...]) -> dict[str, torch.Tensor]:
        obs, actions, rewards, terminations, next_obs = self.to_device(batch)
        stats = dict(self.update_critics(obs, actions, rewards.unsqueeze(-1), terminations.unsqueeze(-1), next_obs))
        if self.n_updates % self.args.policy_frequency == 0:
            for _ in range(self.args.policy_frequency):  # delayed updates, compensated (TD3 / CleanRL)
                stats.update(self.update_policy(obs))
        if self.n_updates % self.args.target_network_frequency == 0:
            self.update_targets()
        self.n_updates += 1
        return stats

    def critic_loss(self, obs, actions, rewards, terminations, next_obs):
        """sum_j E[(Q_j(s, a) - y)^2], y = r + gamma (1 - terminated) (min_j Q'_j(s', a') - alpha log pi(a'|s')),
        a' ~ pi(.|s'), no gradient through y. A time-limit truncation is no terminal state: it bootstraps."""
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.sample(next_obs)
            next_q = torch.min(self.qf1_target(next_obs, next_actions), self.qf2_target(next_obs, next_actions))
            y = rewards + self.args.gamma * (1.0 - terminations) * (next_q - self.alpha * next_log_prob)
        qf1_values, qf2_values = self.qf1(obs, actions), self.qf2(obs, actions)
        qf1_loss, qf2_loss = F.mse_loss(qf1_values, y), F.mse_loss(qf2_values, y)
        qf_loss = qf1_loss + qf2_loss
        stats = dict(qf1_values=qf1_values.mean(), qf2_values=qf2_values.mean(), qf1_loss=qf1_loss, qf2_loss=qf2_loss)
        return qf_loss, {k: v.detach() for k, v in stats.items()} | {"qf_loss": qf_loss.detach() / 2.0}

    def update_critics(self, obs, actions, rewards, terminations, next_obs) -> dict[str, torch.Tensor]:
        qf_loss, stats = self.critic_loss(obs, actions, rewards, terminations, next_obs)
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()
        return stats

    def actor_loss(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        """J(pi) = E[alpha log pi(a|s) - min_j Q_j(s, a)], a ~ pi(.|s) reparameterized; also log pi."""
        pi, log_pi = self.actor.sample(obs)
        min_q = torch.min(self.qf1.value_for_actor(obs, pi), self.qf2.value_for_actor(obs, pi))
        return (self.alpha * log_pi - min_q).mean(), log_pi

    def update_policy(self, obs) -> dict[str, torch.Tensor]:
        """The actor step, then (autotune) the temperature step on the same log-probs: J(alpha) =
        E[-alpha (log pi + H_target)], alpha = exp(log_alpha), raises alpha when the entropy is below the target."""
        actor_loss, log_pi = self.actor_loss(obs)
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        if self.a_optimizer is None:
            return {"actor_loss": actor_loss.detach()}
        alpha_loss = (self.log_alpha.exp() * (-log_pi.detach() - self.target_entropy)).mean()
        self.a_optimizer.zero_grad()
        alpha_loss.backward()
        self.a_optimizer.step()
        with torch.no_grad():
            self.alpha.copy_(self.log_alpha.exp())
        return {"actor_loss": actor_loss.detach(), "alpha_loss": alpha_loss.detach()}

    @torch.no_grad()
    def update_targets(self) -> None:
        torch._foreach_lerp_(self.q_target_params, self.q_params, self.args.tau)  # target += tau (online - target)

    def weights_finite(self) -> bool:
        tensors = [p for m in self.modules().values() for p in m.parameters()] + [self.log_alpha]
        return all(bool(torch.isfinite(t).all()) for t in tensors)


# --- Files: every write goes through write_file; a failed one raises WriteError (exit 74) ---------


class WriteError(Exit):  # a failed write; the reason is the OSError's, found where torch or numpy wrapped it
    def __init__(self, path: Path, e: BaseException):
        while not isinstance(e, OSError) and (e.__cause__ or e.__context__) is not None:
            e = e.__cause__ or e.__context__
        reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        super().__init__(f"cannot write {path} ({reason})", EXIT_IO_ERROR)


def write_file(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def atomic_write(path: Path, write) -> None:  # temporary file, fsync, rename: the old file or the new one, never half
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_file(tmp, write)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, e) from None


def torch_load(path: Path, what: str) -> dict:  # weights_only: no code in the file can run
    if path.is_dir():
        names = ", ".join(sorted(p.name for p in path.glob("*model.pt"))) or "none"
        raise Exit(f"{what} {path} is a directory; pass a file in it (model files there: {names})")
    if not path.is_file():
        raise Exit(f"{what} {path} does not exist; check the path")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle headers: the line below says it all
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not torch's message: it may advise weights_only=False, i.e. running the file's code
        raise Exit(f"{what} {path} is unreadable ({type(e).__name__}): truncated, corrupt, or not ours") from None
    if not isinstance(data, dict):
        raise Exit(f"{what} {path} is not a file written by sac_continuous.py")
    return data


# --- Evaluation and model files -------------------------------------------------------------------

MODEL_FORMAT, CHECKPOINT_FORMAT = "sac_continuous/model/v1", "sac_continuous/checkpoint/v1"


def evaluate(actor: Actor, env_id: str, episodes: int, seed: int, device: torch.device, video_path=None) -> list:
    """Deterministic returns (tanh of the mean) on a fresh env seeded with `seed`, optionally filming the first
    episode as MP4. Uses no training RNG, so evaluating never changes the training run."""
    env = make_env(env_id, render_mode="rgb_array" if video_path else None)
    returns, frames = [], []
    obs, _ = env.reset(seed=seed)
    for episode in range(episodes):
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                action = actor.deterministic(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            total, done = total + float(reward), terminated or truncated
            if video_path and episode == 0:
                frames.append(env.render())
        returns.append(total)
        obs, _ = env.reset()
    env.close()
    if video_path and frames:
        tmp = video_path.with_name(video_path.stem + ".part.mp4")
        try:  # ffmpeg quiet: a failure is reported in one line
            video_path.parent.mkdir(parents=True, exist_ok=True)
            fps = env.metadata.get("render_fps", 30)
            importlib.import_module("imageio.v2").mimsave(tmp, frames, fps=fps, ffmpeg_log_level="quiet")
            os.replace(tmp, video_path)
        except (OSError, RuntimeError) as e:
            tmp.unlink(missing_ok=True)
            raise WriteError(video_path, e) from None
    return returns


def save_model(agent: SAC, env_id: str, global_step: int, path: Path) -> None:
    model = dict(format=MODEL_FORMAT, env_id=env_id, global_step=global_step, obs_dim=agent.obs_dim)
    model.update(act_dim=agent.act_dim, actor=agent.actor.state_dict())
    model.update(qf1=agent.qf1.state_dict(), qf2=agent.qf2.state_dict())
    atomic_write(path, lambda f: torch.save(model, f))


# --- Checkpoints: atomic, complete (weights, optimizers, buffer, env state, every RNG) and exact --
def find_checkpoint(path: Path) -> Path | None:  # a run, checkpoints/ or step_* dir -> the step dir to load
    for root in (path / "checkpoints", path):
        if (root / "latest").is_file():
            return root / (root / "latest").read_text().strip()
    return path if (path / "state.pt").is_file() else None


def save_checkpoint(run_dir: Path, state: dict, rb: ReplayBuffer) -> Path:
    """checkpoints/step_N/{state.pt, buffer/*.npy} under a temporary name, renamed, then `latest` switched; only then
    are older checkpoints removed. A failure removes what this call wrote and raises WriteError."""
    root, name = run_dir / "checkpoints", f"step_{state['global_step']:012d}"
    final, tmp = root / name, root / f".tmp_{name}"
    if find_checkpoint(run_dir) == final:  # this step is saved already (e.g. periodic, then at exit)
        return final
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "buffer").mkdir(parents=True)
        state = {**state, "buffer": rb.save(tmp / "buffer")}
        fsync_dir(tmp / "buffer")
        write_file(tmp / "state.pt", lambda f: torch.save(state, f))
        fsync_dir(tmp)
        os.replace(tmp, final)
        fsync_dir(root)
        atomic_write(root / "latest", lambda f: f.write(f"{name}\n".encode()))
    except (OSError, RuntimeError, WriteError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if find_checkpoint(run_dir) != final:  # renamed, but `latest` still names the previous one
            shutil.rmtree(final, ignore_errors=True)
        raise e if isinstance(e, WriteError) else WriteError(final, e) from None
    clear_leftovers(run_dir, keep=final)
    return final


def clear_leftovers(run_dir: Path, keep: Path | None) -> None:
    """Temporary files of a killed or failed process, partial videos, and checkpoints that `latest` does not name (a
    kill between the rename and the switch); never `keep`, nor any step_* while there is no `latest`."""
    latest, root = find_checkpoint(run_dir), run_dir / "checkpoints"
    found = [*run_dir.glob(".*.tmp"), *run_dir.glob("videos/*.part.mp4"), *(root.iterdir() if root.is_dir() else [])]
    for p in found:
        if p in (latest, keep) or p.name == "latest" or (latest is None and p.name.startswith("step_")):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


class MjDataUnpickler(pickle.Unpickler):
    """MjData holds derived quantities (e.g. body positions the next reward uses) besides the integration state, so
    it is saved whole. Its loader accepts that one class and nothing else: no code can run."""

    def find_class(self, module, name):
        if (module, name) != ("mujoco._structs", "MjData"):
            raise pickle.UnpicklingError(f"unexpected class {module}.{name} in MuJoCo state")
        return importlib.import_module("mujoco").MjData


def env_layers(env: gym.Env) -> list:
    return [env] + (env_layers(env.env) if isinstance(env, gym.Wrapper) else [])


def get_env_state(env: gym.Env) -> dict:
    """The plain-valued attributes of every wrapper and env layer (step counters, episode sums, Pendulum's state...)
    as python values and tensors (for weights_only loading), the env's RNG, and MuJoCo's MjData whole."""
    layers = []
    for layer in env_layers(env):
        attrs = {k: v for k, v in vars(layer).items() if isinstance(v, (bool, int, float, str, type(None)))}
        attrs |= {k: v.item() for k, v in vars(layer).items() if isinstance(v, np.generic)}  # np.float64 is a float
        attrs |= {k: torch.from_numpy(v.copy()) for k, v in vars(layer).items() if isinstance(v, np.ndarray)}
        layers.append(attrs)
    base = env.unwrapped
    state = {"layers": layers, "np_random": base.np_random.bit_generator.state}
    if type(getattr(base, "data", None)).__name__ == "MjData":
        state["mjdata"] = pickle.dumps(base.data)
    return state


def set_env_state(env: gym.Env, state: dict) -> None:
    layers = env_layers(env)
    if len(layers) != len(state["layers"]):
        raise Exit("the checkpoint's environment has a different wrapper stack; it was made by another version")
    for layer, saved in zip(layers, state["layers"]):
        for k, v in saved.items():
            current = getattr(layer, k, None)
            if isinstance(v, torch.Tensor) and isinstance(current, np.ndarray) and current.shape == v.shape:
                current[...] = v.numpy()  # in place: the array may be shared (e.g. a view into MjData)
            else:
                setattr(layer, k, v.numpy().copy() if isinstance(v, torch.Tensor) else v)
    base = env.unwrapped
    base.np_random.bit_generator.state = state["np_random"]
    if "mjdata" in state:
        saved = MjDataUnpickler(io.BytesIO(state["mjdata"])).load()
        importlib.import_module("mujoco").mj_copyData(base.data, base.model, saved)


def checkpoint_state(args, agent: SAC, envs, obs, global_step: int, best_eval: float, last_return: float) -> dict:
    # everything the run needs to go on exactly as if it had not stopped (the buffer is added on save)
    np_state = np.random.get_state()  # its key array as a tensor, for weights_only loading
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    rng["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = dict(format=CHECKPOINT_FORMAT, args=dataclasses.asdict(args), obs_dim=agent.obs_dim, act_dim=agent.act_dim)
    state.update(global_step=global_step, n_updates=agent.n_updates, best_eval=best_eval, last_return=last_return)
    state.update(obs=torch.from_numpy(obs.copy()), modules={k: m.state_dict() for k, m in agent.modules().items()})
    state.update(optimizers={k: o.state_dict() for k, o in agent.optimizers().items()}, rng=rng)
    state.update(log_alpha=agent.log_alpha.detach().clone(), alpha=agent.alpha.clone())
    envs_state = dict(action_space_rng=envs.action_space.np_random.bit_generator.state)
    return state | envs_state | {"envs": [get_env_state(env) for env in envs.envs]}


def restore(saved: dict, ckpt: Path, agent: SAC, rb: ReplayBuffer, envs: gym.vector.SyncVectorEnv) -> tuple:
    """checkpoint_state's inverse. log_alpha is overwritten in place: the optimizer holds that very tensor."""
    try:
        for k, m in agent.modules().items():
            m.load_state_dict(saved["modules"][k])
        for k, o in agent.optimizers().items():
            o.load_state_dict(saved["optimizers"][k])
            for group in o.param_groups:  # how this process steps (fused, capturable) is not part of the run
                group.update(fused=o.defaults["fused"], capturable=o.defaults["capturable"])
        with torch.no_grad():
            agent.log_alpha.copy_(saved["log_alpha"])
            agent.alpha.copy_(saved["alpha"])
        agent.n_updates = saved["n_updates"]
        rb.load(ckpt / "buffer", saved["buffer"])
        for env, env_state in zip(envs.envs, saved["envs"]):
            set_env_state(env, env_state)
        envs.action_space.np_random.bit_generator.state = saved["action_space_rng"]
        rng = saved["rng"]
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return saved["obs"].numpy(), saved["global_step"], saved["best_eval"], saved["last_return"]
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0][:160]
        raise Exit(f"checkpoint {ckpt} does not fit this run ({type(e).__name__}: {reason})") from None


# Arguments that define the run: on --resume they come from the checkpoint. A command-line value
# that differs from both the default and the checkpoint is a conflict and is refused.
RUN_DEFINING = ("env_id", "num_envs", "buffer_size", "gamma", "tau", "batch_size", "learning_starts")
RUN_DEFINING += ("policy_lr", "q_lr", "policy_frequency", "target_network_frequency", "alpha", "autotune", "seed")


def prepare_run(args: Args) -> tuple[Args, Path, Path | None, dict | None]:
    """The run directory and, when resuming, the checkpoint, its state and the run-defining flags from it."""
    if args.resume and args.resume != "auto":
        ckpt = find_checkpoint(Path(args.resume)) if Path(args.resume).exists() else None
        if ckpt is None:
            raise Exit(f"--resume {args.resume}: no checkpoint there; pass a run or a checkpoints/step_* directory")
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    else:
        name = args.run_name or f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
        run_dir = Path(args.output_dir) / name
        ckpt = find_checkpoint(run_dir) if args.resume == "auto" and run_dir.exists() else None
        # --resume auto with no checkpoint yet (e.g. killed before the first one) starts the run afresh
        if ckpt is None and args.resume != "auto" and run_dir.exists() and any(run_dir.iterdir()):
            raise Exit(f"run directory {run_dir} already holds a run; add --resume auto, or choose another --run-name")
    if ckpt is None:
        return args, run_dir, None, None
    saved = torch_load(ckpt / "state.pt", "checkpoint")
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise Exit(f"{ckpt / 'state.pt'} is not a sac_continuous.py checkpoint")
    for name in RUN_DEFINING:
        if name not in saved["args"]:
            raise Exit(f"checkpoint lacks args.{name}; it is damaged or from another version")
        cli, old = getattr(args, name), saved["args"][name]
        if cli != old and cli != getattr(Args(), name):
            raise Exit(f"{flag(name)} {cli} conflicts with the checkpoint's {old}; drop it to resume, or start anew")
    return dataclasses.replace(args, **{k: saved["args"][k] for k in RUN_DEFINING}), run_dir, ckpt, saved


def resume_command(args: Args, run_dir: Path) -> str:
    """--resume restores the run-defining flags; the others (total, evaluation, device...) are given again."""
    words = [os.environ.get("SAC_COMMAND", "python sac_continuous.py"), "--resume", str(run_dir)]
    for field in dataclasses.fields(Args):
        name, value = field.name, getattr(args, field.name)
        if name in RUN_DEFINING or name in ("resume", "run_name", "output_dir") or value == field.default:
            continue
        words += [flag(name) if value else flag("no_" + name)] if isinstance(value, bool) else [flag(name), str(value)]
    return " ".join(words)


def last_checkpoint(run_dir: Path, good: str = "") -> str:
    latest = find_checkpoint(run_dir) if run_dir.is_dir() else None
    return f"the last {good}checkpoint {latest} is intact" if latest else "no checkpoint was written yet"


# --- The training loop ----------------------------------------------------------------------------
def catch_stop_signals() -> list:
    """First SIGINT/SIGTERM: its name goes into the list (the loop checkpoints and exits 75); a second: exit 130."""
    caught = []

    def handle(signum, frame):
        if caught:
            os._exit(EXIT_ABORTED)
        caught.append(signal.Signals(signum).name)
        print(f"\n{caught[0]}: finishing this step, writing a checkpoint (again: quit at once)", file=sys.stderr)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return caught


def open_run(args: Args, run_dir: Path, ckpt: Path | None, saved: dict | None, global_step: int):
    """Create the run dir (the first write), clear a killed process's leftovers, write args.json, start W&B (--track;
    it mirrors TensorBoard) and TensorBoard. On resume, TensorBoard hides what the stopped process logged after its
    checkpoint, and W&B rewinds the run to its step at that checkpoint. Returns (writer, the wandb module or None)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        docker = os.environ.get("SAC_COMMAND") and f", or run the container as your user: {os.environ['SAC_COMMAND']}"
        raise Exit(f"cannot write to {run_dir} ({e.strerror}); choose a writable --output-dir{docker or ''}") from None
    print(f"run: {run_dir}" + (f" (resumed at step {global_step} from {ckpt.name})" if ckpt else ""), file=sys.stderr)
    clear_leftovers(run_dir, keep=ckpt)
    if saved is None:
        text = json.dumps(dataclasses.asdict(args), indent=2) + "\n"
        atomic_write(run_dir / "args.json", lambda f: f.write(text.encode()))
    wandb = importlib.import_module("wandb") if args.track else None
    if wandb:
        id_file, step = run_dir / "wandb_run_id", saved and saved.get("wandb_step")
        run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
        where = dict(resume_from=f"{run_id}?_step={step}") if step else dict(id=run_id, resume="allow")
        init = dict(project=args.wandb_project_name, entity=args.wandb_entity, name=run_dir.name, dir=run_dir)
        wandb.init(**init, **where, config=dataclasses.asdict(args), sync_tensorboard=True, save_code=True)
        atomic_write(id_file, lambda f: f.write(run_id.encode()))
    hook = threading.excepthook  # the writer thread's failed write: the writer re-raises it, reported in one line
    threading.excepthook = lambda a: type(a.thread).__name__ == "_AsyncWriterThread" or hook(a)
    purge_step = global_step + 1 if saved else 0 if any(run_dir.glob("events.out.tfevents.*")) else None
    writer = importlib.import_module("torch.utils.tensorboard").SummaryWriter(str(run_dir), purge_step=purge_step)
    if saved is None:
        table = "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items())
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
    return writer, wandb


def progress_bar(total: int, start: int, learning_starts: int):  # on a terminal only
    if not sys.stderr.isatty():
        return None
    rp = importlib.import_module("rich.progress")
    columns = [
        rp.BarColumn(),
        rp.MofNCompleteColumn(),
        rp.TextColumn("{task.fields[info]}  ETA"),
        rp.TimeRemainingColumn(),
    ]
    bar = rp.Progress(rp.TextColumn("{task.description}"), *columns, console=rp.Console(stderr=True))
    phase = "SAC: training" if start >= learning_starts else f"SAC: random actions until {learning_starts:,}"
    bar.add_task(phase, total=total, completed=start, info="")
    bar.start()
    return bar


def crossed(step: int, prev_step: int, every: int) -> bool:  # a multiple of `every` lies in (prev_step, step]
    return every > 0 and step // every > prev_step // every


def evaluate_and_save(agent: SAC, args: Args, run_dir: Path, global_step: int, best_eval: float, writer, wandb, bar):
    video = run_dir / "videos" / f"eval_step_{global_step:012d}.mp4" if args.capture_video else None
    returns = evaluate(agent.actor, args.env_id, args.eval_episodes, args.seed + 10_000, agent.device, video)
    mean, std = float(np.mean(returns)), float(np.std(returns))
    writer.add_scalar("eval/mean_return", mean, global_step)
    writer.add_scalar("eval/std_return", std, global_step)
    if video and wandb:
        wandb.log({"videos/eval": wandb.Video(str(video), format="mp4")}, commit=False)
    save_model(agent, args.env_id, global_step, run_dir / "model.pt")
    if mean > best_eval:
        save_model(agent, args.env_id, global_step, run_dir / "best_model.pt")
    text = f"step {global_step}: eval return {mean:.1f} ± {std:.1f} over {len(returns)} episodes"
    bar.console.print(text) if bar else print(text, file=sys.stderr)
    return max(mean, best_eval)


def diverged(global_step: int, run_dir: Path, what: str) -> Exit:
    text = f"training diverged at step {global_step} (non-finite {what}); {last_checkpoint(run_dir, good='good ')}"
    return Exit(text + ". Try lower --policy-lr/--q-lr", EXIT_DIVERGED)


def train(args: Args) -> int:
    # Setup: everything that can refuse the input happens before anything is written
    device = check_args(args)
    args, run_dir, ckpt, saved = prepare_run(args)
    check_rendering(args.env_id, args.capture_video)
    envs = make_vector_env(args.env_id, args.num_envs)
    obs_dim, space = envs.single_observation_space.shape[0], envs.single_action_space
    if saved is not None and (saved.get("obs_dim"), saved.get("act_dim")) != (obs_dim, space.shape[0]):
        raise Exit(f"checkpoint {ckpt} does not fit {args.env_id}: its observation/action sizes differ")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    agent = SAC(obs_dim, space.low, space.high, args, device)
    rb = ReplayBuffer(args.buffer_size, args.num_envs, obs_dim, space.shape[0], seed=args.seed)
    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    global_step, best_eval, last_return, info = 0, -math.inf, math.nan, ""
    if saved is not None:  # the checkpoint overwrites all of the above
        obs, global_step, best_eval, last_return = restore(saved, ckpt, agent, rb, envs)
        if global_step >= args.total_timesteps:
            print(f"{run_dir} is already at step {global_step}; a larger --total-timesteps extends it", file=sys.stderr)
            return 0
    else:
        rb.start(obs)
    caught, bar, writer, wandb = catch_stop_signals(), None, None, None
    try:
        writer, wandb = open_run(args, run_dir, ckpt, saved, global_step)
        bar = progress_bar(args.total_timesteps, global_step, args.learning_starts)
        start_step, start_time = global_step, time.time()
        while global_step < args.total_timesteps:
            # ALGO LOGIC: act (random until learning starts), step the envs, store s' (the real final obs at an end)
            actions = envs.action_space.sample() if global_step < args.learning_starts else agent.act(obs)
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            dones, real_next_obs = terminations | truncations, next_obs.copy()
            if dones.any():
                real_next_obs[infos["_final_obs"]] = np.stack(infos["final_obs"][infos["_final_obs"]])
                episode = infos["final_info"]["episode"]
                for i in np.flatnonzero(infos["final_info"]["_episode"]):
                    last_return = float(episode["r"][i])
                    writer.add_scalar("charts/episodic_return", last_return, global_step + i + 1)
                    writer.add_scalar("charts/episodic_length", int(episode["l"][i]), global_step + i + 1)
            rb.add(actions, rewards, terminations, real_next_obs, dones, next_obs)
            obs, prev_step, global_step = next_obs, global_step, global_step + args.num_envs

            # ALGO LOGIC: one SAC update per vector step once learning has started
            if global_step > args.learning_starts:
                stats = agent.update(rb.sample(args.batch_size))
                if agent.n_updates % args.log_frequency == 0:
                    stats = {k: v.item() for k, v in stats.items()} | {"alpha": agent.alpha.item()}
                    if not all(map(math.isfinite, stats.values())):
                        raise diverged(global_step, run_dir, ", ".join(f"{k}={v:.4g}" for k, v in stats.items()))
                    for k, v in stats.items():
                        writer.add_scalar(f"losses/{k}", v, global_step)
                    sps = int((global_step - start_step) / (time.time() - start_time))
                    writer.add_scalar("charts/SPS", sps, global_step)
                    info = f"{sps} SPS" + ("" if math.isnan(last_return) else f", return {last_return:.1f}")

            # Evaluation (before learning starts, once), model files; checkpoints periodically, at the end, on a signal
            last, stopping = global_step >= args.total_timesteps, bool(caught) and global_step < args.total_timesteps
            learned = global_step > args.learning_starts or best_eval == -math.inf
            evaluating = (crossed(global_step, prev_step, args.eval_frequency) and learned) or last
            saving = stopping or crossed(global_step, prev_step, args.checkpoint_frequency)
            saving = saving or (last and args.checkpoint_frequency > 0)
            if (evaluating or saving) and not agent.weights_finite():
                raise diverged(global_step, run_dir, "weights")
            if evaluating:
                best_eval = evaluate_and_save(agent, args, run_dir, global_step, best_eval, writer, wandb, bar)
            if saving:
                writer.flush()  # the events up to this step reach the disk before the checkpoint that follows them
                state = checkpoint_state(args, agent, envs, obs, global_step, best_eval, last_return)
                path = save_checkpoint(run_dir, state | {"wandb_step": wandb.run.step if wandb else None}, rb)
            if bar:  # restarted when learning starts, so that the ETA is the training rate
                if prev_step < args.learning_starts <= global_step:
                    bar.reset(0, total=args.total_timesteps, completed=global_step, description="SAC: training")
                bar.update(0, completed=global_step, info=info)
            if stopping:
                text = f"stopped by {caught[0]} at step {global_step}; checkpoint {path}. Resume with: "
                raise Exit(text + resume_command(args, run_dir), EXIT_INTERRUPTED)
        writer.close()
    except (OSError, WriteError) as e:  # a checkpoint, model, video or event write failed: no training goes on
        e = e if isinstance(e, WriteError) else WriteError(Path(e.filename or run_dir / "events.out.tfevents"), e)
        fix = f"{last_checkpoint(run_dir)}. Fix it, then resume with: {resume_command(args, run_dir)}"
        raise Exit(f"{e} at step {global_step}; {fix}", EXIT_IO_ERROR) from None
    finally:
        bar.stop() if bar else None
        envs.close()
        try:  # at any exit, what the loggers hold goes to disk if it can
            writer.close() if writer else None
        except OSError:
            pass
        wandb.finish() if wandb and wandb.run else None
    print(f"done: {global_step} steps; outputs in {run_dir}", file=sys.stderr)
    return 0


def eval_only(args: Args) -> int:
    device, path = check_args(args), Path(args.eval_checkpoint)
    check_rendering(args.env_id, args.capture_video)
    data = torch_load(path, "model file")
    if data.get("format") != MODEL_FORMAT:
        raise Exit(f"{path} is not a sac_continuous.py model file (model.pt or best_model.pt)")
    if data["env_id"] != args.env_id:
        raise Exit(f"{path} was trained on {data['env_id']}, not {args.env_id}; pass --env-id {data['env_id']}")
    env = make_env(args.env_id)
    low, high, obs_dim = env.action_space.low, env.action_space.high, env.observation_space.shape[0]
    env.close()
    if (data["obs_dim"], data["act_dim"]) != (obs_dim, len(low)):
        raise Exit(f"{path}: observation/action sizes {data['obs_dim']}/{data['act_dim']}, not {obs_dim}/{len(low)}")
    actor = Actor(obs_dim, low, high).to(device)
    actor.load_state_dict(data["actor"])
    video = path.parent / "videos" / f"eval_{path.stem}.mp4" if args.capture_video else None
    returns = evaluate(actor, args.env_id, args.eval_episodes, args.seed + 10_000, device, video)
    print(f"{args.env_id} {path}: mean return {np.mean(returns):.1f} ± {np.std(returns):.1f} over {len(returns)}")
    print(f"video: {video}") if video else None
    return 0


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    if args.capture_video and "MUJOCO_GL" not in os.environ:  # before mujoco is imported
        os.environ["MUJOCO_GL"] = "egl" if torch.cuda.is_available() else "osmesa"
    if os.environ.get("MUJOCO_GL") == "osmesa" and importlib.util.find_spec("triton") is not None:
        importlib.import_module("triton")  # OSMesa's own LLVM crashes triton when triton is imported after it
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        code = eval_only(args) if args.eval_checkpoint else train(args)
    except Exit as e:
        print(str(e) if e.code == EXIT_INTERRUPTED else f"error: {e}", file=sys.stderr)
        code = e.code
    except KeyboardInterrupt:  # before training started (setup, eval-only): nothing to save
        print("interrupted", file=sys.stderr)
        code = EXIT_ABORTED
    sys.exit(code)


if __name__ == "__main__":
    main()
