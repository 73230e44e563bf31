"""Soft Actor-Critic for continuous control, in one file.

    python sac_continuous.py --env-id Humanoid-v5

SAC with a tanh-squashed Gaussian actor, twin Q critics with Polyak-averaged targets and automatic
entropy tuning (Haarnoja et al. 2018, arXiv:1801.01290 and arXiv:1812.05905). Read top to bottom:
Args, environments, networks, replay buffer, losses and the update, evaluation and model files,
checkpoints, the training loop, main. Defaults: lr 3e-4, batch 256, 25k random steps, tau 0.005,
gamma 0.99, alpha 0.1 autotuned.
"""

from __future__ import annotations

import dataclasses
import errno
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

EXIT_BAD_INPUT = 2  # a flag, file or environment that cannot be used; nothing was trained
EXIT_DIVERGED = 3  # a loss became NaN/Inf; the last checkpoint is left as it was
EXIT_IO_ERROR = 74  # a write failed (disk full, I/O error...): temporary files removed, the last checkpoint intact
EXIT_INTERRUPTED = 75  # SIGINT/SIGTERM: a checkpoint was written; rerun with --resume to continue
EXIT_ABORTED = 130  # a second Ctrl-C: stopped at once


# --- Args and input checks ------------------------------------------------------------------------


@dataclass
class Args:
    env_id: str = "Humanoid-v5"  # the id of a gymnasium environment with a Box action space
    total_timesteps: int = 1_000_000  # environment steps to train for, over all envs (on --resume, the new total)
    seed: int = 1  # seed of python, numpy, torch, the environments and the replay buffer
    torch_deterministic: bool = True  # make cuDNN deterministic (`torch.backends.cudnn.deterministic`)
    device: str = "auto"  # auto (CUDA, else MPS, else CPU), or a torch device such as cpu, cuda, cuda:1, mps
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
    checkpoint_frequency: int = 50_000  # write a resumable checkpoint every N steps (0: off, except at exit)
    resume: str = ""  # continue from a checkpoint: a run dir, a checkpoint dir, or 'auto' (this --run-name's latest)
    eval_checkpoint: str = ""  # evaluate this model.pt (or best_model.pt) and exit, without training
    run_name: str = ""  # name of the run directory under --output-dir (default: <env-id>__sac__<seed>__<unix time>)
    output_dir: str = "runs"  # where run directories are created
    log_frequency: int = 100  # write loss scalars to TensorBoard every N gradient updates
    compile: bool = False  # torch.compile the critic and actor losses: a speed option for GPUs, the same algorithm
    cudagraphs: bool = False  # CUDA: replay updates as CUDA graphs (the same algorithm; exact resume not guaranteed)


class UserError(Exception):
    """Bad input: main() prints the message as one line on stderr and exits with EXIT_BAD_INPUT."""


class Diverged(Exception):
    """A loss or a weight became NaN/Inf."""


class DiskError(Exception):
    """A write into the run directory failed (disk full, quota, I/O error, permissions, directory removed);
    its temporary files are already removed. train() and main() report it in one line, EXIT_IO_ERROR."""

    def __init__(self, path: Path, code: int | None, reason: str):
        super().__init__(f"cannot write {path} ({reason})")
        self.path, self.code, self.reason = path, code, reason


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate_args(args: Args) -> None:
    positive = ["total_timesteps", "num_envs", "buffer_size", "batch_size", "eval_episodes", "log_frequency"]
    positive += ["policy_frequency", "target_network_frequency", "policy_lr", "q_lr", "alpha"]
    for name in positive:
        if not getattr(args, name) > 0:  # `not >` also refuses NaN
            raise UserError(f"{flag(name)} must be positive, got {getattr(args, name)}")
    for name in ["learning_starts", "eval_frequency", "checkpoint_frequency"]:
        if getattr(args, name) < 0:
            raise UserError(f"{flag(name)} must be 0 or more, got {getattr(args, name)}")
    for name in ["gamma", "tau"]:
        if not 0 < getattr(args, name) <= 1:
            raise UserError(f"{flag(name)} must be in (0, 1], got {getattr(args, name)}")
    if args.buffer_size < 3 * args.num_envs:
        raise UserError(
            f"--buffer-size {args.buffer_size} is too small for {args.num_envs} envs; use at least {3 * args.num_envs}"
        )
    if args.batch_size > args.buffer_size:
        raise UserError(
            f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}; "
            "lower the batch or raise the buffer"
        )
    if args.resume == "auto" and not args.run_name:
        raise UserError("--resume auto needs a fixed --run-name to find the run again; add --run-name NAME")
    if args.resume and args.eval_checkpoint:
        raise UserError("--resume and --eval-checkpoint exclude each other; pass one of them")


def pick_device(name: str) -> torch.device:
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        return torch.device("cuda" if available["cuda"] else "mps" if available["mps"] else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device '{name}' is not a torch device; use auto, cpu, cuda or mps") from None
    if not available.get(device.type, True):
        raise UserError(f"--device {name}: {device.type.upper()} is not available here; use --device cpu or auto")
    return device


# --- Environments ---------------------------------------------------------------------------------


def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """gym.make with bad ids and unusable spaces turned into a one-line UserError."""
    try:
        env = gym.make(env_id, render_mode=render_mode)
    except gym.error.Error as e:  # NameNotFound, VersionNotFound, DeprecatedEnv, missing extras...
        raise UserError(f"cannot make environment '{env_id}': {e}. Check --env-id") from None
    except ImportError as e:
        raise UserError(f"environment '{env_id}' needs a missing package ({e}); install it") from None
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
    raise UserError(f"'{env_id}' {problem}")


GL_LIBRARIES = {"osmesa": ("OSMesa", "libosmesa6"), "egl": ("EGL", "libegl1")}  # MUJOCO_GL: library, Debian package


def check_rendering(env_id: str, capture_video: bool) -> None:
    """Before anything is written: MuJoCo's OpenGL library (osmesa/egl) loads, and with --capture-video
    the env can render rgb_array frames (classic-control envs need pygame). Both fail late otherwise,
    as tracebacks: PyOpenGL's AttributeError at `import mujoco`, gymnasium's DependencyNotInstalled."""
    gl = os.environ.get("MUJOCO_GL")
    try:
        is_mujoco = "mujoco" in str(gym.spec(env_id).entry_point)
    except gym.error.Error:
        return  # make_env reports the bad id
    if is_mujoco and gl in GL_LIBRARIES:
        try:
            import mujoco  # noqa: F401  (PyOpenGL loads lib<OSMesa|EGL>.so here)
        except (ImportError, AttributeError, OSError):
            lib, package = GL_LIBRARIES[gl]
            other = "egl" if gl == "osmesa" else "osmesa"
            raise UserError(
                f"MUJOCO_GL={gl}: cannot load the {lib} library; install {package} (apt-get install {package}) "
                f"or set MUJOCO_GL={other} ({GL_LIBRARIES[other][1]}; osmesa renders on a CPU, egl on a GPU)"
            ) from None
    if capture_video:
        env = make_env(env_id, render_mode="rgb_array")
        try:
            env.reset(seed=0)
            env.render()
        except gym.error.DependencyNotInstalled as e:
            raise UserError(
                f"--capture-video: {env_id} cannot render ({str(e).splitlines()[0]}); "
                "install that or drop --capture-video"
            ) from None
        finally:
            env.close()


def make_vector_env(env_id: str, num_envs: int) -> gym.vector.SyncVectorEnv:
    """Training envs. SAME_STEP autoreset: when an episode ends, step() returns the reset observation
    and puts the real last observation in infos["final_obs"], which is what the buffer must store."""
    return gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.RecordEpisodeStatistics(make_env(env_id)) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def real_next_observations(next_obs: np.ndarray, dones: np.ndarray, infos: dict) -> np.ndarray:
    """s' of each env's transition: where an episode just ended, next_obs is the reset observation and s' is
    infos["final_obs"]."""
    if not dones.any():
        return next_obs
    real = next_obs.copy()
    ended = infos["_final_obs"]
    real[ended] = np.stack(infos["final_obs"][ended])
    return real


# --- Networks -------------------------------------------------------------------------------------

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
HIDDEN = 256


def mlp(in_dim: int, out_dim: int | None) -> nn.Sequential:
    layers = [nn.Linear(in_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU()]
    if out_dim is not None:
        layers.append(nn.Linear(HIDDEN, out_dim))
    return nn.Sequential(*layers)


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1))

    def value_for_actor(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The same Q(s, a) for the actor's loss, which needs dQ/da only: the weights are detached (no weight
        gradients) and the first layer W [s; a] + b is split into W_s s + (W_a a + b), so that backward
        multiplies by W_a alone. Equal to forward up to the rounding order of the first layer's sums."""
        first, _, hidden, _, out = self.net
        w_obs, w_act = first.weight.detach().split([obs.shape[-1], action.shape[-1]], dim=1)
        h = F.relu(F.linear(obs, w_obs) + F.linear(action, w_act, first.bias.detach()))
        h = F.relu(F.linear(h, hidden.weight.detach(), hidden.bias.detach()))
        return F.linear(h, out.weight.detach(), out.bias.detach())


class Actor(nn.Module):
    """Gaussian policy squashed by tanh and rescaled to the action bounds: a = scale * tanh(u) + bias."""

    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray):
        super().__init__()
        act_dim = low.shape[0]
        self.trunk = mlp(obs_dim, None)
        self.mean = nn.Linear(HIDDEN, act_dim)
        self.log_std = nn.Linear(HIDDEN, act_dim)
        scale = torch.as_tensor((high - low) / 2.0, dtype=torch.float32)
        self.register_buffer("action_scale", scale)
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2.0, dtype=torch.float32))
        # sum_i log(scale_i): the Jacobian of the affine rescaling, the same for every action
        self.register_buffer("log_scale_sum", torch.log(scale).sum())
        for m in self.modules():  # Xavier-uniform weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        return self.mean(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized action and its log-density log pi(a|s), shape (B, 1).

        u = mean + std * eps, a = scale * tanh(u) + bias. By change of variables
            log pi(a) = log N(u; mean, std) - sum_i [log(1 - tanh(u_i)^2) + log scale_i]
        with log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), which stays finite when tanh(u)
        rounds to +-1 (the naive form gives log 0 = -inf there).
        """
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
    """One ring of observation slots per env; each observation is stored once.

    The transition that starts at slot k of env e is (obs[e, k], actions[e, k], rewards[e, k],
    terminations[e, k], obs[e, k + 1]). When an episode ends at slot k, its real final observation
    goes to slot k + 1 and the reset observation to k + 2; slot k + 1 then starts no transition, which
    valid[e, k + 1] = False records. A slot whose observation is overwritten is marked invalid until
    its own transition is written, so wrap-around never pairs an old action with a new observation.
    Each finished episode costs one slot, so a full buffer holds buffer_size minus (episodes in it)
    transitions.
    """

    ARRAYS = ("obs", "actions", "rewards", "terminations", "valid")

    def __init__(self, buffer_size: int, num_envs: int, obs_dim: int, act_dim: int, seed: int):
        self.num_envs, self.capacity = num_envs, buffer_size // num_envs
        n, c = num_envs, self.capacity
        self.obs = np.zeros((n, c, obs_dim), dtype=np.float32)
        self.actions = np.zeros((n, c, act_dim), dtype=np.float32)
        self.rewards = np.zeros((n, c), dtype=np.float32)
        self.terminations = np.zeros((n, c), dtype=np.bool_)
        self.valid = np.zeros((n, c), dtype=np.bool_)
        self.pos = np.zeros(n, dtype=np.int64)  # slot holding each env's current observation
        self.written = np.zeros(n, dtype=np.int64)  # slots ever written per env (not wrapped)
        self.rng = np.random.default_rng(seed)
        self._envs = np.arange(n)

    def start(self, obs: np.ndarray) -> None:
        """Store each env's first observation, after reset (a resume loads the buffer instead)."""
        self._put_obs(self._envs, obs)

    def _put_obs(self, envs: np.ndarray, obs: np.ndarray) -> None:
        self.obs[envs, self.pos[envs]] = obs
        self.valid[envs, self.pos[envs]] = False
        self.written[envs] += 1

    def add(self, actions, rewards, terminations, real_next_obs, dones, next_obs) -> None:
        """real_next_obs: s' of this transition (infos["final_obs"] where an episode ended);
        next_obs: what the envs returned, i.e. the reset observation where dones."""
        e, p = self._envs, self.pos
        self.actions[e, p] = actions
        self.rewards[e, p] = rewards
        self.terminations[e, p] = terminations
        self.valid[e, p] = True
        self.pos = (p + 1) % self.capacity
        self._put_obs(e, real_next_obs)
        ended = np.flatnonzero(dones)
        if ended.size:  # the reset observation takes the next slot; the final one starts nothing
            self.pos[ended] = (self.pos[ended] + 1) % self.capacity
            self._put_obs(ended, next_obs[ended])

    def __len__(self) -> int:
        return int(self.valid.sum())

    def sample(self, batch_size: int) -> tuple[np.ndarray, ...]:
        filled = np.minimum(self.written, self.capacity)
        env = self.rng.integers(0, self.num_envs, size=batch_size)
        slot = self.rng.integers(0, filled[env])
        bad = np.flatnonzero(~self.valid[env, slot])
        while bad.size:  # redraw final-observation and not-yet-complete slots (a few percent at most)
            slot[bad] = self.rng.integers(0, filled[env[bad]])
            bad = bad[~self.valid[env[bad], slot[bad]]]
        # rows of the flattened (envs * slots) arrays; s and s' in one gather
        row = env * self.capacity + slot
        next_row = env * self.capacity + (slot + 1) % self.capacity
        obs = self.obs.reshape(-1, self.obs.shape[-1]).take(np.concatenate([row, next_row]), axis=0)
        actions = self.actions.reshape(-1, self.actions.shape[-1]).take(row, axis=0)
        rewards, terminations = self.rewards.reshape(-1).take(row), self.terminations.reshape(-1).take(row)
        return obs[:batch_size], actions, rewards, terminations, obs[batch_size:]

    def save(self, directory: Path) -> dict:
        """One plain .npy file per array (readable with numpy alone), fsynced; returns the rest of the state."""
        n = int(np.minimum(self.written, self.capacity).max())  # slots beyond n were never written
        for name in self.ARRAYS:
            with open(directory / f"{name}.npy", "wb") as f:
                np.lib.format.write_array(f, getattr(self, name)[:, :n], allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        state = {"pos": self.pos.tolist(), "written": self.written.tolist(), "slots": n}
        return {**state, "rng": self.rng.bit_generator.state}

    def load(self, directory: Path, meta: dict) -> None:
        n = meta["slots"]
        for name in self.ARRAYS:
            target, path = getattr(self, name)[:, :n], directory / f"{name}.npy"
            try:
                data = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise UserError(f"checkpoint buffer file {path} is unreadable ({e}): truncated or corrupt") from None
            if data.shape != target.shape or data.dtype != target.dtype:
                raise UserError(
                    f"checkpoint buffer file {path} has shape {data.shape} {data.dtype}, "
                    f"expected {target.shape} {target.dtype}"
                )
            target[...] = data
        self.pos = np.asarray(meta["pos"], dtype=np.int64)
        self.written = np.asarray(meta["written"], dtype=np.int64)
        self.rng.bit_generator.state = meta["rng"]


# --- Losses ---------------------------------------------------------------------------------------


def critic_target(reward, termination, next_q1, next_q2, next_log_prob, alpha, gamma: float):
    """y = r + gamma * (1 - terminated) * (min_j Q'_j(s', a') - alpha * log pi(a'|s')).

    Only termination stops bootstrapping: a time-limit truncation is not a terminal state of the MDP."""
    soft_value = torch.min(next_q1, next_q2) - alpha * next_log_prob
    return reward + gamma * (1.0 - termination) * soft_value


def alpha_loss_fn(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """J(alpha) = E[-alpha * (log pi + H_target)] with alpha = exp(log_alpha) (always positive).

    Its gradient raises alpha when the entropy -log pi is below the target and lowers it above."""
    return (log_alpha.exp() * (-log_prob.detach() - target_entropy)).mean()


def gradient_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@torch.no_grad()
def polyak_update(online: list[torch.Tensor], target: list[torch.Tensor], tau: float) -> None:
    """target <- target + tau * (online - target), for every pair of tensors in one call."""
    torch._foreach_lerp_(target, online, tau)


# === Speed path (--compile, --cudagraphs): optional, a plain run never enters it ==================


def check_fast_path(args: Args, device: torch.device) -> None:
    """--compile and --cudagraphs need things that a plain run does not: refuse early, in one line."""
    if args.cudagraphs and device.type != "cuda":
        raise UserError(f"--cudagraphs needs a CUDA device, but the device is {device}; drop it or use --device cuda")
    if not args.compile:
        return
    cxx = os.environ.get("CXX", "g++")
    c_compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")  # for triton's launcher
    if device.type == "cpu" and shutil.which(cxx) is None:
        needs = f"a C++ compiler ({cxx}, or set CXX)"
    elif device.type == "cuda" and importlib.util.find_spec("triton") is None:
        needs = "the triton package"
    elif device.type == "cuda" and not c_compiler:
        needs = "a C compiler for triton (gcc or clang, or set CC)"
    else:
        return
    raise UserError(f"--compile on {device.type.upper()} needs {needs}; install it or drop --compile")


def cuda_graphed(step, warmup_calls: int = 3):
    """step(*tensors) -> outputs, recorded once as a CUDA graph and replayed: one launch per call. Every call
    is a real step: warmup_calls eager ones on a side stream (creating gradients and optimizer state), one that
    records, then replays on the recorded inputs, refilled; outputs are overwritten by the next replay.
    This needs what SAC provides: state updated in place, capturable Adam, no host sync."""
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


def use_fast_path(agent: SAC) -> None:
    """Wrap the agent's methods; what they compute does not change."""
    if agent.args.compile:  # Inductor kernels for the losses' forward and backward
        agent.critic_loss = torch.compile(agent.critic_loss)
        agent.actor_loss = torch.compile(agent.actor_loss)
    if agent.args.cudagraphs:
        for name in ("update_critics", "update_policy", "update_targets", "sample_action"):
            setattr(agent, name, cuda_graphed(getattr(agent, name)))


# === End of the speed path ========================================================================


# --- The update: the agent's networks, optimizers and steps ---------------------------------------


class SAC:
    """Networks, optimizers and the entropy temperature: the state a checkpoint must carry."""

    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray, args: Args, device: torch.device):
        self.obs_dim, self.act_dim = obs_dim, low.shape[0]
        self.args, self.device = args, device
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
        self.target_entropy = -float(self.act_dim)
        # log_alpha and alpha = exp(log_alpha) are only ever updated in place: the optimizer holds log_alpha,
        # and alpha stays on the device (reading it as a float each update would wait for the GPU)
        self.log_alpha = torch.tensor([math.log(args.alpha)], device=device, requires_grad=args.autotune)
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=args.q_lr, **adam) if args.autotune else None
        self.alpha = torch.tensor([args.alpha], dtype=torch.float32, device=device)
        self.n_updates = 0
        if args.compile or args.cudagraphs:
            use_fast_path(self)

    def modules(self) -> dict[str, nn.Module]:
        names = ("actor", "qf1", "qf2", "qf1_target", "qf2_target")
        return {name: getattr(self, name) for name in names}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        names = ("q_optimizer", "actor_optimizer", "a_optimizer")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def to_device(self, batch: tuple[np.ndarray, ...]) -> list[torch.Tensor]:
        """float32 tensors on the device; to CUDA from pinned host memory, so that the copies are asynchronous."""
        tensors = [torch.from_numpy(np.asarray(x, dtype=np.float32)) for x in batch]
        if self.device.type == "cuda":
            return [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]
        return [t.to(self.device) for t in tensors]

    def act(self, obs: np.ndarray) -> np.ndarray:
        """An exploration action a ~ pi(.|s) for each env's observation."""
        return self.sample_action(*self.to_device([obs])).cpu().numpy()

    @torch.no_grad()
    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor.sample(obs)[0]

    def update(self, batch: tuple[np.ndarray, ...]) -> dict[str, torch.Tensor]:
        """One critic step; every policy_frequency-th call also actor and alpha steps; Polyak targets."""
        args = self.args
        obs, actions, rewards, terminations, next_obs = self.to_device(batch)
        stats = dict(self.update_critics(obs, actions, rewards.unsqueeze(-1), terminations.unsqueeze(-1), next_obs))
        if self.n_updates % args.policy_frequency == 0:
            for _ in range(args.policy_frequency):  # delayed updates, compensated (TD3 / CleanRL)
                stats.update(self.update_policy(obs))
        if self.n_updates % args.target_network_frequency == 0:
            self.update_targets()
        self.n_updates += 1
        return stats

    def critic_loss(self, obs, actions, rewards, terminations, next_obs):
        """sum_j E[(Q_j(s, a) - y)^2] with y from critic_target (no gradient through y); also the statistics."""
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.sample(next_obs)
            next_q1 = self.qf1_target(next_obs, next_actions)
            next_q2 = self.qf2_target(next_obs, next_actions)
            y = critic_target(rewards, terminations, next_q1, next_q2, next_log_prob, self.alpha, self.args.gamma)
        qf1_values, qf2_values = self.qf1(obs, actions), self.qf2(obs, actions)
        qf1_loss, qf2_loss = F.mse_loss(qf1_values, y), F.mse_loss(qf2_values, y)
        qf_loss = qf1_loss + qf2_loss
        stats = dict(qf1_values=qf1_values.mean(), qf2_values=qf2_values.mean(), qf1_loss=qf1_loss, qf2_loss=qf2_loss)
        stats["qf_loss"] = qf_loss / 2.0  # logged: the mean of the two critics' losses
        return qf_loss, {k: v.detach() for k, v in stats.items()}

    def update_critics(self, obs, actions, rewards, terminations, next_obs) -> dict[str, torch.Tensor]:
        qf_loss, stats = self.critic_loss(obs, actions, rewards, terminations, next_obs)
        gradient_step(self.q_optimizer, qf_loss)
        return stats

    def actor_loss(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        """J(pi) = E[alpha * log pi(a|s) - min_j Q_j(s, a)], a ~ pi(.|s) reparameterized; also log pi."""
        pi, log_pi = self.actor.sample(obs)
        min_q = torch.min(self.qf1.value_for_actor(obs, pi), self.qf2.value_for_actor(obs, pi))
        return (self.alpha * log_pi - min_q).mean(), log_pi

    def update_actor(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        actor_loss, log_pi = self.actor_loss(obs)
        gradient_step(self.actor_optimizer, actor_loss)
        return actor_loss.detach(), log_pi

    def update_policy(self, obs) -> dict[str, torch.Tensor]:
        """The actor step, then, when autotuning, the temperature step on the actor's log-probs."""
        stats = {}
        stats["actor_loss"], log_pi = self.update_actor(obs)
        if self.a_optimizer is not None:
            stats["alpha_loss"] = self.update_alpha(log_pi)
        return stats

    def update_alpha(self, log_pi: torch.Tensor) -> torch.Tensor:
        """Reuses the actor step's log-probs (detached inside the loss): no second actor forward."""
        alpha_loss = alpha_loss_fn(self.log_alpha, log_pi, self.target_entropy)
        gradient_step(self.a_optimizer, alpha_loss)
        with torch.no_grad():
            self.alpha.copy_(self.log_alpha.exp())
        return alpha_loss.detach()

    def update_targets(self) -> None:
        polyak_update(self.q_params, self.q_target_params, self.args.tau)

    def check_finite(self) -> None:
        """Raise Diverged when a weight or log_alpha is NaN/Inf (never write such a model or checkpoint)."""
        tensors = [p for m in self.modules().values() for p in m.parameters()] + [self.log_alpha]
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise Diverged("weights are not finite")


# --- Evaluation and model files -------------------------------------------------------------------

MODEL_FORMAT = "sac_continuous/model/v1"
CHECKPOINT_FORMAT = "sac_continuous/checkpoint/v1"


def evaluate(
    actor: Actor, env_id: str, episodes: int, seed: int, device: torch.device, video_path: Path | None = None
) -> list[float]:
    """Deterministic returns (tanh of the mean) on a fresh env seeded with `seed`; optionally record
    the first episode as MP4. Uses no training RNG, so evaluating never changes the training run."""
    env = make_env(env_id, render_mode="rgb_array" if video_path else None)
    returns, frames = [], []
    obs, _ = env.reset(seed=seed)
    for episode in range(episodes):
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                action = actor.deterministic(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            total += float(reward)
            done = terminated or truncated
            if video_path and episode == 0:
                frames.append(env.render())
        returns.append(total)
        obs, _ = env.reset()
    if video_path and frames:
        import imageio.v2 as imageio

        tmp = video_path.with_name(video_path.stem + ".part.mp4")
        try:  # ffmpeg quiet: a failed write is reported in one line below, not in ffmpeg's lines
            video_path.parent.mkdir(parents=True, exist_ok=True)
            imageio.mimsave(tmp, frames, fps=env.metadata.get("render_fps", 30), ffmpeg_log_level="quiet")
            os.replace(tmp, video_path)
        except (OSError, RuntimeError) as e:
            failure = write_failed(video_path, e)
            tmp.unlink(missing_ok=True)
            env.close()
            if failure is None:
                raise
            raise failure from None
    env.close()
    return returns


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int | None:
    """Free space for this user on the file system of path (or of its nearest existing parent)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def mount_of(path: Path) -> Path:
    """The mount point of the file system that holds path (or its nearest existing parent)."""
    path = Path(os.path.abspath(path))
    while (not path.exists() or not os.path.ismount(path)) and path != path.parent:
        path = path.parent
    return path


def size_text(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{max(n / 1e6, 0.1):.{0 if n >= 1e7 else 1}f} MB"


WRITE_FAILURES = ("unexpected pos", "write failed", "file write")  # torch's zip writer when a write fails


def write_failed(path: Path, e: BaseException) -> DiskError | None:
    """The DiskError for a write to path that raised e, or None if e is not a failed write. torch.save raises a
    RuntimeError with the OSError as its context; numpy's short writes and ffmpeg's broken pipe carry no errno
    of the disk: on a full file system they mean ENOSPC."""
    if isinstance(e, RuntimeError):
        inner = e.__cause__ or e.__context__
        if isinstance(inner, OSError):
            e = inner
        elif not any(text in str(e) for text in WRITE_FAILURES):
            return None
    elif not isinstance(e, OSError):
        return None
    code = getattr(e, "errno", None)
    if code in (None, errno.EPIPE) and (free_bytes(path) or 0) < 2**20:
        code = errno.ENOSPC
    reason = os.strerror(code) if code else (str(e).splitlines() or [type(e).__name__])[0]
    return DiskError(path, code, reason)


def atomic_write(path: Path, write) -> None:
    """write(f) into a temporary file, fsync, rename: a reader sees the old file or the new one, never half.
    A failed write removes the temporary file and raises DiskError; the old file stays as it was."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        failure = write_failed(path, e)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if failure is None:
            raise
        raise failure from None


def save_model(agent: SAC, env_id: str, global_step: int, path: Path) -> None:
    model = {"format": MODEL_FORMAT, "env_id": env_id, "obs_dim": agent.obs_dim, "act_dim": agent.act_dim}
    model.update(global_step=global_step, actor=agent.actor.state_dict())
    model.update(qf1=agent.qf1.state_dict(), qf2=agent.qf2.state_dict())
    atomic_write(path, lambda f: torch.save(model, f))


def torch_load(path: Path, what: str) -> dict:
    """torch.load(weights_only=True: no code in the file can run) with every failure turned into one line.
    Onto the CPU: restore turns env and RNG state into numpy; modules and optimizers copy to their device."""
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; check the path")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle headers: the one line below says it all
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle, unsupported globals: all mean "not ours / damaged"
        # not torch's message: it may advise weights_only=False, i.e. running the file's code
        raise UserError(
            f"{what} {path} is unreadable ({type(e).__name__}): it is truncated, corrupt, or not "
            "a file written by sac_continuous.py"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} is not a file written by sac_continuous.py")
    return data


def load_model_for_eval(path: Path, env_id: str, device: torch.device) -> Actor:
    data = torch_load(path, "model file")
    if data.get("format") != MODEL_FORMAT:
        raise UserError(f"{path} is not a sac_continuous.py model file (model.pt or best_model.pt)")
    if data["env_id"] != env_id:
        raise UserError(f"{path} was trained on {data['env_id']}, not {env_id}; pass --env-id {data['env_id']}")
    env = make_env(env_id)
    low, high, obs_dim = env.action_space.low, env.action_space.high, env.observation_space.shape[0]
    env.close()
    if data["obs_dim"] != obs_dim or data["act_dim"] != low.shape[0]:
        raise UserError(
            f"{path} expects observations of size {data['obs_dim']} and actions of size {data['act_dim']}, "
            f"but {env_id} has {obs_dim} and {low.shape[0]}"
        )
    actor = Actor(obs_dim, low, high).to(device)
    actor.load_state_dict(data["actor"])
    return actor


# --- Checkpoints: atomic, complete (weights, optimizers, buffer, env state, every RNG) and exact --


def find_checkpoint(path: Path) -> Path | None:
    """A run dir, its checkpoints/ dir, or one step_* dir -> the step dir to load (None if none yet)."""
    for root in (path / "checkpoints", path):
        latest = root / "latest"
        if latest.is_file():
            return root / latest.read_text().strip()
    if (path / "state.pt").is_file():
        return path
    return None


def save_checkpoint(run_dir: Path, state: dict, rb: ReplayBuffer) -> Path:
    """runs/<run>/checkpoints/step_<N>/{state.pt, buffer/*.npy}, written under a temporary name and
    renamed; then `latest` is switched atomically and older checkpoints are removed. A failed write (disk
    full...) removes what it wrote and raises DiskError; `latest` and the checkpoint it names stay intact."""
    root = run_dir / "checkpoints"
    name = f"step_{state['global_step']:012d}"
    final = root / name
    if find_checkpoint(run_dir) == final:  # this very step is saved already (e.g. periodic, then at exit)
        return final
    tmp = root / f".tmp_{name}"
    try:
        root.mkdir(exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "buffer").mkdir(parents=True)
        state = {**state, "buffer": rb.save(tmp / "buffer")}
        fsync_dir(tmp / "buffer")
        atomic_write(tmp / "state.pt", lambda f: torch.save(state, f))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(root)
        atomic_write(root / "latest", lambda f: f.write(f"{name}\n".encode()))
    except (OSError, RuntimeError, DiskError) as e:
        failure = e if isinstance(e, DiskError) else write_failed(final, e)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            switched = find_checkpoint(run_dir) == final
        except OSError:
            switched = True  # cannot tell: leave it
        if not switched:  # renamed, but `latest` still names the previous one
            shutil.rmtree(final, ignore_errors=True)
        if failure is None:
            raise
        raise DiskError(final, failure.code, failure.reason) from None
    for old in root.iterdir():  # only after `latest` points at the new one
        if old.name in (name, "latest"):
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return final


def checkpoint_bytes(agent: SAC, args: Args) -> int:
    """About what one checkpoint of this run takes once its buffer is full: buffer, weights, Adam moments, envs."""
    slots = args.buffer_size // args.num_envs * args.num_envs
    weights = 4 * sum(p.numel() for m in agent.modules().values() for p in m.parameters())
    return slots * (4 * (agent.obs_dim + agent.act_dim) + 6) + 3 * weights + args.num_envs * 2**20


def clear_leftovers(run_dir: Path, keep: Path | None) -> None:
    """Remove what a killed or failed process left half-written, which may be what fills the disk: temporary
    checkpoint directories and files (.tmp_*, .*.tmp), checkpoints that `latest` does not name (a kill between
    the rename and the switch of `latest`; never `keep`, the one being resumed) and partial videos."""
    root, latest = run_dir / "checkpoints", find_checkpoint(run_dir)
    keep_names = {"latest"} | {c.name for c in (latest, keep) if c is not None and c.parent == root}
    leftovers = [p for p in run_dir.glob(".*.tmp")] + list(run_dir.glob("videos/*.part.mp4"))
    if root.is_dir():  # step_* only while `latest` names another: never every checkpoint of a run
        prefixes = (".", "step_") if latest is not None else (".",)
        leftovers += [p for p in root.iterdir() if p.name not in keep_names and p.name.startswith(prefixes)]
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except OSError:
                pass


def warn_if_low_space(run_dir: Path, need: int) -> None:
    """One line on stderr when the free space (plus the checkpoints already there, which a new one replaces)
    is below two checkpoints: replacing a checkpoint briefly needs both."""
    free = free_bytes(run_dir)
    root = run_dir / "checkpoints"
    have = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0
    if free is not None and free + have < 2 * need:
        print(
            f"warning: {size_text(free)} free at {mount_of(run_dir)}, but a checkpoint of this run takes up to "
            f"about {size_text(need)} and replacing one needs twice that; free space or choose another --output-dir",
            file=sys.stderr,
        )


def read_checkpoint(ckpt: Path) -> dict:
    state = torch_load(ckpt / "state.pt", "checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{ckpt / 'state.pt'} is not a sac_continuous.py checkpoint")
    return state


# Arguments that define the run: on --resume they come from the checkpoint. A command-line value
# that differs from both the default and the checkpoint is a conflict and is refused.
RUN_DEFINING = ("env_id", "num_envs", "buffer_size", "gamma", "tau", "batch_size", "learning_starts")
RUN_DEFINING += ("policy_lr", "q_lr", "policy_frequency", "target_network_frequency", "alpha", "autotune", "seed")


def merge_resume_args(args: Args, saved: dict) -> Args:
    defaults, merged = Args(), {}
    for name in RUN_DEFINING:
        if name not in saved:
            raise UserError(f"checkpoint lacks args.{name}; it is damaged or from another version")
        cli, old = getattr(args, name), saved[name]
        if cli != old and cli != getattr(defaults, name):
            raise UserError(
                f"{flag(name)} {cli} conflicts with the checkpoint's {flag(name)} {old}; "
                "drop the flag to resume, or start a new run"
            )
        merged[name] = old
    return dataclasses.replace(args, **merged)


# MjData holds derived quantities (e.g. body positions used by the next step's reward) besides the
# integration state, so the whole struct is saved. Its pickle names exactly one class; the loader
# accepts that class and nothing else, so a checkpoint cannot run code when it is loaded.
class _MjDataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("mujoco._structs", "MjData"):
            import mujoco

            return mujoco.MjData
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in MuJoCo state")


def _layers(env: gym.Env) -> list:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def get_env_state(env: gym.Env) -> dict:
    """The plain-valued attributes of every wrapper and env layer (step counters, episode sums, Pendulum's
    state...), as python values and tensors for weights_only loading; MuJoCo's MjData whole."""
    layers = []
    for layer in _layers(env):
        attrs = {}
        for k, v in vars(layer).items():
            if isinstance(v, np.ndarray):
                attrs[k] = torch.from_numpy(v.copy())
            elif isinstance(v, np.generic):
                attrs[k] = v.item()
            elif k != "_np_random" and (v is None or isinstance(v, (bool, int, float, str))):
                attrs[k] = v
        layers.append(attrs)
    base = env.unwrapped
    state = {"layers": layers, "np_random": base.np_random.bit_generator.state}
    if hasattr(base, "data") and type(base.data).__name__ == "MjData":
        state["mjdata"] = pickle.dumps(base.data)
    return state


def set_env_state(env: gym.Env, state: dict) -> None:
    layers = _layers(env)
    if len(layers) != len(state["layers"]):
        raise UserError("the checkpoint's environment has a different wrapper stack; it was made by another version")
    for layer, saved in zip(layers, state["layers"]):
        for k, v in saved.items():
            current = getattr(layer, k, None)
            if isinstance(v, torch.Tensor):
                v = v.numpy()
                if isinstance(current, np.ndarray) and current.shape == v.shape:
                    current[...] = v  # in place: the array may be shared (e.g. a view into MjData)
                    continue
                v = v.copy()
            setattr(layer, k, v)
    base = env.unwrapped
    base.np_random.bit_generator.state = state["np_random"]
    if "mjdata" in state:
        import mujoco

        saved = _MjDataUnpickler(io.BytesIO(state["mjdata"])).load()
        mujoco.mj_copyData(base.data, base.model, saved)


def checkpoint_state(args, agent: SAC, envs, obs, global_step: int, best_eval: float, last_return: float) -> dict:
    """Everything the run needs to go on exactly as if it had not stopped (the buffer is added on save)."""
    np_state = np.random.get_state()  # its key array as a tensor, for weights_only loading
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    rng["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": CHECKPOINT_FORMAT,
        "args": dataclasses.asdict(args),
        "obs_dim": agent.obs_dim,
        "act_dim": agent.act_dim,
        "global_step": global_step,
        "n_updates": agent.n_updates,
        "best_eval": best_eval,
        "last_return": last_return,
        "obs": torch.from_numpy(obs.copy()),
        "modules": {k: m.state_dict() for k, m in agent.modules().items()},
        "optimizers": {k: o.state_dict() for k, o in agent.optimizers().items()},
        "log_alpha": agent.log_alpha.detach().clone(),
        "alpha": agent.alpha.clone(),
        "rng": rng,
        "action_space_rng": envs.action_space.np_random.bit_generator.state,
        "envs": [get_env_state(e) for e in envs.envs],
    }


def restore(saved: dict, ckpt: Path, agent: SAC, rb: ReplayBuffer, envs: gym.vector.SyncVectorEnv) -> tuple:
    """checkpoint_state's inverse; returns (obs, global_step, best_eval, last_return). log_alpha is overwritten
    in place: the optimizer holds that very tensor. A missing or misfitting piece: one line."""
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
        torch.set_rng_state(rng["torch"].cpu())
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        return saved["obs"].numpy(), saved["global_step"], saved["best_eval"], saved["last_return"]
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0][:160]
        raise UserError(f"checkpoint {ckpt} does not fit this run ({type(e).__name__}: {reason})") from None


# --- The training loop ----------------------------------------------------------------------------


class StopRequest:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit. Second: exit at once."""

    def __init__(self):
        self.signal_name = None
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if self.signal_name is not None:
            os._exit(EXIT_ABORTED)
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: finishing this step, writing a checkpoint (again: quit at once)", file=sys.stderr)


class Progress:
    """On a terminal, a progress bar: the phase, steps, SPS and last return, and an ETA from the training
    rate (the random-action phase runs many times faster, so it gives none). Nothing otherwise."""

    def __init__(self, total: int, start: int, learning_starts: int):
        self.total, self.learning_starts, self.bar = total, learning_starts, None
        self.rate_step, self.rate_time, self.last_draw = start, time.time(), 0.0
        if sys.stderr.isatty():
            from rich import progress as rp

            fields = rp.TextColumn("{task.fields[sps]} SPS  return {task.fields[ret]}  ETA {task.fields[eta]}")
            self.bar = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(), fields)
            self.task = self.bar.add_task(self.phase(start), total=total, completed=start, sps="-", ret="-", eta="-")
            self.bar.start()

    def phase(self, step: int) -> str:
        random_phase = f"SAC: random actions until {self.learning_starts:,}"
        return random_phase if step < self.learning_starts else "SAC: training"

    def update(self, step: int, last_return: float) -> None:
        now = time.time()
        if self.rate_step < self.learning_starts <= step:  # training begins: measure its rate from here
            self.rate_step, self.rate_time = step, now
        if self.bar is None or now - self.last_draw < 0.25:
            return
        self.last_draw = now
        sps = (step - self.rate_step) / max(now - self.rate_time, 1e-9)
        eta = "-"
        if step >= self.learning_starts and sps > 0:
            left = int((self.total - step) / sps)
            eta = f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
        fields = dict(sps=f"{sps:.0f}", ret=f"{last_return:.1f}", eta=eta)
        self.bar.update(self.task, completed=step, description=self.phase(step), **fields)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


_thread_excepthook = threading.excepthook


def _event_thread_excepthook(hook_args) -> None:
    """TensorBoard's writer thread dies on a failed write; EventLog reports that in one line, not this thread."""
    if type(hook_args.thread).__name__ == "_AsyncWriterThread" and issubclass(hook_args.exc_type, OSError):
        return
    _thread_excepthook(hook_args)


class EventLog:
    """TensorBoard's SummaryWriter writes from a thread that, when a write fails, keeps the OSError and raises it
    at a later call. Here every call turns it into a DiskError naming the event file; after one, the log is off."""

    def __init__(self, run_dir: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        threading.excepthook = _event_thread_excepthook
        self.path, self.writer, self.failed = run_dir / "events.out.tfevents.*", None, False
        self.writer = self._call(SummaryWriter, str(run_dir), purge_step=purge_step)
        event_writer = getattr(getattr(self.writer, "file_writer", None), "event_writer", None)
        self.path = Path(getattr(event_writer, "_file_name", self.path))

    def _call(self, method, *args, **kwargs):
        if self.failed:
            return None
        try:
            return method(*args, **kwargs)
        except OSError as e:
            self.failed = True
            raise write_failed(self.path, e) from None

    def add_scalar(self, *args) -> None:
        self._call(self.writer.add_scalar, *args)

    def add_text(self, *args) -> None:
        self._call(self.writer.add_text, *args)

    def flush(self) -> None:
        self._call(self.writer.flush)

    def close(self) -> None:
        self._call(self.writer.close)

    def flush_quietly(self) -> None:
        """For paths that already report another failure (or a divergence)."""
        try:
            self.flush()
        except DiskError:
            pass


def disk_error_line(e: DiskError, args: Args, run_dir: Path, step: int, need: int) -> str:
    """What failed, what is intact and what to do, for the one line of EXIT_IO_ERROR. need: one checkpoint's size."""
    try:
        latest = find_checkpoint(run_dir)
    except OSError:
        latest = None
    where, at = mount_of(run_dir), f" at step {step}" if step else ""
    if e.code in (errno.ENOSPC, errno.EDQUOT):
        more = need * (1 if latest else 2) - (free_bytes(run_dir) or 0)  # a new checkpoint next to the last one
        fix = f"free about {size_text(more)} at {where}" if more > 0 else f"free space at {where}"
    elif e.code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {e.path.parent} writable"
    elif e.code == errno.ENOENT and not run_dir.is_dir():
        return f"{e}{at}: the run directory {run_dir} was removed during the run; choose another --output-dir"
    else:
        fix = f"check the disk at {where}"
    if latest is not None:
        return (
            f"{e}{at}; the last checkpoint {latest} is intact. Fix: {fix} (or move {run_dir} to a disk with room), "
            f"then resume with: {resume_command(args, run_dir)}"
        )
    again = "rerun the same command" if args.resume == "auto" else f"rerun with --resume auto --run-name {run_dir.name}"
    return f"{e}{at}; no checkpoint was written yet. Fix: {fix} (or choose another --output-dir), then {again}"


def crossed(step: int, prev_step: int, every: int) -> bool:
    """True when a multiple of `every` lies in (prev_step, step]."""
    return every > 0 and step // every > prev_step // every


def resume_command(args: Args, run_dir: Path) -> str:
    """The command that continues this run: --resume restores the run-defining flags from the
    checkpoint; the others (the total, evaluation, checkpoints, device...) must be given again."""
    defaults, words = Args(), ["python", "sac_continuous.py", "--resume", str(run_dir)]
    for field in dataclasses.fields(Args):
        name, value = field.name, getattr(args, field.name)
        if name in RUN_DEFINING or name in ("resume", "run_name", "output_dir") or value == getattr(defaults, name):
            continue
        if isinstance(value, bool):
            words.append(flag(name) if value else flag("no_" + name))
        else:
            words += [flag(name), str(value)]
    return " ".join(words)


def prepare_run_dir(args: Args) -> tuple[Path, Path | None]:
    """The run directory and, when resuming, the checkpoint to load. Refuses to reuse a run directory
    that already holds results unless resuming, so nothing written is ever overwritten by a fresh run."""
    if args.resume and args.resume != "auto":
        given = Path(args.resume)
        ckpt = find_checkpoint(given) if given.exists() else None
        if ckpt is None:
            raise UserError(
                f"--resume {given}: no checkpoint there; pass a run directory or a checkpoints/step_* directory"
            )
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return run_dir, ckpt
    run_dir = Path(args.output_dir) / (args.run_name or f"{args.env_id}__sac__{args.seed}__{int(time.time())}")
    ckpt = find_checkpoint(run_dir) if args.resume == "auto" and run_dir.exists() else None
    # --resume auto with no checkpoint yet (e.g. killed before the first one) starts the run afresh
    if ckpt is None and args.resume != "auto" and run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(
            f"run directory {run_dir} already holds a run; add --resume auto to continue it, "
            "or choose another --run-name"
        )
    return run_dir, ckpt


def create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {run_dir} ({e.strerror}); choose a writable --output-dir") from None


def train(args: Args) -> int:
    # Setup. Everything that can reject the input happens before anything is written.
    validate_args(args)
    device = pick_device(args.device)
    check_fast_path(args, device)
    run_dir, ckpt = prepare_run_dir(args)
    saved = read_checkpoint(ckpt) if ckpt else None
    if saved is not None:
        args = merge_resume_args(args, saved.get("args", {}))
    check_rendering(args.env_id, args.capture_video)
    envs = make_vector_env(args.env_id, args.num_envs)
    obs_dim = envs.single_observation_space.shape[0]
    low, high = envs.single_action_space.low, envs.single_action_space.high
    if saved is not None and (saved.get("obs_dim"), saved.get("act_dim")) != (obs_dim, low.shape[0]):
        raise UserError(
            f"checkpoint {ckpt} has observation/action sizes {saved.get('obs_dim')}/{saved.get('act_dim')}, "
            f"but {args.env_id} has {obs_dim}/{low.shape[0]}"
        )
    if run_dir.is_dir():
        clear_leftovers(run_dir, ckpt)  # a crashed or failed process's temporary files, before the probe
    create_run_dir(run_dir)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    agent = SAC(obs_dim, low, high, args, device)
    rb = ReplayBuffer(args.buffer_size, args.num_envs, obs_dim, low.shape[0], seed=args.seed)
    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    global_step, best_eval, last_return = 0, -math.inf, math.nan
    need = checkpoint_bytes(agent, args)
    warn_if_low_space(run_dir, need)

    # Resume: the checkpoint overwrites all of the above
    if saved is not None:
        obs, global_step, best_eval, last_return = restore(saved, ckpt, agent, rb, envs)
        if global_step >= args.total_timesteps:
            print(
                f"{run_dir} is already at step {global_step} of {args.total_timesteps}; nothing to do "
                "(a larger --total-timesteps extends it)",
                file=sys.stderr,
            )
            envs.close()
            return 0
        print(f"resumed {run_dir} at step {global_step} from {ckpt.name}", file=sys.stderr)
    else:
        rb.start(obs)

    # TensorBoard: on resume, hide what the stopped process logged after its checkpoint (step > S; up to S it
    # was logged before the checkpoint). A fresh start over an attempt that died before its first checkpoint
    # hides all of that attempt's points.
    if saved is not None:
        purge_step = global_step + 1
    else:
        purge_step = 0 if any(run_dir.glob("events.out.tfevents.*")) else None
    try:
        if saved is None:
            text = json.dumps(dataclasses.asdict(args), indent=2) + "\n"
            atomic_write(run_dir / "args.json", lambda f: f.write(text.encode()))
        writer = EventLog(run_dir, purge_step)
        if saved is None:
            table = "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items())
            writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
    except DiskError as e:
        envs.close()
        print(f"error: {disk_error_line(e, args, run_dir, global_step, need)}", file=sys.stderr)
        return EXIT_IO_ERROR

    # The loop
    stop = StopRequest()
    progress = Progress(args.total_timesteps, global_step, args.learning_starts)
    start_step, start_time = global_step, time.time()
    try:
        while global_step < args.total_timesteps:
            if global_step < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                actions = agent.act(obs)
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            dones = terminations | truncations
            real_next_obs = real_next_observations(next_obs, dones, infos)
            if dones.any():
                episode = infos["final_info"]["episode"]
                for i in np.flatnonzero(infos["final_info"]["_episode"]):
                    last_return = float(episode["r"][i])
                    writer.add_scalar("charts/episodic_return", last_return, global_step + i + 1)
                    writer.add_scalar("charts/episodic_length", int(episode["l"][i]), global_step + i + 1)
            rb.add(actions, rewards, terminations, real_next_obs, dones, next_obs)
            obs = next_obs
            prev_step, global_step = global_step, global_step + args.num_envs

            if global_step > args.learning_starts:
                stats = agent.update(rb.sample(args.batch_size))
                if agent.n_updates % args.log_frequency == 0:
                    values = {k: v.item() for k, v in stats.items()}
                    if not all(math.isfinite(v) for v in values.values()):
                        raise Diverged(", ".join(f"{k}={v:.4g}" for k, v in values.items()))
                    for k, v in values.items():
                        writer.add_scalar(f"losses/{k}", v, global_step)
                    writer.add_scalar("losses/alpha", agent.alpha.item(), global_step)
                    sps = int((global_step - start_step) / (time.time() - start_time))
                    writer.add_scalar("charts/SPS", sps, global_step)

            # The last step always evaluates (the final model), then checkpoints unless checkpoints are off,
            # so that the checkpoint to extend from knows its best_eval.
            last = global_step >= args.total_timesteps
            if crossed(global_step, prev_step, args.eval_frequency) or last:
                agent.check_finite()
                video = run_dir / "videos" / f"eval_step_{global_step:012d}.mp4" if args.capture_video else None
                returns = evaluate(agent.actor, args.env_id, args.eval_episodes, args.seed + 10_000, device, video)
                mean, std = float(np.mean(returns)), float(np.std(returns))
                writer.add_scalar("eval/mean_return", mean, global_step)
                writer.add_scalar("eval/std_return", std, global_step)
                save_model(agent, args.env_id, global_step, run_dir / "model.pt")
                if mean > best_eval:
                    best_eval = mean
                    save_model(agent, args.env_id, global_step, run_dir / "best_model.pt")
                progress.note(f"step {global_step}: eval return {mean:.1f} ± {std:.1f} over {len(returns)} episodes")
            stopping = stop.signal_name is not None and not last
            periodic = crossed(global_step, prev_step, args.checkpoint_frequency)
            if periodic or (last and args.checkpoint_frequency > 0) or stopping:
                agent.check_finite()
                writer.flush()  # the events up to this step go to disk before the checkpoint that follows them
                state = checkpoint_state(args, agent, envs, obs, global_step, best_eval, last_return)
                path = save_checkpoint(run_dir, state, rb)
            progress.update(global_step, last_return)
            if stopping:
                progress.close()
                print(
                    f"stopped by {stop.signal_name} at step {global_step}; checkpoint {path}. "
                    f"Resume with: {resume_command(args, run_dir)}",
                    file=sys.stderr,
                )
                return EXIT_INTERRUPTED
        writer.close()  # the last events to disk
    except DiskError as e:  # a checkpoint, model, video or event write failed: no training that cannot be saved
        progress.close()
        print(f"error: {disk_error_line(e, args, run_dir, global_step, need)}", file=sys.stderr)
        return EXIT_IO_ERROR
    except Diverged as e:
        progress.close()
        latest = find_checkpoint(run_dir)
        where = f"the last good checkpoint {latest} is intact" if latest else "no checkpoint was written"
        print(
            f"error: training diverged at step {global_step} (non-finite values: {e}); {where}. "
            "Try lower --policy-lr/--q-lr.",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    finally:
        writer.flush_quietly()
        envs.close()

    # Finish
    progress.close()
    print(f"done: {global_step} steps; outputs in {run_dir}", file=sys.stderr)
    return 0


def eval_only(args: Args) -> int:
    validate_args(args)
    device = pick_device(args.device)
    path = Path(args.eval_checkpoint)
    check_rendering(args.env_id, args.capture_video)
    actor = load_model_for_eval(path, args.env_id, device)
    video = path.parent / "videos" / f"eval_{path.stem}.mp4" if args.capture_video else None
    returns = evaluate(actor, args.env_id, args.eval_episodes, args.seed + 10_000, device, video)
    mean, std = np.mean(returns), np.std(returns)
    print(f"{args.env_id} {path}: mean return {mean:.1f} ± {std:.1f} over {len(returns)} episodes")
    if video:
        print(f"video: {video}")
    return 0


def main() -> None:
    codes = "Exit codes: 0 done, 2 bad input (nothing written), 3 diverged, 74 a write failed (e.g. disk full), "
    codes += "75 stopped by a signal after writing a checkpoint, 130 aborted."
    args = tyro.cli(Args, description=__doc__.split("\n\n")[0] + " " + codes)
    if args.capture_video and "MUJOCO_GL" not in os.environ:
        # before mujoco is imported: EGL renders on an NVIDIA GPU, OSMesa on any CPU
        os.environ["MUJOCO_GL"] = "egl" if torch.cuda.is_available() else "osmesa"
    if os.environ.get("MUJOCO_GL") == "osmesa" and importlib.util.find_spec("triton") is not None:
        # OSMesa brings its own LLVM, which crashes triton (fused Adam, torch.compile) imported after it
        import triton  # noqa: F401
    try:
        code = eval_only(args) if args.eval_checkpoint else train(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except DiskError as e:  # eval-only's video
        print(f"error: {e}; free space at {mount_of(e.path)} or check the disk", file=sys.stderr)
        code = EXIT_IO_ERROR
    except KeyboardInterrupt:  # before training started (setup, eval-only): nothing to save
        print("interrupted", file=sys.stderr)
        code = EXIT_ABORTED
    sys.exit(code)


if __name__ == "__main__":
    main()
