"""Soft Actor-Critic for continuous control, in one file.

    python sac_continuous.py --env-id Humanoid-v5

SAC with a tanh-squashed Gaussian actor, twin Q critics with Polyak-averaged targets and automatic
entropy tuning (Haarnoja et al. 2018, arXiv:1801.01290 and arXiv:1812.05905). Read top to bottom:
Args, environments, networks, replay buffer, losses and update, evaluation, checkpoints, main loop.
Defaults reproduce the design notebook's Humanoid-v5 run (lr 3e-4, batch 256, 25k random steps,
tau 0.005, gamma 0.99, alpha 0.1 autotuned).
"""

from __future__ import annotations

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

# Exit codes (README documents them).
EXIT_BAD_INPUT = 2  # a flag, file or environment that cannot be used; nothing was trained
EXIT_DIVERGED = 3  # a loss became NaN/Inf; the last checkpoint is left as it was
EXIT_INTERRUPTED = 75  # SIGINT/SIGTERM: a checkpoint was written; rerun with --resume to continue
EXIT_ABORTED = 130  # a second Ctrl-C: stopped at once


@dataclass
class Args:
    env_id: str = "Humanoid-v5"
    """the id of a gymnasium environment with a Box action space"""
    total_timesteps: int = 1_000_000
    """environment steps to train for, counted over all envs (on --resume, the new total)"""
    seed: int = 1
    """seed of python, numpy, torch, the environments and the replay buffer"""
    torch_deterministic: bool = True
    """make cuDNN deterministic (`torch.backends.cudnn.deterministic`)"""
    device: str = "auto"
    """auto (CUDA, else MPS, else CPU), or a torch device such as cpu, cuda, cuda:1, mps"""
    num_envs: int = 1
    """parallel environments; one gradient update is made per vector step (num_envs transitions)"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in observation slots, shared by all envs"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target smoothing coefficient: target <- (1 - tau) * target + tau * online"""
    batch_size: int = 256
    """transitions per gradient update"""
    learning_starts: int = 25_000
    """steps of uniformly random actions before learning starts"""
    policy_lr: float = 3e-4
    """actor learning rate"""
    q_lr: float = 3e-4
    """critic (and entropy temperature) learning rate"""
    policy_frequency: int = 1
    """update the actor every N critic updates (N actor updates at once, as in TD3/CleanRL)"""
    target_network_frequency: int = 1
    """update the target critics every N critic updates"""
    alpha: float = 0.1
    """entropy temperature; the initial value when --autotune"""
    autotune: bool = True
    """learn alpha so that the policy entropy tracks -dim(A)"""
    eval_frequency: int = 10_000
    """evaluate the deterministic policy every N steps (0: only at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    capture_video: bool = False
    """record the first episode of each evaluation to videos/ as MP4"""
    checkpoint_frequency: int = 50_000
    """write a resumable checkpoint every N steps (0: off, except at exit)"""
    resume: str = ""
    """continue from a checkpoint: a run directory, a checkpoint directory, or 'auto' (this --run-name's latest, if any)"""
    eval_checkpoint: str = ""
    """evaluate this model.pt (or best_model.pt) and exit, without training"""
    run_name: str = ""
    """name of the run directory under --output-dir (default: <env-id>__sac__<seed>__<unix time>)"""
    output_dir: str = "runs"
    """where run directories are created"""
    log_frequency: int = 100
    """write loss scalars to TensorBoard every N gradient updates"""
    compile: bool = False
    """torch.compile the critic and actor losses (forward and backward): a speed option for GPUs, the same algorithm (on the 2-core CPU in README's Speed section it was slower than without)"""
    cudagraphs: bool = False
    """CUDA only: record each update step (and the action sampling) as a CUDA graph once and replay it, so the host launches one graph instead of hundreds of kernels. The same algorithm; exact resume is not guaranteed with it"""


class UserError(Exception):
    """Bad input: main() prints the message as one line on stderr and exits with EXIT_BAD_INPUT."""


class Diverged(Exception):
    """A loss or a weight became NaN/Inf."""


def validate_args(args: Args) -> None:
    positive = ["total_timesteps", "num_envs", "buffer_size", "batch_size", "eval_episodes",
                "policy_frequency", "target_network_frequency", "log_frequency"]
    for name in positive:
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ["learning_starts", "eval_frequency", "checkpoint_frequency"]:
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    for name in ["policy_lr", "q_lr", "alpha"]:
        if not getattr(args, name) > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 < args.gamma <= 1:
        raise UserError(f"--gamma must be in (0, 1], got {args.gamma}")
    if not 0 < args.tau <= 1:
        raise UserError(f"--tau must be in (0, 1], got {args.tau}")
    if args.buffer_size < 3 * args.num_envs:
        raise UserError(f"--buffer-size {args.buffer_size} is too small for {args.num_envs} envs; use at least {3 * args.num_envs}")
    if args.batch_size > args.buffer_size:
        raise UserError(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}; lower the batch or raise the buffer")
    if args.resume == "auto" and not args.run_name:
        raise UserError("--resume auto needs a fixed --run-name to find the run again; add --run-name NAME")
    if args.resume and args.eval_checkpoint:
        raise UserError("--resume and --eval-checkpoint exclude each other; pass one of them")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device '{name}' is not a torch device; use auto, cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


# ----------------------------------------------------------------------------------------------
# Environments
# ----------------------------------------------------------------------------------------------


def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """gym.make with bad ids and unusable spaces turned into a one-line UserError."""
    try:
        env = gym.make(env_id, render_mode=render_mode)
    except gym.error.Error as e:  # NameNotFound, VersionNotFound, DeprecatedEnv, missing extras...
        raise UserError(f"cannot make environment '{env_id}': {e}. Check --env-id") from None
    except ImportError as e:
        raise UserError(f"environment '{env_id}' needs a missing package ({e}); install it") from None
    if not isinstance(env.action_space, gym.spaces.Box):
        env.close()
        raise UserError(f"'{env_id}' has a {type(env.action_space).__name__} action space; SAC here needs a continuous (Box) one")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        env.close()
        raise UserError(f"'{env_id}' has observation space {env.observation_space}; this script needs a flat Box")
    if not (np.all(np.isfinite(env.action_space.low)) and np.all(np.isfinite(env.action_space.high))):
        env.close()
        raise UserError(f"'{env_id}' has an unbounded action space; SAC squashes actions into finite bounds")
    return env


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
            raise UserError(f"MUJOCO_GL={gl}: cannot load the {lib} library; install {package} (apt-get install {package}) "
                            f"or set MUJOCO_GL={other} ({GL_LIBRARIES[other][1]}; osmesa renders on a CPU, egl on a GPU)") from None
    if capture_video:
        env = make_env(env_id, render_mode="rgb_array")
        try:
            env.reset(seed=0)
            env.render()
        except gym.error.DependencyNotInstalled as e:
            raise UserError(f"--capture-video: {env_id} cannot render ({str(e).splitlines()[0]}); install that or drop --capture-video") from None
        finally:
            env.close()


def make_vector_env(env_id: str, num_envs: int) -> gym.vector.SyncVectorEnv:
    """Training envs. SAME_STEP autoreset: when an episode ends, step() returns the reset observation
    and puts the real last observation in infos["final_obs"], which is what the buffer must store."""
    make_env(env_id).close()  # fail early, with a clear message, on a bad id or space
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.RecordEpisodeStatistics(make_env(env_id)) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    return envs


def real_next_observations(next_obs: np.ndarray, dones: np.ndarray, infos: dict) -> np.ndarray:
    """s' of each env's transition: next_obs, except where an episode just ended, where next_obs is
    already the reset observation and the real last one is infos["final_obs"]."""
    if not dones.any():
        return next_obs
    real = next_obs.copy()
    ended = infos["_final_obs"]
    real[ended] = np.stack(infos["final_obs"][ended])
    return real


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------

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
        """The same Q(s, a), for the actor's loss, which needs dQ/da and nothing else. The weights are
        detached (constants: backward computes no weight gradients), and the first layer W [s; a] + b
        is split into W_s s + (W_a a + b), so backward multiplies by W_a (act_dim columns) instead of
        by all of W to then keep act_dim of obs_dim + act_dim columns: on Humanoid that skips 2 x 46
        MFLOP per update. Equal to forward up to the rounding order of the first layer's sums."""
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
        for m in self.modules():  # the design notebook's init: Xavier-uniform weights, zero biases
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

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The evaluation action: tanh of the mean, rescaled."""
        return torch.tanh(self(obs)[0]) * self.action_scale + self.action_bias


# ----------------------------------------------------------------------------------------------
# Replay buffer
# ----------------------------------------------------------------------------------------------


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
        """Store each env's current observation (after reset or resume)."""
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
        # rows of the (envs * slots) flattened arrays; s and s' come from one gather (np.take on
        # 1-D indices: 250 -> 170 us per Humanoid batch against two 2-D fancy indexes)
        row = env * self.capacity + slot
        next_row = env * self.capacity + (slot + 1) % self.capacity
        obs = self.obs.reshape(-1, self.obs.shape[-1]).take(np.concatenate([row, next_row]), axis=0)
        return (obs[:batch_size], self.actions.reshape(-1, self.actions.shape[-1]).take(row, axis=0),
                self.rewards.reshape(-1).take(row), self.terminations.reshape(-1).take(row), obs[batch_size:])

    # --- persistence: plain .npy files, readable with numpy alone (layout in README) ---

    def save(self, directory: Path) -> dict:
        n = int(np.minimum(self.written, self.capacity).max())  # slots beyond n were never written
        for name in self.ARRAYS:
            write_npy(directory / f"{name}.npy", getattr(self, name)[:, :n])
        return {"pos": self.pos.tolist(), "written": self.written.tolist(), "slots": n,
                "rng": self.rng.bit_generator.state}

    def load(self, directory: Path, meta: dict) -> None:
        n = meta["slots"]
        for name in self.ARRAYS:
            target = getattr(self, name)
            try:
                data = np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise UserError(f"checkpoint buffer file {directory / name}.npy is unreadable ({e}); it is truncated or corrupt") from None
            if data.shape != target[:, :n].shape or data.dtype != target.dtype:
                raise UserError(f"checkpoint buffer file {directory / name}.npy has shape {data.shape} {data.dtype}, "
                                f"expected {target[:, :n].shape} {target.dtype}")
            target[:, :n] = data
        self.pos = np.asarray(meta["pos"], dtype=np.int64)
        self.written = np.asarray(meta["written"], dtype=np.int64)
        self.rng.bit_generator.state = meta["rng"]


# ----------------------------------------------------------------------------------------------
# Losses and the update step
# ----------------------------------------------------------------------------------------------


def critic_target(reward, termination, next_q1, next_q2, next_log_prob, alpha, gamma: float):
    """y = r + gamma * (1 - terminated) * (min_j Q'_j(s', a') - alpha * log pi(a'|s')).

    Only termination stops bootstrapping: a time-limit truncation is not a terminal state of the MDP."""
    soft_value = torch.min(next_q1, next_q2) - alpha * next_log_prob
    return reward + gamma * (1.0 - termination) * soft_value


def alpha_loss_fn(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """J(alpha) = E[-alpha * (log pi + H_target)] with alpha = exp(log_alpha) (always positive).

    Its gradient raises alpha when the entropy -log pi is below the target and lowers it above."""
    return (log_alpha.exp() * (-log_prob.detach() - target_entropy)).mean()


@torch.no_grad()
def polyak_update(online: list[torch.Tensor], target: list[torch.Tensor], tau: float) -> None:
    """target <- target + tau * (online - target), for every pair of tensors in one foreach call
    instead of a Python loop over the parameters (the same lerp per tensor)."""
    torch._foreach_lerp_(target, online, tau)


def cuda_graphed(step, warmup_calls: int = 3):
    """step(*tensors) -> outputs, recorded as a CUDA graph and replayed: one launch per call instead of
    one per kernel, which is most of an update's time on a GPU for networks this small.

    Every call is a real step. The first warmup_calls run as usual, on a side stream (they create the
    gradients and optimizer state, and compile under --compile). The next one records step on copies
    of its inputs, which become the graph's fixed inputs, and replays the graph once. From then on a
    call copies its inputs into those tensors and replays. Outputs are the graph's own tensors,
    overwritten by the next replay: read them before calling again. Requirements met by SAC below:
    step's tensors (parameters, optimizer state, alpha) are updated in place and never reallocated,
    Adam is capturable, no host sync inside, the same shapes every call.
    """
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


class SAC:
    """Networks, optimizers and the entropy temperature: the state a checkpoint must carry."""

    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray, args: Args, device: torch.device):
        act_dim = low.shape[0]
        self.args, self.device = args, device
        self.actor = Actor(obs_dim, low, high).to(device)
        self.qf1, self.qf2 = SoftQNetwork(obs_dim, act_dim).to(device), SoftQNetwork(obs_dim, act_dim).to(device)
        self.qf1_target, self.qf2_target = SoftQNetwork(obs_dim, act_dim).to(device), SoftQNetwork(obs_dim, act_dim).to(device)
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.q_params = [*self.qf1.parameters(), *self.qf2.parameters()]
        self.q_target_params = [*self.qf1_target.parameters(), *self.qf2_target.parameters()]
        # fused Adam: one kernel for all parameters instead of a Python loop over them (CPU and CUDA);
        # capturable: its step count lives on the device, so a CUDA graph can replay the step
        adam = dict(fused=device.type in ("cpu", "cuda"), capturable=args.cudagraphs)
        self.q_optimizer = torch.optim.Adam(self.q_params, lr=args.q_lr, **adam)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.policy_lr, **adam)
        self.target_entropy = -float(act_dim)
        # log_alpha is created once and only ever updated in place: the optimizer holds this tensor
        self.log_alpha = torch.tensor([math.log(args.alpha)], device=device, requires_grad=args.autotune)
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=args.q_lr, **adam) if args.autotune else None
        # alpha = exp(log_alpha), the value the losses use: a tensor on the device, updated in place.
        # Reading it back as a Python float after every alpha step (.item()) would make the host wait
        # for the device, a GPU sync per update; a float is made only when alpha is logged.
        self.alpha = torch.tensor([args.alpha], dtype=torch.float32, device=device)
        self.n_updates = 0
        # The fast paths wrap the methods below and change nothing they compute.
        if args.compile:  # Inductor kernels for the losses' forward and backward; Adam stays the fused one
            self.critic_loss = torch.compile(self.critic_loss)
            self.actor_loss = torch.compile(self.actor_loss)
        if args.cudagraphs:
            self.update_critics = cuda_graphed(self.update_critics)
            self.update_policy = cuda_graphed(self.update_policy)
            self.update_targets = cuda_graphed(self.update_targets)
            self.sample_action = cuda_graphed(self.sample_action)

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "qf1": self.qf1, "qf2": self.qf2,
                "qf1_target": self.qf1_target, "qf2_target": self.qf2_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"q_optimizer": self.q_optimizer, "actor_optimizer": self.actor_optimizer}
        if self.a_optimizer is not None:
            opts["a_optimizer"] = self.a_optimizer
        return opts

    def to_device(self, batch: tuple[np.ndarray, ...]) -> list[torch.Tensor]:
        """float32 tensors on the device. For CUDA through pinned (page-locked) host memory, so that
        the copies run asynchronously; torch's pinned-memory cache reuses a block only once its copy is done."""
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

    def critic_loss(self, obs, actions, rewards, terminations, next_obs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """sum_j E[(Q_j(s, a) - y)^2] with y from critic_target (no gradient through y)."""
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.sample(next_obs)
            y = critic_target(rewards, terminations, self.qf1_target(next_obs, next_actions),
                              self.qf2_target(next_obs, next_actions), next_log_prob, self.alpha, self.args.gamma)
        qf1_values, qf2_values = self.qf1(obs, actions), self.qf2(obs, actions)
        qf1_loss, qf2_loss = F.mse_loss(qf1_values, y), F.mse_loss(qf2_values, y)
        qf_loss = qf1_loss + qf2_loss
        return qf_loss, {"qf1_values": qf1_values.mean().detach(), "qf2_values": qf2_values.mean().detach(),
                         "qf1_loss": qf1_loss.detach(), "qf2_loss": qf2_loss.detach(), "qf_loss": qf_loss.detach() / 2.0}

    def update_critics(self, obs, actions, rewards, terminations, next_obs) -> dict[str, torch.Tensor]:
        qf_loss, stats = self.critic_loss(obs, actions, rewards, terminations, next_obs)
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()
        return stats

    def actor_loss(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        """J(pi) = E[alpha * log pi(a|s) - min_j Q_j(s, a)], a ~ pi(.|s) reparameterized; also log pi."""
        pi, log_pi = self.actor.sample(obs)
        min_q = torch.min(self.qf1.value_for_actor(obs, pi), self.qf2.value_for_actor(obs, pi))
        return (self.alpha * log_pi - min_q).mean(), log_pi

    def update_actor(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        actor_loss, log_pi = self.actor_loss(obs)
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
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
        self.a_optimizer.zero_grad()
        alpha_loss.backward()
        self.a_optimizer.step()
        with torch.no_grad():
            self.alpha.copy_(self.log_alpha.exp())
        return alpha_loss.detach()

    def update_targets(self) -> None:
        polyak_update(self.q_params, self.q_target_params, self.args.tau)

    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for m in self.modules().values() for p in m.parameters()) \
            and bool(torch.isfinite(self.log_alpha).all())


# ----------------------------------------------------------------------------------------------
# Evaluation and model files
# ----------------------------------------------------------------------------------------------

MODEL_FORMAT = "sac_continuous/model/v1"
CHECKPOINT_FORMAT = "sac_continuous/checkpoint/v1"


def evaluate(actor: Actor, env_id: str, episodes: int, seed: int, device: torch.device,
             video_path: Path | None = None) -> list[float]:
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

        video_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = video_path.with_name(video_path.stem + ".part.mp4")
        imageio.mimsave(tmp, frames, fps=env.metadata.get("render_fps", 30))
        os.replace(tmp, video_path)
    env.close()
    return returns


def model_payload(agent: SAC, env_id: str, obs_dim: int, global_step: int) -> dict:
    return {"format": MODEL_FORMAT, "env_id": env_id, "obs_dim": obs_dim,
            "act_dim": int(agent.actor.action_scale.shape[0]), "global_step": global_step,
            "actor": agent.actor.state_dict(), "qf1": agent.qf1.state_dict(), "qf2": agent.qf2.state_dict()}


def torch_load(path: Path, what: str, device: torch.device) -> dict:
    """torch.load(weights_only=True) with every failure turned into one line."""
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; check the path")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle headers: the one line below says it all
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # zip errors, pickle errors, unsupported globals: all mean "not ours / damaged"
        # torch's own message may advise weights_only=False, i.e. running the file's code: not shown
        raise UserError(f"{what} {path} is unreadable ({type(e).__name__}): it is truncated, corrupt, or not "
                        f"a file written by sac_continuous.py") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} is not a file written by sac_continuous.py")
    return data


def load_model_for_eval(path: Path, env_id: str, device: torch.device) -> Actor:
    data = torch_load(path, "model file", device)
    if data.get("format") != MODEL_FORMAT:
        raise UserError(f"{path} is not a sac_continuous.py model file (model.pt or best_model.pt)")
    if data["env_id"] != env_id:
        raise UserError(f"{path} was trained on {data['env_id']}, not {env_id}; pass --env-id {data['env_id']}")
    env = make_env(env_id)
    low, high, obs_dim = env.action_space.low, env.action_space.high, env.observation_space.shape[0]
    env.close()
    if data["obs_dim"] != obs_dim or data["act_dim"] != low.shape[0]:
        raise UserError(f"{path} expects observations of size {data['obs_dim']} and actions of size {data['act_dim']}, "
                        f"but {env_id} has {obs_dim} and {low.shape[0]}")
    actor = Actor(obs_dim, low, high).to(device)
    actor.load_state_dict(data["actor"])
    return actor


# ----------------------------------------------------------------------------------------------
# Checkpoints: atomic, complete (weights, optimizers, buffer, env state, every RNG) and exact
# ----------------------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def atomic_torch_save(obj, path: Path) -> None:
    """Write to a temporary name, fsync, rename: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# MjData holds derived quantities (e.g. body positions used by the next step's reward) besides the
# integration state, so the whole struct is saved. Its pickle names exactly one class; the loader
# accepts that class and nothing else, so a checkpoint cannot run code when it is loaded.
class _MjDataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("mujoco._structs", "MjData"):
            import mujoco

            return mujoco.MjData
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in MuJoCo state")


def _simple_attrs(layer) -> dict:
    """The plain-valued attributes of one wrapper or env layer (step counters, episode sums, flags,
    Pendulum's state...): what a layer needs to carry on an episode mid-way."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(layer).items()
            if k != "_np_random" and (v is None or isinstance(v, (bool, int, float, str, np.ndarray, np.generic)))}


def _layers(env: gym.Env) -> list:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def get_env_state(env: gym.Env) -> dict:
    base = env.unwrapped
    state = {"layers": [_simple_attrs(layer) for layer in _layers(env)], "np_random": base.np_random.bit_generator.state}
    if hasattr(base, "data") and type(base.data).__name__ == "MjData":
        state["mjdata"] = pickle.dumps(base.data)
    for layer_state in state["layers"]:  # numpy scalars/arrays -> plain python, for weights_only loading
        for k, v in layer_state.items():
            if isinstance(v, np.ndarray):
                layer_state[k] = torch.from_numpy(v)
            elif isinstance(v, np.generic):
                layer_state[k] = v.item()
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


def rng_states() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# Arguments that define the run: on --resume they come from the checkpoint. A command-line value
# that differs from both the default and the checkpoint is a conflict and is refused.
RUN_DEFINING = ("env_id", "num_envs", "buffer_size", "gamma", "tau", "batch_size", "learning_starts",
                "policy_lr", "q_lr", "policy_frequency", "target_network_frequency", "alpha", "autotune", "seed")


CHECKPOINT_KEYS = ("args", "obs_dim", "act_dim", "global_step", "n_updates", "best_eval", "last_return", "obs",
                   "modules", "optimizers", "log_alpha", "alpha", "rng", "action_space_rng", "envs", "buffer")


def save_checkpoint(run_dir: Path, state: dict, rb: ReplayBuffer) -> Path:
    """runs/<run>/checkpoints/step_<N>/{state.pt, buffer/*.npy}, written under a temporary name and
    renamed; then `latest` is switched atomically and older checkpoints are removed."""
    root = run_dir / "checkpoints"
    name = f"step_{state['global_step']:012d}"
    if find_checkpoint(run_dir) == root / name:  # this very step is saved already (e.g. periodic, then at exit)
        return root / name
    root.mkdir(exist_ok=True)
    tmp = root / f".tmp_{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "buffer").mkdir(parents=True)
    state = {**state, "buffer": rb.save(tmp / "buffer")}
    fsync_dir(tmp / "buffer")
    atomic_torch_save(state, tmp / "state.pt")
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(root)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(name + "\n")
    with open(latest_tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(latest_tmp, root / "latest")
    fsync_dir(root)
    for old in root.iterdir():  # only after `latest` points at the new one
        if old.name != name and old.name != "latest":
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return final


def find_checkpoint(path: Path) -> Path | None:
    """A run dir, its checkpoints/ dir, or one step_* dir -> the step dir to load (None if none yet)."""
    for root in (path / "checkpoints", path):
        latest = root / "latest"
        if latest.is_file():
            return root / latest.read_text().strip()
    if (path / "state.pt").is_file():
        return path
    return None


def read_checkpoint(ckpt: Path, device: torch.device) -> dict:
    state = torch_load(ckpt / "state.pt", "checkpoint", device)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{ckpt / 'state.pt'} is not a sac_continuous.py checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    missing += [f"args.{k}" for k in RUN_DEFINING if k not in state.get("args", {}) and "args" not in missing]
    if missing:
        raise UserError(f"checkpoint {ckpt} lacks {', '.join(missing)}; it is damaged or from another version")
    return state


def merge_resume_args(args: Args, saved: dict) -> Args:
    defaults = Args()
    merged = {}
    for name in RUN_DEFINING:
        cli, old = getattr(args, name), saved[name]
        if cli != old and cli != getattr(defaults, name):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} {cli} conflicts with the checkpoint's {flag} {old}; drop the flag to resume, or start a new run")
        merged[name] = old
    return dataclasses.replace(args, **merged)


# ----------------------------------------------------------------------------------------------
# Main loop
# ----------------------------------------------------------------------------------------------


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
        print(f"\n{self.signal_name}: finishing this step and writing a checkpoint (again to quit at once)", file=sys.stderr)


def resume_command(args: Args, run_dir: Path) -> str:
    """The command that continues this run: --resume restores the run-defining flags from the
    checkpoint; the others (the total, evaluation, checkpoints, device...) must be given again."""
    defaults, words = Args(), ["python", "sac_continuous.py", "--resume", str(run_dir)]
    for field in dataclasses.fields(Args):
        value = getattr(args, field.name)
        if field.name in RUN_DEFINING or field.name in ("resume", "run_name", "output_dir") or value == getattr(defaults, field.name):
            continue
        flag = "--" + field.name.replace("_", "-")
        words += [flag if value is True else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return " ".join(words)


def crossed(step: int, prev_step: int, every: int) -> bool:
    """True when a multiple of `every` lies in (prev_step, step]."""
    return every > 0 and step // every > prev_step // every


def prepare_run_dir(args: Args) -> tuple[Path, Path | None]:
    """The run directory and, when resuming, the checkpoint to load. Refuses to reuse a run directory
    that already holds results unless resuming, so nothing written is ever overwritten by a fresh run."""
    if args.resume and args.resume != "auto":
        given = Path(args.resume)
        ckpt = find_checkpoint(given) if given.exists() else None
        if ckpt is None:
            raise UserError(f"--resume {given}: no checkpoint there; pass a run directory or a checkpoints/step_* directory")
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return run_dir, ckpt
    run_name = args.run_name or f"{args.env_id}__sac__{args.seed}__{int(time.time())}"
    run_dir = Path(args.output_dir) / run_name
    ckpt = find_checkpoint(run_dir) if args.resume == "auto" and run_dir.exists() else None
    # --resume auto with no checkpoint yet (e.g. killed before the first one) starts the run afresh
    if ckpt is None and args.resume != "auto" and run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"run directory {run_dir} already holds a run; add --resume auto to continue it, or choose another --run-name")
    return run_dir, ckpt


def create_run_dir(run_dir: Path) -> bool:
    """mkdir with a one-line error; returns whether this call created it (so a failure can remove it)."""
    existed = run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {run_dir} ({e.strerror}); choose a writable --output-dir") from None
    return not existed


def check_fast_path(args: Args, device: torch.device) -> None:
    """--compile and --cudagraphs need things that a plain run does not: refuse early, in one line."""
    if args.cudagraphs and device.type != "cuda":
        raise UserError(f"--cudagraphs needs a CUDA device (CUDA graphs exist only there), but the device is {device}; "
                        f"drop --cudagraphs or use --device cuda")
    if args.compile and device.type == "cpu":
        compiler = os.environ.get("CXX", "g++")
        if shutil.which(compiler) is None:
            raise UserError(f"--compile on the CPU needs a C++ compiler ({compiler}, or set CXX); install one or drop --compile")
    if args.compile and device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise UserError("--compile on CUDA needs the triton package; install it or drop --compile")
        # triton builds a small C launcher with $CC, else gcc, else clang
        if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
            raise UserError("--compile on CUDA needs a C compiler for triton (gcc or clang, or set CC); install one or drop --compile")


def train(args: Args) -> int:
    validate_args(args)
    device = pick_device(args.device)
    check_fast_path(args, device)
    run_dir, ckpt = prepare_run_dir(args)
    saved = read_checkpoint(ckpt, device) if ckpt else None
    if saved is not None:
        args = merge_resume_args(args, saved["args"])
    # Everything that can reject the input happens before anything is written.
    check_rendering(args.env_id, args.capture_video)
    envs = make_vector_env(args.env_id, args.num_envs)
    obs_dim = envs.single_observation_space.shape[0]
    low, high = envs.single_action_space.low, envs.single_action_space.high
    if saved is not None and (saved["obs_dim"], saved["act_dim"]) != (obs_dim, low.shape[0]):
        raise UserError(f"checkpoint {ckpt} has observation/action sizes {saved['obs_dim']}/{saved['act_dim']}, "
                        f"but {args.env_id} has {obs_dim}/{low.shape[0]}")
    created = create_run_dir(run_dir)
    try:
        return _train(args, device, run_dir, saved, ckpt, envs, obs_dim, low, high)
    except UserError:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train(args, device, run_dir, saved, ckpt, envs, obs_dim, low, high) -> int:
    from torch.utils.tensorboard import SummaryWriter

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    agent = SAC(obs_dim, low, high, args, device)
    rb = ReplayBuffer(args.buffer_size, args.num_envs, obs_dim, low.shape[0], seed=args.seed)
    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    global_step, best_eval, last_return = 0, -math.inf, math.nan

    if saved is not None:
        restore(saved, ckpt, agent, rb, envs)
        obs = saved["obs"].numpy()
        global_step, best_eval, last_return = saved["global_step"], saved["best_eval"], saved["last_return"]
        if global_step >= args.total_timesteps:
            print(f"{run_dir} is already at step {global_step} of {args.total_timesteps}; nothing to do "
                  f"(a larger --total-timesteps extends it)", file=sys.stderr)
            envs.close()
            return 0
        print(f"resumed {run_dir} at step {global_step} from {ckpt.name}", file=sys.stderr)
    else:
        rb.start(obs)
        (run_dir / "args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2) + "\n")

    # On resume, TensorBoard hides what the stopped process logged after its checkpoint (step > S):
    # everything up to S was logged before the checkpoint was written, so nothing is lost or doubled.
    # A fresh start over an attempt that died before its first checkpoint hides all of that attempt's points.
    restarted = saved is None and any(run_dir.glob("events.out.tfevents.*"))
    writer = SummaryWriter(str(run_dir), purge_step=global_step + 1 if saved is not None else (0 if restarted else None))
    if saved is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items()))

    def checkpoint_state() -> dict:
        return {"format": CHECKPOINT_FORMAT, "args": dataclasses.asdict(args), "obs_dim": obs_dim,
                "act_dim": int(low.shape[0]), "global_step": global_step, "n_updates": agent.n_updates,
                "best_eval": best_eval, "last_return": last_return, "obs": torch.from_numpy(obs.copy()),
                "modules": {k: m.state_dict() for k, m in agent.modules().items()},
                "optimizers": {k: o.state_dict() for k, o in agent.optimizers().items()},
                "log_alpha": agent.log_alpha.detach().clone(), "alpha": agent.alpha.clone(), "rng": rng_states(),
                "action_space_rng": envs.action_space.np_random.bit_generator.state,
                "envs": [get_env_state(e) for e in envs.envs]}

    def write_checkpoint() -> Path:
        if not agent.weights_finite():
            raise Diverged("weights are not finite")
        writer.flush()  # the events up to this step must be on disk before the checkpoint that follows them
        return save_checkpoint(run_dir, checkpoint_state(), rb)

    def run_eval() -> None:
        nonlocal best_eval
        if not agent.weights_finite():  # never write a NaN model over a good one
            raise Diverged("weights are not finite")
        video = run_dir / "videos" / f"eval_step_{global_step:012d}.mp4" if args.capture_video else None
        returns = evaluate(agent.actor, args.env_id, args.eval_episodes, args.seed + 10_000, device, video)
        mean, std = float(np.mean(returns)), float(np.std(returns))
        writer.add_scalar("eval/mean_return", mean, global_step)
        writer.add_scalar("eval/std_return", std, global_step)
        atomic_torch_save(model_payload(agent, args.env_id, obs_dim, global_step), run_dir / "model.pt")
        if mean > best_eval:
            best_eval = mean
            atomic_torch_save(model_payload(agent, args.env_id, obs_dim, global_step), run_dir / "best_model.pt")
        progress.note(f"step {global_step}: eval return {mean:.1f} ± {std:.1f} over {len(returns)} episodes")

    stop = StopRequest()
    progress = Progress(args.total_timesteps, global_step)
    start_step, start_time = global_step, time.time()
    stats: dict[str, torch.Tensor] = {}
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
                    writer.add_scalar("charts/SPS", int((global_step - start_step) / (time.time() - start_time)), global_step)

            # the last step always evaluates (the final model) and, unless checkpoints are off, checkpoints
            # after that evaluation, so the checkpoint to extend from knows its best_eval
            last = global_step >= args.total_timesteps
            if crossed(global_step, prev_step, args.eval_frequency) or last:
                run_eval()
            if crossed(global_step, prev_step, args.checkpoint_frequency) or (last and args.checkpoint_frequency > 0):
                write_checkpoint()
            progress.update(global_step, last_return)
            if stop.signal_name is not None and not last:
                path = write_checkpoint()
                progress.close()
                print(f"stopped by {stop.signal_name} at step {global_step}; checkpoint {path}. "
                      f"Resume with: {resume_command(args, run_dir)}", file=sys.stderr)
                return EXIT_INTERRUPTED
    except Diverged as e:
        progress.close()
        latest = find_checkpoint(run_dir)
        where = f"the last good checkpoint {latest} is intact" if latest else "no checkpoint was written"
        print(f"error: training diverged at step {global_step} (non-finite values: {e}); {where}. "
              f"Try lower --policy-lr/--q-lr.", file=sys.stderr)
        return EXIT_DIVERGED
    finally:
        writer.flush()
        envs.close()

    writer.close()
    progress.close()
    print(f"done: {global_step} steps; outputs in {run_dir}", file=sys.stderr)
    return 0


def restore(saved: dict, ckpt: Path, agent: SAC, rb: ReplayBuffer, envs: gym.vector.SyncVectorEnv) -> None:
    """Put every piece of state back in place. log_alpha and alpha are overwritten in place, so the
    optimizer, which holds that very log_alpha tensor, keeps training it."""
    try:
        for k, m in agent.modules().items():
            m.load_state_dict(saved["modules"][k])
        for k, o in agent.optimizers().items():
            o.load_state_dict(saved["optimizers"][k])
            for group in o.param_groups:  # how this process steps (fused, capturable) is not part of the run
                group.update(fused=o.defaults["fused"], capturable=o.defaults["capturable"])
        with torch.no_grad():
            agent.log_alpha.copy_(saved["log_alpha"])
            agent.alpha.copy_(torch.as_tensor(saved["alpha"], dtype=torch.float32))  # a float in older checkpoints
        agent.n_updates = saved["n_updates"]
        rb.load(ckpt / "buffer", saved["buffer"])
        for env, env_state in zip(envs.envs, saved["envs"]):
            set_env_state(env, env_state)
        envs.action_space.np_random.bit_generator.state = saved["action_space_rng"]
        set_rng_states(saved["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0][:160]
        raise UserError(f"checkpoint {ckpt} does not fit this run ({type(e).__name__}: {reason})") from None


class Progress:
    """A rich progress bar on a terminal (steps, SPS, last return, ETA); plain lines otherwise."""

    def __init__(self, total: int, start: int):
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("SAC"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[sps]} SPS"),
                                    TextColumn("return {task.fields[ret]}"), TimeRemainingColumn(),
                                    transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, sps="-", ret="-")
            self.bar.start()
        self.start, self.t0, self.last_draw = start, time.time(), 0.0

    def update(self, step: int, last_return: float) -> None:
        now = time.time()
        if self.bar is None or now - self.last_draw < 0.25:
            return
        self.last_draw = now
        sps = (step - self.start) / max(now - self.t0, 1e-9)
        self.bar.update(self.task, completed=step, sps=f"{sps:.0f}", ret=f"{last_return:.1f}")

    def note(self, text: str) -> None:
        (self.bar.console.print if self.bar else lambda t: print(t, file=sys.stderr))(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def eval_only(args: Args) -> int:
    if args.resume:  # validate_args says so too, but only train() calls it
        raise UserError("--resume and --eval-checkpoint exclude each other; pass one of them")
    if args.eval_episodes <= 0:
        raise UserError(f"--eval-episodes must be positive, got {args.eval_episodes}")
    device = pick_device(args.device)
    path = Path(args.eval_checkpoint)
    check_rendering(args.env_id, args.capture_video)
    actor = load_model_for_eval(path, args.env_id, device)
    video = path.parent / "videos" / f"eval_{path.stem}.mp4" if args.capture_video else None
    returns = evaluate(actor, args.env_id, args.eval_episodes, args.seed + 10_000, device, video)
    print(f"{args.env_id} {path}: mean return {np.mean(returns):.1f} ± {np.std(returns):.1f} over {len(returns)} episodes")
    if video:
        print(f"video: {video}")
    return 0


def main() -> None:
    args = tyro.cli(Args, description=__doc__.split("\n\n")[0] + " Exit codes: 0 done, 2 bad input (nothing "
                    "written), 3 diverged, 75 stopped by a signal after writing a checkpoint, 130 aborted.")
    if args.capture_video and "MUJOCO_GL" not in os.environ:
        # before mujoco is imported: EGL renders on an NVIDIA GPU, OSMesa on any CPU
        os.environ["MUJOCO_GL"] = "egl" if torch.cuda.is_available() else "osmesa"
    if os.environ.get("MUJOCO_GL") == "osmesa" and importlib.util.find_spec("triton") is not None:
        # `import mujoco` then loads OSMesa with its own LLVM; torch's triton (in its CUDA builds), when
        # imported after that (fused Adam, torch.compile), crashes the process. Imported first, both work.
        import triton  # noqa: F401
    try:
        code = eval_only(args) if args.eval_checkpoint else train(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before training started (setup, eval-only): nothing to save
        print("interrupted", file=sys.stderr)
        code = EXIT_ABORTED
    sys.exit(code)


if __name__ == "__main__":
    main()
