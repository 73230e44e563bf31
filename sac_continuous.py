"""Soft Actor-Critic for continuous control, in one file: python sac_continuous.py --env-id Humanoid-v5

Tanh-squashed Gaussian actor, twin Q critics, automatic entropy tuning (Haarnoja et al. 2018, arXiv:1812.05905).
Exit codes: 0 done, 2 bad input (nothing written), 3 diverged, 74 a write, read or render failed, 75 stopped by a
signal (checkpoint written), 130 aborted (Ctrl-C before training, or a second one).
"""

import contextlib
import dataclasses
import importlib.util
import io
import json
import logging
import math
import os
import pickle
import random
import shlex
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path


def quit_at_once(signum, frame) -> None:  # Ctrl-C before training (imports, setup, --eval-checkpoint): nothing to save
    print("interrupted", file=sys.stderr)
    os._exit(130)  # EXIT_ABORTED, not defined yet while torch imports


if __name__ == "__main__":  # before the imports (torch's takes seconds); train() then installs its own handler
    signal.signal(signal.SIGINT, quit_at_once)

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

EXIT_BAD_INPUT = 2  # the exit codes, as the docstring lists them
EXIT_DIVERGED = 3
EXIT_IO_ERROR = 74
EXIT_INTERRUPTED = 75
EXIT_ABORTED = 130
DEFAULT_ENV_ID = "Humanoid-v5"  # trained when --env-id is not given


# --- Args -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Args:
    env_id: str = ""  # the id of a gymnasium environment with a Box action space; empty: Humanoid-v5, or the model's
    total_timesteps: int = 1_000_000  # environment steps to train for, over all envs (on --resume, the new total)
    seed: int = 1  # in [0, 2**32): seed of python, numpy, torch, the environments and the replay buffer
    torch_deterministic: bool = True  # make cuDNN deterministic (`torch.backends.cudnn.deterministic`)
    device: str = "auto"  # auto (CUDA if available, else CPU), or a torch device such as cpu, cuda, cuda:1, mps
    num_threads: int = 0  # torch CPU threads; 0: OMP_NUM_THREADS if set, else the cores other processes leave idle
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
    eval_checkpoint: str = ""  # evaluate this model.pt (or best_model.pt) on its env and exit, without training
    exp_name: str = "sac"  # the experiment's name, part of the default --run-name
    run_name: str = ""  # the run directory under --output-dir; empty: <env-id>__<exp-name>__<seed>__<unix time>
    output_dir: str = "runs"  # where run directories are created
    log_frequency: int = 100  # write loss scalars to TensorBoard every N gradient updates
    track: bool = False  # also log to Weights & Biases (pip install wandb); --resume continues the same W&B run
    wandb_project_name: str = "sac_continuous"  # the W&B project
    wandb_entity: str | None = None  # the W&B team or user; None: your default entity
    compile: bool = False  # torch.compile the critic and actor losses: a speed option for GPUs, the same algorithm
    cudagraphs: bool = False  # CUDA: replay updates as CUDA graphs (the same algorithm; exact resume not guaranteed)


class Exit(Exception):  # main() prints the message as one line on stderr and exits with the code
    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_args(args: Args) -> None:  # refuses unusable flags before anything is written
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
    if not 0 <= args.seed < 2**32:  # numpy's global seed
        raise Exit(f"--seed must be in [0, 2**32), got {args.seed}")
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
    if args.track and not wandb_key_found():
        raise Exit("--track: no W&B API key found; run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline")


def pick_device(args: Args) -> torch.device:
    """--device, refused where it cannot run (or cannot run --compile, --cudagraphs); on a CPU without a thread-exact
    BLAS mode, one line says what that costs."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    try:
        device = torch.device(("cuda" if available["cuda"] else "cpu") if args.device == "auto" else args.device)
    except RuntimeError:
        raise Exit(f"--device '{args.device}' is not a torch device; use auto, cpu, cuda or mps") from None
    if not available.get(device.type, True):
        raise Exit(f"--device {args.device}: {device.type.upper()} is not available here; use --device cpu or auto")
    if args.cudagraphs and device.type != "cuda":
        raise Exit(f"--cudagraphs needs a CUDA device, but the device is {device}; drop it or use --device cuda")
    cxx = os.environ.get("CXX", "g++")
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")
    if args.compile and device.type == "cpu" and shutil.which(cxx) is None:
        raise Exit(f"--compile on CPU needs a C++ compiler ({cxx}, or set CXX); install it or drop --compile")
    if args.compile and device.type == "cuda" and (importlib.util.find_spec("triton") is None or not cc):
        raise Exit("--compile on CUDA needs triton and a C compiler (gcc, or set CC); install them or drop --compile")
    if device.type == "cpu" and not (torch.backends.mkl.is_available() and "STRICT" in os.environ.get("MKL_CBWR", "")):
        print(
            "note: no thread-exact BLAS mode here (MKL, AVX2): same bits only at a fixed --num-threads", file=sys.stderr
        )
    return device


# --- Environments ---------------------------------------------------------------------------------
def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    try:
        if env_id.startswith("dm_control/"):  # the DeepMind Control Suite: shimmy registers its tasks when imported
            warnings.filterwarnings("ignore", module="glfw")  # no display: dm_control renders headless if asked
            logging.getLogger("absl").setLevel(logging.ERROR)  # dm_control's notes on deprecated MJCF, at every make
            import shimmy  # noqa: F401
        env = gym.make(env_id, render_mode=render_mode)
    except gym.error.Error as e:  # NameNotFound, VersionNotFound, DeprecatedEnv, missing extras...
        raise Exit(f"cannot make environment '{env_id}': {str(e).rstrip('.')}; check --env-id") from None
    except ImportError as e:
        raise Exit(f"environment '{env_id}' needs a missing package ({e}); install it") from None
    if isinstance(env.observation_space, gym.spaces.Dict):  # e.g. dm_control's: its parts as one vector
        env = gym.wrappers.FlattenObservation(env)
    space = env.action_space
    obs_space = env.observation_space
    if not isinstance(space, gym.spaces.Box):
        raise Exit(f"'{env_id}' has a {type(space).__name__} action space; SAC here needs a continuous (Box) one")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise Exit(f"'{env_id}' has observation space {obs_space}; this script needs a flat Box")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise Exit(f"'{env_id}' has an unbounded action space; SAC squashes actions into finite bounds")
    return env


def make_envs(args: Args) -> gym.vector.SyncVectorEnv:
    """--num-envs copies that record their episodes' returns and lengths. SAME_STEP autoreset: an episode's last step
    returns the reset observation, and the real last one in infos["final_obs"]."""
    make = [lambda: gym.wrappers.RecordEpisodeStatistics(make_env(args.env_id))] * args.num_envs
    return gym.vector.SyncVectorEnv(make, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def real_next_obs(next_obs: np.ndarray, infos: dict) -> np.ndarray:  # s' of each env: the final obs where one ended
    real = next_obs.copy()
    if "_final_obs" in infos:
        real[infos["_final_obs"]] = np.stack(infos["final_obs"][infos["_final_obs"]])
    return real


# --- Networks -------------------------------------------------------------------------------------
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
HIDDEN = 256


def mlp(in_dim: int, out_dim: int | None) -> nn.Sequential:
    layers = [nn.Linear(in_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU()]
    return nn.Sequential(*layers, *([nn.Linear(HIDDEN, out_dim)] if out_dim else []))


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q(s, a). With its weights held fixed (in the actor's loss), the first layer W [s; a] + b is computed as
        W_s s + W_a a + b: backward then differentiates the action's part only, not the observation's."""
        first = self.net[0]
        if first.weight.requires_grad:
            return self.net(torch.cat([obs, action], dim=-1))
        w_obs, w_act = first.weight.split([obs.shape[-1], action.shape[-1]], dim=1)
        return self.net[1:](F.linear(obs, w_obs) + F.linear(action, w_act, first.bias))


class Actor(nn.Module):  # a Gaussian policy squashed by tanh, rescaled to the action bounds: a = scale * tanh(u) + bias
    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.trunk = mlp(obs_dim, None)
        self.mean = nn.Linear(HIDDEN, low.shape[0])
        self.log_std = nn.Linear(HIDDEN, low.shape[0])
        scale = torch.as_tensor((high - low) / 2.0, dtype=torch.float32)
        self.register_buffer("action_scale", scale)
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2.0, dtype=torch.float32))
        self.register_buffer("log_scale_sum", torch.log(scale).sum())  # log|det| of the affine rescaling
        for layer in [m for m in self.modules() if isinstance(m, nn.Linear)]:  # Xavier-uniform weights, zero biases
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        return self.mean(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def get_action(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    """One ring of observation slots per env, each observation stored once: slot k of env e holds the transition
    (obs, actions, rewards, terminations)[e, k] -> obs[e, k + 1]. An episode's real final observation takes a slot that
    starts no transition (valid False); an overwritten slot is invalid until its own transition is written."""

    ARRAYS = ("obs", "actions", "rewards", "terminations", "valid")

    @staticmethod
    def nbytes(buffer_size: int, num_envs: int, obs_dim: int, act_dim: int) -> int:  # what __init__ allocates
        return num_envs * (buffer_size // num_envs) * (4 * (obs_dim + act_dim + 1) + 2)  # float32 x3, bool x2

    def __init__(self, buffer_size: int, num_envs: int, obs_dim: int, act_dim: int, seed: int):
        self.num_envs = num_envs
        self.capacity = buffer_size // num_envs
        shape = (num_envs, self.capacity)
        self.obs = np.zeros((*shape, obs_dim), np.float32)
        self.actions = np.zeros((*shape, act_dim), np.float32)
        self.rewards = np.zeros(shape, np.float32)
        self.terminations = np.zeros(shape, bool)
        self.valid = np.zeros(shape, bool)
        self.pos = np.zeros(num_envs, dtype=np.int64)  # slot holding each env's current observation
        self.written = np.zeros(num_envs, dtype=np.int64)  # slots ever written per env (not wrapped)
        self.rng = np.random.default_rng(seed)
        self.envs = np.arange(num_envs)

    def start(self, obs: np.ndarray, envs: np.ndarray | None = None) -> None:  # obs that start a trajectory
        envs = self.envs if envs is None else envs
        self.obs[envs, self.pos[envs]] = obs
        self.valid[envs, self.pos[envs]] = False
        self.written[envs] += 1

    def add(self, actions, rewards, terminations, real_next_obs, dones, next_obs) -> None:  # next_obs: after resets
        slot = (self.envs, self.pos)
        self.actions[slot] = actions
        self.rewards[slot] = rewards
        self.terminations[slot] = terminations
        self.valid[slot] = True
        self.pos = (self.pos + 1) % self.capacity
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
        row = env * self.capacity + slot
        next_row = env * self.capacity + (slot + 1) % self.capacity
        obs = self.obs.reshape(-1, self.obs.shape[-1]).take(np.concatenate([row, next_row]), axis=0)  # one gather
        actions = self.actions.reshape(-1, self.actions.shape[-1]).take(row, axis=0)
        rewards = self.rewards.reshape(-1).take(row)
        terminations = self.terminations.reshape(-1).take(row)
        return obs[:batch_size], actions, rewards, terminations, obs[batch_size:]


# --- The SAC update -------------------------------------------------------------------------------
class SAC:
    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray, args: Args, device: torch.device):
        self.obs_dim = obs_dim
        self.act_dim = low.shape[0]
        self.args = args
        self.device = device
        self.actor = Actor(obs_dim, low, high).to(device)
        self.qf1 = SoftQNetwork(obs_dim, self.act_dim).to(device)
        self.qf2 = SoftQNetwork(obs_dim, self.act_dim).to(device)
        self.qf1_target = SoftQNetwork(obs_dim, self.act_dim).to(device)
        self.qf2_target = SoftQNetwork(obs_dim, self.act_dim).to(device)
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.q_params = [*self.qf1.parameters(), *self.qf2.parameters()]
        self.q_target_params = [*self.qf1_target.parameters(), *self.qf2_target.parameters()]
        # fused: one kernel for all parameters; capturable: the step count stays on the device (CUDA graphs)
        adam = dict(fused=device.type in ("cpu", "cuda"), capturable=args.cudagraphs)
        self.q_optimizer = torch.optim.Adam(self.q_params, lr=args.q_lr, **adam)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.policy_lr, **adam)
        # the optimizer holds log_alpha; alpha = exp(log_alpha) stays on the device (no host sync per update)
        self.log_alpha = torch.tensor([math.log(args.alpha)], device=device, requires_grad=args.autotune)
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=args.q_lr, **adam) if args.autotune else None
        self.alpha = torch.tensor([args.alpha], dtype=torch.float32, device=device)
        self.target_entropy = -float(self.act_dim)
        self.n_updates = 0
        # what a checkpoint saves: the networks and the optimizers, by name
        self.networks = dict(actor=self.actor, qf1=self.qf1, qf2=self.qf2, qf1_target=self.qf1_target)
        self.networks["qf2_target"] = self.qf2_target
        self.optimizers = dict(q_optimizer=self.q_optimizer, actor_optimizer=self.actor_optimizer)
        if self.a_optimizer is not None:
            self.optimizers["a_optimizer"] = self.a_optimizer

    def to_device(self, batch: tuple[np.ndarray, ...]) -> list[torch.Tensor]:
        tensors = [torch.from_numpy(np.asarray(x, dtype=np.float32)) for x in batch]
        if self.device.type != "cuda":
            return [t.to(self.device) for t in tensors]
        return [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]

    def act(self, obs: np.ndarray) -> np.ndarray:  # an exploration action a ~ pi(.|s) per env
        return self.sample_action(*self.to_device([obs])).cpu().numpy()

    @torch.no_grad()
    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor.get_action(obs)[0]

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
            next_actions, next_log_prob = self.actor.get_action(next_obs)
            next_q = torch.min(self.qf1_target(next_obs, next_actions), self.qf2_target(next_obs, next_actions))
            y = rewards + self.args.gamma * (1.0 - terminations) * (next_q - self.alpha * next_log_prob)
        qf1_values = self.qf1(obs, actions)
        qf2_values = self.qf2(obs, actions)
        qf1_loss = F.mse_loss(qf1_values, y)
        qf2_loss = F.mse_loss(qf2_values, y)
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
        """J(pi) = E[alpha log pi(a|s) - min_j Q_j(s, a)], a ~ pi(.|s) reparameterized; also log pi. The critics'
        own forward pass, their weights held fixed: the gradient reaches the actor through a, none the critics."""
        pi, log_pi = self.actor.get_action(obs)
        for p in self.q_params:  # fixed while the graph is built (as in Spinning Up)
            p.requires_grad_(False)
        min_q = torch.min(self.qf1(obs, pi), self.qf2(obs, pi))
        for p in self.q_params:
            p.requires_grad_(True)
        return (self.alpha * log_pi - min_q).mean(), log_pi

    def update_policy(self, obs) -> dict[str, torch.Tensor]:
        """Actor step, then (autotune) J(alpha) = E[-alpha (log pi + H_target)]: alpha rises when the entropy is low."""
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


def speed_up(agent: SAC, args: Args) -> None:
    """The speed path, as LeanRL applies it: --compile turns the losses into Inductor kernels (forward and backward),
    --cudagraphs records each update step and the action sampling once and replays them. A plain run skips it."""
    if args.compile:
        agent.critic_loss = torch.compile(agent.critic_loss)
        agent.actor_loss = torch.compile(agent.actor_loss)
    if args.cudagraphs:
        agent.update_critics = cuda_graphed(agent.update_critics)
        agent.update_policy = cuda_graphed(agent.update_policy)
        agent.update_targets = cuda_graphed(agent.update_targets)
        agent.sample_action = cuda_graphed(agent.sample_action)


# --- Evaluation -----------------------------------------------------------------------------------
def evaluate(actor: Actor, env_id: str, episodes: int, seed: int, device: torch.device, video_path=None) -> list:
    """Deterministic returns on a fresh env, the first episode optionally filmed; no training RNG is touched."""
    env = make_env(env_id, render_mode="rgb_array" if video_path else None)
    returns = []
    frames = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        total = 0.0
        done = False
        while not done:
            with torch.no_grad():
                action = actor.deterministic(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            total += float(reward)
            done = terminated or truncated
            if video_path and episode == 0:
                frames.append(env.render())
        returns.append(total)
    env.close()
    if video_path and frames:
        write_video(video_path, frames, env.metadata.get("render_fps", 30))
    return returns


# --- The training loop ----------------------------------------------------------------------------
@dataclasses.dataclass
class LoopState:  # what the loop carries from one step to the next: a checkpoint saves it, a resume restores it
    obs: np.ndarray  # each env's current observation
    global_step: int = 0
    best_eval: float = -math.inf
    last_return: float = math.nan  # of the last finished episode (the progress bar shows it)


def train(args: Args) -> int:
    # Setup: everything that can refuse the input happens before anything is written
    check_args(args)
    device = pick_device(args)
    args, run_dir, ckpt, saved = prepare_run(args)
    check_rendering(args.env_id, args.capture_video)
    envs = make_envs(args)
    obs_dim = envs.single_observation_space.shape[0]
    act_space = envs.single_action_space
    check_memory(args, obs_dim, act_space.shape[0])
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    agent = SAC(obs_dim, act_space.low, act_space.high, args, device)
    speed_up(agent, args)  # --compile, --cudagraphs; a plain run is unchanged
    rb = ReplayBuffer(args.buffer_size, args.num_envs, obs_dim, act_space.shape[0], seed=args.seed)
    state = LoopState(obs=envs.reset(seed=args.seed)[0])
    envs.action_space.seed(args.seed)
    if saved is None:
        rb.start(state.obs)
    else:  # the checkpoint overwrites all of the above
        state = restore(saved, ckpt, agent, rb, envs)
    stop_requests = StopRequests()  # Ctrl-C, SIGTERM: a checkpoint after this step, then exit 75
    log = None
    try:
        make_run_dir(run_dir, ckpt, state.global_step)
        log = Loggers(args, run_dir, saved is not None, state.global_step)
        if saved is None:  # after W&B's start: a start that fails before it leaves what the same command accepts
            write_args(run_dir, args)
        while state.global_step < args.total_timesteps:
            # ALGO LOGIC: uniformly random actions until learning starts, then a ~ pi(.|s)
            if state.global_step < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                actions = agent.act(state.obs)
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            dones = terminations | truncations
            if dones.any():
                state.last_return = log.episodes(infos["final_info"], state.global_step, state.last_return)
            rb.add(actions, rewards, terminations, real_next_obs(next_obs, infos), dones, next_obs)
            state.obs = next_obs
            prev_step = state.global_step
            state.global_step += args.num_envs

            # ALGO LOGIC: one SAC update per vector step once learning has started
            if state.global_step > args.learning_starts:
                stats = agent.update(rb.sample(args.batch_size))

            # Loss logs; evaluations (also one before learning); checkpoints (periodic, at the end, on a signal)
            step = state.global_step
            logging = step > args.learning_starts and agent.n_updates % args.log_frequency == 0
            last = step >= args.total_timesteps
            stopping = bool(stop_requests) and not last
            may_evaluate = step > args.learning_starts or state.best_eval == -math.inf
            evaluating = (crossed(step, prev_step, args.eval_frequency) and may_evaluate) or last
            saving = crossed(step, prev_step, args.checkpoint_frequency) or (last and args.checkpoint_frequency > 0)
            if logging or evaluating or saving or stopping:
                check_finite(agent, run_dir, step)  # NaN/Inf weights: exit 3 before they are written anywhere
            if logging:
                log.losses(stats | {"alpha": agent.alpha}, step, state.last_return)
                choose_threads(args)
            if evaluating:
                state.best_eval = evaluate_and_save(agent, args, run_dir, state, log)
            if saving or stopping:
                log.flush()  # the events up to this step reach the disk before the checkpoint that follows them
                path = save_checkpoint(run_dir, checkpoint_state(args, agent, envs, state), rb)
            log.progress(step, prev_step)
            if stopping:
                text = f"stopped by {stop_requests[0]} at step {step}; checkpoint {path}. Resume with: "
                raise Exit(text + resume_command(args, run_dir), EXIT_INTERRUPTED)
        log.close()
    except (OSError, WriteError) as e:  # a write (checkpoint, model, video, events), read or render failed: stop
        raise io_failure(e, args, run_dir, state.global_step) from None
    finally:
        envs.close()
        if log is not None:
            log.close(quietly=True)  # at any exit, what the loggers hold goes to disk if it can
    print(f"done: {state.global_step} steps; outputs in {run_dir}", file=sys.stderr)
    return 0


# ==================================================================================================
# Run machinery. Above: SAC whole. Below: what makes a run safe to stop, resume and watch: files,
# checkpoints, env state, resume, loggers, signals and threads, the CUDA-graph wrapper, rendering.
# ==================================================================================================


# --- Files: every write goes through write_file; a failed one raises WriteError (exit 74) ---------
def first_line(e: BaseException) -> str:  # an exception's message in one line (its type if it has none)
    return (str(e).splitlines() or [type(e).__name__])[0]


class WriteError(Exit):  # a failed write; the reason is the OSError's, found where torch or numpy wrapped it
    def __init__(self, path: Path, e: BaseException):
        while not isinstance(e, OSError) and (e.__cause__ or e.__context__) is not None:
            e = e.__cause__ or e.__context__
        reason = getattr(e, "strerror", None) or first_line(e)
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
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # the suffix kept: ffmpeg wants .mp4
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(tmp, write)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, e) from None


def write_video(path: Path, frames: list, fps: int) -> None:  # ffmpeg writes the temporary file by name, quietly
    import imageio.v2

    mp4 = dict(format="FFMPEG", fps=fps, ffmpeg_log_level="quiet")
    atomic_write(path, lambda f: imageio.v2.mimwrite(f.name, frames, **mp4))


def write_args(run_dir: Path, args: Args) -> None:
    atomic_write(run_dir / "args.json", lambda f: f.write(json.dumps(dataclasses.asdict(args), indent=2).encode()))


def torch_load(path: Path, what: str, fmt: str) -> dict:  # weights_only: no code in the file can run
    if path.is_dir():
        names = ", ".join(sorted(p.name for p in path.glob("*model.pt"))) or "none"
        raise Exit(f"{what} {path} is a directory; pass a file in it (model files there: {names})")
    if not path.is_file():
        raise Exit(f"{what} {path} does not exist; check the path")
    try:
        with warnings.catch_warnings(action="ignore"):  # torch warns about odd pickle headers: one line says it all
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not torch's message: it may advise weights_only=False, i.e. running the file's code
        raise Exit(f"{what} {path} is unreadable ({type(e).__name__}): truncated, corrupt, or not ours") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise Exit(f"{what} {path} is not a file written by sac_continuous.py")
    return data


# --- Checkpoints: atomic, complete (weights, optimizers, buffer, env state, every RNG) and exact --
MODEL_FORMAT = "sac_continuous/model/v1"
CHECKPOINT_FORMAT = "sac_continuous/checkpoint/v1"


def find_checkpoint(path: Path) -> Path | None:  # a run, checkpoints/ or step_* dir -> the step dir to load
    """The newest step_N (12 digits: the name order is the step order). Its rename into place ends its write, so it
    is complete; `latest`, written after it, only tells people and tools, and a crash may leave it behind."""
    for root in (path / "checkpoints", path):
        newest = max(root.glob("step_" + "[0-9]" * 12), default=None)
        if newest:
            return newest
    return path if (path / "state.pt").is_file() else None


def save_checkpoint(run_dir: Path, state: dict, rb: ReplayBuffer) -> Path:
    """step_N/{state.pt, buffer/*.npy} as a temporary dir, renamed (now it is the one a resume takes), `latest`
    switched, older ones removed."""
    root = run_dir / "checkpoints"
    name = f"step_{state['global_step']:012d}"
    final = root / name
    tmp = root / f".tmp_{name}"
    try:
        (tmp / "buffer").mkdir(parents=True)
        slots = int(np.minimum(rb.written, rb.capacity).max())  # slots beyond were never written
        for key in rb.ARRAYS:  # plain .npy files: numpy alone reads them
            array = getattr(rb, key)[:, :slots]
            write_file(tmp / "buffer" / f"{key}.npy", lambda f: np.lib.format.write_array(f, array, allow_pickle=False))
        meta = dict(pos=rb.pos.tolist(), written=rb.written.tolist(), slots=slots, rng=rb.rng.bit_generator.state)
        write_file(tmp / "state.pt", lambda f: torch.save(state | {"buffer": meta}, f))
        for path in (tmp / "buffer", tmp):
            fsync_dir(path)
        os.replace(tmp, final)
        fsync_dir(root)
        atomic_write(root / "latest", lambda f: f.write(f"{name}\n".encode()))
    except (OSError, RuntimeError, WriteError) as e:
        shutil.rmtree(tmp, ignore_errors=True)  # once renamed, `final` is complete: it stays
        raise e if isinstance(e, WriteError) else WriteError(final, e) from None
    clear_leftovers(run_dir, keep=final)
    return final


def clear_leftovers(run_dir: Path, keep: Path | None) -> None:
    """A killed process's temporary files and partial videos, and every checkpoint but `keep` (the one resumed or
    just written; None: the newest)."""
    keep = keep or find_checkpoint(run_dir)
    root = run_dir / "checkpoints"
    found = [*run_dir.glob(".*.tmp*"), *run_dir.glob("videos/.*.tmp*"), *(root.iterdir() if root.is_dir() else [])]
    for p in found:
        if p == keep or p.name == "latest":
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def saved_so_far(run_dir: Path) -> str:  # what an error message says of the run's checkpoints
    newest = find_checkpoint(run_dir) if run_dir.is_dir() else None
    return f"the last checkpoint {newest} is intact" if newest else "no checkpoint was written yet"


def rng_state() -> dict:  # python's, numpy's (its key array as a tensor, for weights_only), torch's and CUDA's
    name, keys, *rest = np.random.get_state()
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    rng["numpy"] = [name, torch.from_numpy(keys.astype(np.int64)), *rest]
    rng["cuda"] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return rng


def set_rng_state(rng: dict) -> None:
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def checkpoint_state(args: Args, agent: SAC, envs, state: LoopState) -> dict:
    """Everything the run needs to go on exactly as if it had not stopped (save_checkpoint adds the buffer)."""
    saved = dict(format=CHECKPOINT_FORMAT, args=dataclasses.asdict(args), obs_dim=agent.obs_dim, act_dim=agent.act_dim)
    saved |= dict(global_step=state.global_step, best_eval=state.best_eval, last_return=state.last_return)
    saved |= dict(obs=torch.from_numpy(state.obs.copy()), n_updates=agent.n_updates, rng=rng_state())
    saved["modules"] = {k: m.state_dict() for k, m in agent.networks.items()}
    saved["optimizers"] = {k: o.state_dict() for k, o in agent.optimizers.items()}
    saved |= dict(log_alpha=agent.log_alpha.detach().clone(), alpha=agent.alpha.clone())
    saved["envs"] = [get_env_state(env) for env in envs.envs]
    saved["action_space_rng"] = envs.action_space.np_random.bit_generator.state
    return saved


def restore(saved: dict, ckpt: Path, agent: SAC, rb: ReplayBuffer, envs: gym.vector.SyncVectorEnv) -> LoopState:
    """checkpoint_state's inverse. log_alpha is overwritten in place: the optimizer holds that very tensor."""
    try:
        for k, module in agent.networks.items():
            module.load_state_dict(saved["modules"][k])
        for k, optimizer in agent.optimizers.items():
            optimizer.load_state_dict(saved["optimizers"][k])
            for group in optimizer.param_groups:  # how this process steps (fused, capturable) is not part of the run
                group.update(fused=optimizer.defaults["fused"], capturable=optimizer.defaults["capturable"])
        agent.log_alpha.data.copy_(saved["log_alpha"])
        agent.alpha.copy_(saved["alpha"])
        agent.n_updates = saved["n_updates"]
        meta = saved["buffer"]
        for key in rb.ARRAYS:
            target = getattr(rb, key)[:, : meta["slots"]]
            path = ckpt / "buffer" / f"{key}.npy"
            data = np.load(path, mmap_mode="r", allow_pickle=False)
            if data.shape != target.shape or data.dtype != target.dtype:
                raise ValueError(f"{path} is {data.shape} {data.dtype}, not {target.shape} {target.dtype}")
            target[...] = data
        rb.pos = np.asarray(meta["pos"])
        rb.written = np.asarray(meta["written"])
        rb.rng.bit_generator.state = meta["rng"]
        for env, env_state in zip(envs.envs, saved["envs"], strict=True):
            set_env_state(env, env_state)
        envs.action_space.np_random.bit_generator.state = saved["action_space_rng"]
        set_rng_state(saved["rng"])
        return LoopState(saved["obs"].numpy(), saved["global_step"], saved["best_eval"], saved["last_return"])
    except (OSError, KeyError, RuntimeError, ValueError, TypeError, AttributeError, pickle.UnpicklingError) as e:
        reason = first_line(e)[:200]
        raise Exit(f"checkpoint {ckpt} is damaged or does not fit this run ({type(e).__name__}: {reason})") from None


def evaluate_and_save(agent: SAC, args: Args, run_dir: Path, state: LoopState, log) -> float:
    """Evaluates the actor, logs the returns, writes model.pt (and best_model.pt when best); the new best return."""
    step = state.global_step
    video = run_dir / "videos" / f"eval_step_{step:012d}.mp4" if args.capture_video else None
    returns = evaluate(agent.actor, args.env_id, args.eval_episodes, args.seed + 10_000, agent.device, video)
    mean = float(np.mean(returns))
    std = float(np.std(returns))
    log.scalar("eval/mean_return", mean, step)
    log.scalar("eval/std_return", std, step)
    if video:
        log.video(video, step)
    model = dict(format=MODEL_FORMAT, env_id=args.env_id, global_step=step, obs_dim=agent.obs_dim)
    model |= dict(act_dim=agent.act_dim, **{k: getattr(agent, k).state_dict() for k in ("actor", "qf1", "qf2")})
    for name in ["model.pt"] + (["best_model.pt"] if mean > state.best_eval else []):
        atomic_write(run_dir / name, lambda f: torch.save(model, f))
    print(f"step {step}: eval return {mean:.1f} ± {std:.1f} over {len(returns)} episodes", file=sys.stderr)
    return max(mean, state.best_eval)


# --- Env state: every wrapper's counters, the env's RNG and MuJoCo's MjData ----------------------
# MjData is saved whole: it holds derived quantities the next step uses. Its loader accepts that class only.
class MjDataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        import mujoco

        if (module, name) != ("mujoco._structs", "MjData"):
            raise pickle.UnpicklingError(f"unexpected class {module}.{name} in MuJoCo state")
        return mujoco.MjData


def env_layers(env: gym.Env) -> list:  # the wrappers down to the env, and the dm_control env in shimmy's adapter
    if isinstance(env, gym.Wrapper):
        return [env] + env_layers(env.env)
    return [env] + ([vars(env)["_env"]] if hasattr(env, "physics") and "_env" in vars(env) else [])


def mujoco_parts(env: gym.Env) -> tuple:  # MuJoCo's (MjModel, MjData) of a gymnasium env, or of dm_control's Physics
    base = env.unwrapped
    if hasattr(base, "physics"):
        return base.physics.model.ptr, base.physics.data.ptr
    return getattr(base, "model", None), getattr(base, "data", None)


def get_env_state(env: gym.Env) -> dict:
    """Every layer's plain attributes (step counters, episode sums...) as python values and tensors, RNG, MjData."""
    layers = []
    for layer in env_layers(env):
        attrs = {k: v for k, v in vars(layer).items() if isinstance(v, (bool, int, float, str, type(None)))}
        attrs |= {k: v.item() for k, v in vars(layer).items() if isinstance(v, np.generic)}  # np.float64 is a float
        attrs |= {k: torch.from_numpy(v.copy()) for k, v in vars(layer).items() if isinstance(v, np.ndarray)}
        layers.append(attrs)
    state = {"layers": layers}
    rng = env.unwrapped.np_random
    if isinstance(rng, np.random.RandomState):  # dm_control's legacy generator: its whole state, the key as a tensor
        name, key, *rest = rng.get_state()
        state["legacy_np_random"] = [name, torch.from_numpy(key.astype(np.int64)), *rest]
    else:
        state["np_random"] = rng.bit_generator.state
    mjdata = mujoco_parts(env)[1]
    if type(mjdata).__name__ == "MjData":
        state["mjdata"] = pickle.dumps(mjdata)
    return state


def set_env_state(env: gym.Env, state: dict) -> None:
    import mujoco

    for layer, saved in zip(env_layers(env), state["layers"], strict=True):  # the same wrapper stack
        for k, v in saved.items():
            current = getattr(layer, k, None)
            if isinstance(v, torch.Tensor) and isinstance(current, np.ndarray) and current.shape == v.shape:
                current[...] = v.numpy()  # in place: the array may be shared (e.g. a view into MjData)
            else:
                setattr(layer, k, v.numpy().copy() if isinstance(v, torch.Tensor) else v)
    if "legacy_np_random" in state:
        name, key, *rest = state["legacy_np_random"]
        env.unwrapped.np_random.set_state((name, key.numpy().astype(np.uint32), *rest))
    else:
        env.unwrapped.np_random.bit_generator.state = state["np_random"]
    if "mjdata" in state:
        model, data = mujoco_parts(env)
        mujoco.mj_copyData(data, model, MjDataUnpickler(io.BytesIO(state["mjdata"])).load())


# --- Resume: the run directory, its checkpoint, and the command that continues it -----------------
# Arguments that define the run: on --resume they come from the checkpoint (other non-default values are refused)
RUN_DEFINING = ("env_id", "num_envs", "buffer_size", "gamma", "tau", "batch_size", "learning_starts")
RUN_DEFINING += ("policy_lr", "q_lr", "policy_frequency", "target_network_frequency", "alpha", "autotune", "seed")
FAILED_START = ("events.out.tfevents.", "wandb_run_id")  # what a start that fails before args.json may leave


def prepare_run(args: Args) -> tuple[Args, Path, Path | None, dict | None]:
    """The run directory and, when resuming, the checkpoint, its state and the run-defining flags from it. Without
    --env-id a new run trains DEFAULT_ENV_ID, a resumed one its checkpoint's env."""
    if args.resume and args.resume != "auto":
        ckpt = find_checkpoint(Path(args.resume)) if Path(args.resume).exists() else None
        if ckpt is None:
            raise Exit(f"--resume {args.resume}: no checkpoint there; pass a run or a checkpoints/step_* directory")
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    else:
        name = args.run_name or f"{args.env_id or DEFAULT_ENV_ID}__{args.exp_name}__{args.seed}__{int(time.time())}"
        run_dir = Path(args.output_dir, name)
        ckpt = find_checkpoint(run_dir) if args.resume == "auto" and run_dir.exists() else None
        # --resume auto with no checkpoint yet (e.g. killed before the first one) starts the run afresh; the same
        # command goes on after a start that failed before training (it left no args.json)
        started = [p for p in run_dir.iterdir() if not p.name.startswith(FAILED_START)] if run_dir.is_dir() else []
        if ckpt is None and args.resume != "auto" and started:
            raise Exit(f"run directory {run_dir} already holds a run; add --resume auto, or choose another --run-name")
    if ckpt is None:
        return dataclasses.replace(args, env_id=args.env_id or DEFAULT_ENV_ID), run_dir, None, None
    saved = torch_load(ckpt / "state.pt", "checkpoint", CHECKPOINT_FORMAT)
    if not isinstance(saved.get("args"), dict) or not set(RUN_DEFINING) <= saved["args"].keys():
        raise Exit(f"checkpoint {ckpt} lacks its run's arguments: it is damaged or from another version")
    if saved.get("global_step", 0) >= args.total_timesteps:
        raise Exit(f"{run_dir} is already at step {saved['global_step']}; a larger --total-timesteps extends it", 0)
    for name in RUN_DEFINING:
        cli = getattr(args, name)
        old = saved["args"].get(name)
        if cli != old and cli != getattr(Args(), name):
            raise Exit(f"{flag(name)} {cli} conflicts with the checkpoint's {old}; drop it to resume, or start anew")
    return dataclasses.replace(args, **{k: saved["args"][k] for k in RUN_DEFINING}), run_dir, ckpt, saved


def make_run_dir(run_dir: Path, ckpt: Path | None, step: int) -> None:
    """The run directory, named on stderr first; a killed process's leftovers in it are removed."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        docker = os.environ.get("SAC_COMMAND")  # in the Docker image
        folder = next((p for p in run_dir.parents if p.exists()), Path("."))
        text = f"cannot write to {run_dir} ({e.strerror})"
        if docker and isinstance(e, PermissionError) and folder.stat().st_uid == 0:  # e.g. a runs/ Docker made
            text += f": {folder} is owned by root (did Docker create it?): sudo chown $(id -u):$(id -g) {folder}"
            raise Exit(text + ", or mkdir it yourself before docker run") from None
        as_user = f", or run the container as your user: {docker}" if docker else ""
        raise Exit(f"{text}; choose a writable --output-dir{as_user}") from None
    print(f"run: {run_dir}" + (f" (resumed at step {step} from {ckpt.name})" if ckpt else ""), file=sys.stderr)
    clear_leftovers(run_dir, keep=ckpt)


def resume_command(args: Args, run_dir: Path) -> str:
    """This run's flags with --resume auto: it goes on from the last checkpoint, or starts afresh if there is none.
    Shell-quoted, to be pasted; $SAC_COMMAND (the Docker image's) is shell text already, kept as it is."""
    args = dataclasses.replace(args, resume="auto", run_name=run_dir.name, output_dir=str(run_dir.parent))
    words = []
    for field in dataclasses.fields(Args):
        value = getattr(args, field.name)
        if isinstance(value, bool) and value != field.default:
            words.append(flag(field.name if value else "no_" + field.name))
        elif value != field.default:
            words += [flag(field.name), str(value)]
    return os.environ.get("SAC_COMMAND", "python sac_continuous.py") + " " + shlex.join(words)


def available_memory() -> int | None:
    """Bytes that can be allocated now: Linux's MemAvailable (free and reclaimable), else the free pages, else None."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/meminfo") as f:
            return 1024 * int(next(line.split()[1] for line in f if line.startswith("MemAvailable:")))
    with contextlib.suppress(OSError, ValueError, AttributeError):  # macOS and Windows lack one or the other
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def check_memory(args: Args, obs_dim: int, act_dim: int) -> None:  # numpy may allocate lazily: a run killed later
    need = ReplayBuffer.nbytes(args.buffer_size, args.num_envs, obs_dim, act_dim)
    free = available_memory()
    if free is not None and need > free:
        text = f"--buffer-size {args.buffer_size} needs {need / 2**30:.1f} GiB of memory for {args.env_id}"
        raise Exit(text + f", but {free / 2**30:.1f} GiB is available; use a smaller --buffer-size")


# --- Loggers: TensorBoard, W&B (--track) and the progress bar -------------------------------------
def wandb_key_found() -> bool:  # wandb's own lookup (WANDB_API_KEY, ~/.netrc, its settings), with no network
    import wandb

    try:
        offline = wandb.setup().settings.mode in ("offline", "dryrun", "disabled")
        return offline or wandb.login(verify=False, prompt=False)
    except Exception as e:  # a malformed key or WANDB_* setting
        raise Exit(f"--track: {' '.join(str(e).split())}") from None


class WandbRun:
    """W&B beside TensorBoard, each scalar at its environment step. It continues the run whose id wandb_run_id keeps
    (resume="allow", no rewind) and skips the steps W&B already holds: a resumed online run's starting_step is W&B's
    last step + 1, and exact resume logs the same values again. A failure of W&B (at init or a log: unreachable server,
    timeout) prints one line and W&B goes on offline with the same run id, for `wandb sync`; training never stops."""

    def __init__(self, args: Args, run_dir: Path):
        import wandb

        self.wandb = wandb
        self.id_file = run_dir / "wandb_run_id"
        self.run = None
        self.run_id = self.id_file.read_text().strip() if self.id_file.is_file() else os.urandom(6).hex()  # a new run
        where = None if os.environ.get("WANDB_DIR") else run_dir.parent  # $WANDB_DIR/wandb, else <output-dir>/wandb
        self.init = dict(project=args.wandb_project_name, entity=args.wandb_entity, name=run_dir.name, dir=where)
        self.init |= dict(config=dataclasses.asdict(args), save_code=True, resume="allow")
        self.open(mode=None)  # WANDB_MODE's

    def open(self, mode: str | None) -> None:
        self.mode = mode
        try:
            self.run = self.wandb.init(**self.init, id=self.run_id, mode=mode)
        except Exception as e:
            self.fail("init", e)
            return
        atomic_write(self.id_file, lambda f: f.write(self.run.id.encode()))
        self.first = self.run.starting_step

    def fail(self, what: str, e: Exception) -> None:  # one line; W&B goes on offline, or stops if it was offline
        self.run = None
        with contextlib.suppress(Exception):
            self.wandb.teardown()  # the failed run's service, which holds its run id
        line = f"warning: W&B {what} failed ({first_line(e)}); "
        if self.mode == "offline":
            print(line + "W&B stops here, TensorBoard goes on", file=sys.stderr)
            return
        self.open(mode="offline")
        if self.run:
            sync = f"wandb sync {self.run.settings.sync_dir}"
            print(line + f"W&B goes on offline with the same run id; send it later with: {sync}", file=sys.stderr)

    def log(self, data: dict, step: int) -> None:
        if self.run is None or step < self.first:
            return
        try:
            self.run.log(data, step=step)
        except Exception as e:
            self.fail("log", e)
            self.log(data, step)

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as e:
            print(f"warning: W&B finish failed ({first_line(e)})", file=sys.stderr)
        self.run = None


class Loggers:
    """Every scalar to TensorBoard and, with --track, to W&B, at its environment step; on a terminal a progress bar:
    the random phase with its own steps and ETA, then training with its ETA and recent rate. On resume TensorBoard
    drops what a dead process logged after the checkpoint (purge_step)."""

    def __init__(self, args: Args, run_dir: Path, resumed: bool, step: int):
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard's writer thread: its failed write is raised again in this thread at the next call, as one line
        self.excepthook = threading.excepthook
        threading.excepthook = lambda hook_args: isinstance(hook_args.exc_value, OSError) or self.excepthook(hook_args)
        purge_step = None
        if resumed or any(run_dir.glob("events.out.tfevents.*")):
            purge_step = step + 1 if resumed else 0
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step)
        self.wandb = WandbRun(args, run_dir) if args.track else None
        self.learning_starts = args.learning_starts
        self.total = args.total_timesteps
        self.start = (step, time.time())  # charts/SPS counts from here (CleanRL's: since this process started)
        self.mark = self.start  # the bar's rate counts from here: the last loss log, or when learning started
        self.info = ""
        self.bar = None
        if sys.stderr.isatty():
            self.bar = progress_bar(args, step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        if self.wandb:
            self.wandb.log({tag: value}, step)

    def episodes(self, final_info: dict, step: int, last_return: float) -> float:  # the return of the last one
        for i in np.flatnonzero(final_info["_episode"]):
            last_return = float(final_info["episode"]["r"][i])
            self.scalar("charts/episodic_return", last_return, step + i + 1)
            self.scalar("charts/episodic_length", int(final_info["episode"]["l"][i]), step + i + 1)
        return last_return

    def losses(self, stats: dict, step: int, last_return: float) -> None:
        for k, v in stats.items():
            self.scalar(f"losses/{k}", v.item(), step)
        now = time.time()
        self.scalar("charts/SPS", int((step - self.start[0]) / (now - self.start[1])), step)
        recent = (step - self.mark[0]) / (now - self.mark[1])
        self.mark = (step, now)
        self.info = f"{recent:.0f} SPS" + ("" if math.isnan(last_return) else f", return {last_return:.1f}")

    def video(self, path: Path, step: int) -> None:
        if self.wandb:
            self.wandb.log({"videos/eval": self.wandb.wandb.Video(str(path), format="mp4")}, step)

    def progress(self, step: int, prev_step: int) -> None:
        if prev_step < self.learning_starts <= step:  # the training phase: its own bar, ETA and rate
            self.mark = (step, time.time())
            if self.bar:
                self.bar.reset(0, total=self.total, completed=step, description="SAC: training")
        if self.bar:
            self.bar.update(0, completed=step, info=self.info)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, quietly: bool = False) -> None:  # quietly: at an error's exit, a failed write says nothing
        if self.bar:
            self.bar.stop()
        try:
            self.writer.close()
        except OSError:
            if not quietly:
                raise
        finally:
            if self.wandb:
                self.wandb.finish()
            threading.excepthook = self.excepthook


def progress_bar(args: Args, step: int):
    """The random phase: its own steps and ETA; Loggers.progress switches to the whole run when learning starts."""
    from rich import progress

    columns = [progress.TextColumn("{task.description}"), progress.BarColumn(), progress.MofNCompleteColumn()]
    columns += [progress.TextColumn("{task.fields[info]}  ETA"), progress.TimeRemainingColumn()]
    bar = progress.Progress(*columns, console=progress.Console(stderr=True))
    if step < args.learning_starts:
        bar.add_task(
            "SAC: random actions", total=min(args.learning_starts, args.total_timesteps), completed=step, info=""
        )
    else:
        bar.add_task("SAC: training", total=args.total_timesteps, completed=step, info="")
    bar.start()
    return bar


# --- Signals, threads, failures -------------------------------------------------------------------
class StopRequests(list):
    """The SIGINT/SIGTERM handler: the first signal's name is kept (the loop checkpoints, exits 75); a second one quits
    at once (130), showing the cursor that the progress bar hid, since no clean-up runs."""

    def __init__(self):
        super().__init__()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self)

    def __call__(self, signum, frame):
        if self:
            if os.isatty(2):
                os.write(2, b"\n\x1b[?25h")
            os._exit(EXIT_ABORTED)
        self.append(signal.Signals(signum).name)
        print(f"\n{self[0]}: finishing this step, writing a checkpoint (again: quit at once)", file=sys.stderr)


def mkl_strict_mode(cpuinfo: str) -> str | None:
    """MKL's strict reproducible mode (MKL_CBWR) for this CPU: matrix products with the same bits at any thread count.
    MKL has it on its AVX2 and AVX-512 code paths: Intel CPUs choose theirs (AUTO), others (AMD) are given AVX2."""
    words = cpuinfo.split()
    if words and "avx2" not in words:
        return None  # an old CPU: no strict mode (pick_device says so)
    return "AUTO,STRICT" if "GenuineIntel" in words or not words else "AVX2,STRICT"


# Same seed, same bits at any thread count. MKL reads MKL_CBWR at its first call, cuBLAS its workspace setting (fixed,
# hence deterministic) when CUDA starts: both before any use. A value the user set is kept.
CPUINFO = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""  # off Linux: unknown
strict_mode = mkl_strict_mode(CPUINFO)
if strict_mode:
    os.environ.setdefault("MKL_CBWR", strict_mode)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


OWN_LOAD = {"share": 0.0, "since": time.monotonic()}  # this process's part of the load average


def choose_threads(args: Args, at_start: bool = False) -> None:
    """--num-threads, else OMP_NUM_THREADS, else one thread until learning starts, then the cores that other processes
    leave idle: waiting for a busy core makes threads many times slower. Idle: the cores less the 1-minute load
    average less this process's part of it, averaged as the kernel averages (exponentially, over a minute), so that a
    run that just started does not take its own threads, which the average does not show yet, for idle cores."""
    now = time.monotonic()
    decay = math.exp(-(now - OWN_LOAD["since"]) / 60)
    OWN_LOAD["share"] = OWN_LOAD["share"] * decay + torch.get_num_threads() * (1 - decay)
    OWN_LOAD["since"] = now
    if args.num_threads or "OMP_NUM_THREADS" not in os.environ:  # else OpenMP has taken the user's OMP_NUM_THREADS
        idle = round(os.cpu_count() - os.getloadavg()[0] + OWN_LOAD["share"])
        torch.set_num_threads(args.num_threads or (1 if at_start else max(1, min(os.cpu_count(), idle))))


def crossed(step: int, prev_step: int, every: int) -> bool:  # a multiple of `every` lies in (prev_step, step]
    return every > 0 and step // every > prev_step // every


def check_finite(agent: SAC, run_dir: Path, step: int) -> None:
    params = [p for m in agent.networks.values() for p in m.parameters()] + [agent.log_alpha]
    if not all(torch.isfinite(p).all() for p in params):
        text = f"training diverged at step {step} (NaN/Inf weights); {saved_so_far(run_dir)}"
        raise Exit(text + ". Try lower --policy-lr/--q-lr", EXIT_DIVERGED)


def io_failure(e: OSError | WriteError, args: Args, run_dir: Path, step: int) -> Exit:
    """Exit 74, naming the operation: our own writes raise WriteError; TensorBoard's writer writes its newest events
    file; any other OSError is a render or a read, told by the functions it passed through, with its path if it has
    one. Then what is saved, and the command that resumes."""
    frames = traceback.extract_tb(e.__traceback__)
    if not isinstance(e, WriteError) and any("tensorboard" in f.filename for f in frames):
        events = max(run_dir.glob("events.out.tfevents.*"), key=os.path.getmtime, default=run_dir)
        e = WriteError(Path(e.filename or events), e)
    if isinstance(e, WriteError):
        text = str(e)
    else:
        operation = "render" if any(f.name == "render" for f in frames) else "read"
        text = f"cannot {operation}{f' {e.filename}' if e.filename else ''} ({e.strerror or e})"
    text += f" at step {step}; {saved_so_far(run_dir)}. Fix it, then: {resume_command(args, run_dir)}"
    return Exit(text, EXIT_IO_ERROR)


# --- The speed path's CUDA graphs (speed_up applies them with --cudagraphs) ----------------------
def cuda_graphed(step, warmup_calls: int = 3):
    """step(*tensors) as a CUDA graph: eager warm-up calls on a side stream, one that records, then replays."""
    calls = 0
    graph = None
    static_inputs = None
    static_outputs = None

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
            static_inputs = [x.clone() for x in inputs]
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records the kernels, runs none of them
                static_outputs = step(*static_inputs)
        else:
            for static, x in zip(static_inputs, inputs):
                static.copy_(x, non_blocking=True)
        graph.replay()
        return static_outputs

    return run


# --- Rendering, evaluation of a saved model, the command line ------------------------------------
def check_rendering(env_id: str, capture_video: bool) -> None:
    """Before anything is written: MuJoCo's OpenGL library loads, and --capture-video's env renders (pygame...)."""
    gl = os.environ.get("MUJOCO_GL")
    spec = gym.registry.get(env_id)
    try:
        if gl in ("osmesa", "egl") and spec and "mujoco" in str(spec.entry_point):
            import mujoco  # noqa: F401  (PyOpenGL loads the library here)
        if capture_video:
            with make_env(env_id, render_mode="rgb_array") as env:
                env.reset(seed=0)
                env.render()
    except gym.error.DependencyNotInstalled as e:
        raise Exit(f"--capture-video: {env_id} cannot render ({first_line(e)}); install that") from None
    except (ImportError, AttributeError, OSError):
        package = {"osmesa": "libosmesa6", "egl": "libegl1"}.get(gl, "an OpenGL library")
        raise Exit(f"MUJOCO_GL={gl}: cannot load its OpenGL library; install {package} (e.g. apt-get)") from None


def eval_only(args: Args) -> int:
    """--eval-checkpoint: the model file's actor on its env (an explicit --env-id must match it), and exit."""
    check_args(args)
    device = pick_device(args)
    path = Path(args.eval_checkpoint)
    if args.env_id:  # given: checked before the model file is read
        check_rendering(args.env_id, args.capture_video)
    data = torch_load(path, "model file", MODEL_FORMAT)
    if args.env_id and data["env_id"] != args.env_id:
        raise Exit(f"{path} was trained on {data['env_id']}, not {args.env_id}; drop --env-id")
    if not args.env_id:  # the model's
        args = dataclasses.replace(args, env_id=data["env_id"])
        check_rendering(args.env_id, args.capture_video)
    with make_env(args.env_id) as env:
        actor = Actor(env.observation_space.shape[0], env.action_space.low, env.action_space.high).to(device)
    actor.load_state_dict(data["actor"])
    video = path.parent / "videos" / f"eval_{path.stem}.mp4" if args.capture_video else None
    returns = evaluate(actor, args.env_id, args.eval_episodes, args.seed + 10_000, device, video)
    result = f"{args.env_id} {path}: mean return {np.mean(returns):.1f} ± {np.std(returns):.1f} over {len(returns)}"
    print(result + " episodes" + (f"; video: {video}" if video else ""))
    return 0


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    if args.capture_video and "MUJOCO_GL" not in os.environ:  # before mujoco is imported
        os.environ["MUJOCO_GL"] = "egl" if torch.cuda.is_available() else "osmesa"
    if os.environ.get("MUJOCO_GL") == "osmesa" and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401  (OSMesa's own LLVM crashes triton when triton is imported after it)
    choose_threads(args, at_start=True)
    try:
        code = eval_only(args) if args.eval_checkpoint else train(args)
    except Exit as e:
        print(str(e) if e.code in (0, EXIT_INTERRUPTED) else f"error: {e}", file=sys.stderr)
        code = e.code
    except KeyboardInterrupt:  # before training started (setup, eval-only): nothing to save
        print("interrupted", file=sys.stderr)
        code = EXIT_ABORTED
    sys.exit(code)


if __name__ == "__main__":
    main()
