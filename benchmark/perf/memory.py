"""Peak memory (resident set size) of a run with a full 1M-slot replay buffer, stage by stage.

    python benchmark/perf/memory.py                              # Humanoid-v5, 1,000,000 slots
    python benchmark/perf/memory.py --no-checkpoint --updates 50 # skip the 1.5 GB checkpoint write and load

The replay buffer is allocated with np.zeros. The OS hands out zeroed pages only when they are first
written, so a fresh run's RSS grows with the number of steps taken, and a short run's peak says
nothing about a 1M-step run's. This script therefore measures three things, in separate processes:

1. A real short run of sac_continuous.py with --buffer-size 1000000 (a few thousand steps): its peak
   RSS (getrusage of the child). The buffer is almost entirely untouched there.
2. The training state at a full buffer: the same agent, envs and ReplayBuffer as the script's, then
   every slot written synthetically (as after 1M steps), then --updates updates sampled from it with
   exploration actions between them. RSS and peak RSS (VmRSS, VmHWM) are printed after each stage.
3. With --checkpoint (the default): that full buffer saved as a checkpoint's buffer/ directory (in a
   temporary directory inside --dir), and then loaded by a fresh process into a fresh buffer, the way
   --resume loads it: the peak of each. The files are removed at the end. Loading maps each .npy file
   (np.load mmap_mode="r") and copies it into the buffer; the mapped file's pages count in RSS while
   they are mapped, so the loading peak is about the buffer twice, half of it page cache.

Only numbers are printed; nothing is asserted. They are what this machine did this time.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import sac_continuous as sac  # noqa: E402

MB = 2**20


def rss() -> dict[str, float]:
    """This process's memory in MiB, from /proc/self/status: VmRSS (resident now), VmHWM (the peak
    since start or the last reset), and RssAnon / RssFile, the resident part that is the process's own
    memory / pages of mapped files (page cache: shared with the OS, which can drop them)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: 5 > /proc/self/clear_refs), so that a stage's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def report(stage: str) -> None:
    m = rss()
    print(
        f"  {stage}\n      RSS {m['VmRSS']:6.0f} MiB (own {m['RssAnon']:6.0f}, file pages {m['RssFile']:5.0f})   "
        f"peak RSS {m['VmHWM']:6.0f} MiB",
        flush=True,
    )


def short_run(a) -> None:
    """Stage 1: the real script, a few thousand steps with a 1M buffer, in a child process."""
    steps = a.learning_starts + a.updates
    with tempfile.TemporaryDirectory(dir=a.dir) as out:
        cmd = [
            sys.executable,
            str(ROOT / "sac_continuous.py"),
            "--env-id",
            a.env_id,
            "--buffer-size",
            str(a.buffer_size),
            "--total-timesteps",
            str(steps),
            "--learning-starts",
            str(a.learning_starts),
            "--eval-frequency",
            "0",
            "--eval-episodes",
            "1",
            "--checkpoint-frequency",
            "0",
            "--device",
            "cpu",
            "--output-dir",
            out,
            "--run-name",
            "m",
        ]
        t = time.time()
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"the short run failed:\n{res.stderr[-2000:]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(
        f"1. sac_continuous.py, {steps} steps ({a.learning_starts} random, {a.updates} updates), "
        f"--buffer-size {a.buffer_size}: peak RSS {peak:.0f} MiB ({time.time() - t:.0f} s)",
        flush=True,
    )


def full_buffer(a) -> None:
    """Stage 2 (and the checkpoint save of stage 3), in this process."""
    import torch

    print(f"2. the training state with a full buffer, in one process ({torch.get_num_threads()} torch threads):")
    resettable = reset_peak()
    report("imports (torch, gymnasium, mujoco)")
    envs = sac.make_vector_env(a.env_id, 1)
    obs_dim = envs.single_observation_space.shape[0]
    low, high = envs.single_action_space.low, envs.single_action_space.high
    agent = sac.SAC(obs_dim, low, high, sac.Args(env_id=a.env_id), torch.device("cpu"))
    obs, _ = envs.reset(seed=0)
    report("+ env and agent (networks, Adam states)")
    rb = sac.ReplayBuffer(a.buffer_size, 1, obs_dim, low.shape[0], seed=0)
    nbytes = sum(getattr(rb, name).nbytes for name in rb.ARRAYS)
    report(f"+ ReplayBuffer({a.buffer_size:,}) allocated, untouched ({nbytes / MB:.0f} MiB of arrays)")
    # every slot written, as after buffer_size steps of one env: a wrapped ring, all slots valid but
    # the current observation's; values are arbitrary but every page is written
    rng = np.random.default_rng(0)
    chunk = 50_000
    for i in range(0, rb.capacity, chunk):
        j = min(i + chunk, rb.capacity)
        rb.obs[0, i:j] = rng.standard_normal((j - i, obs_dim), dtype=np.float32)
        rb.actions[0, i:j] = rng.uniform(-0.4, 0.4, (j - i, low.shape[0])).astype(np.float32)
        rb.rewards[0, i:j] = rng.standard_normal(j - i, dtype=np.float32)
    rb.terminations[:] = False
    rb.valid[:] = True
    rb.pos[:] = rb.capacity - 1
    rb.written[:] = rb.capacity
    rb.valid[0, rb.pos[0]] = False
    report(f"+ every slot written ({len(rb):,} transitions)")
    if resettable:
        reset_peak()
    for _ in range(a.updates):
        actions = agent.act(obs.astype(np.float32))
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        dones = terminations | truncations
        rb.add(actions, rewards, terminations, sac.real_next_observations(next_obs, dones, infos), dones, next_obs)
        obs = next_obs
        agent.update(rb.sample(256))
    report(f"+ {a.updates} env steps and updates from the full buffer (peak: this stage)")
    if not a.checkpoint:
        return
    directory = Path(tempfile.mkdtemp(prefix="memory_ckpt_", dir=a.dir))
    try:
        if resettable:
            reset_peak()
        t = time.time()
        meta = rb.save(directory)
        report(f"+ buffer saved as a checkpoint's buffer/ ({time.time() - t:.1f} s; peak: this stage)")
        (directory / "meta.json").write_text(json.dumps({**meta, "obs_dim": obs_dim, "act_dim": int(low.shape[0])}))
        del rb
        print("3. a fresh process loading that buffer, as --resume does:", flush=True)
        res = subprocess.run(
            [
                sys.executable,
                __file__,
                "--load",
                str(directory),
                "--buffer-size",
                str(a.buffer_size),
                "--env-id",
                a.env_id,
            ],
            capture_output=True,
            text=True,
        )
        print(res.stdout + res.stderr, end="", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def load(a) -> None:
    """Stage 3, in a child process: a fresh buffer, then ReplayBuffer.load (np.load with mmap, then a copy)."""
    import torch

    meta = json.loads((Path(a.load) / "meta.json").read_text())
    report("imports")
    envs = sac.make_vector_env(a.env_id, 1)  # what a resuming run holds besides the buffer
    low, high = envs.single_action_space.low, envs.single_action_space.high
    agent = sac.SAC(meta["obs_dim"], low, high, sac.Args(env_id=a.env_id), torch.device("cpu"))  # noqa: F841
    rb = sac.ReplayBuffer(a.buffer_size, 1, meta["obs_dim"], meta["act_dim"], seed=0)
    report("+ env, agent, ReplayBuffer allocated and untouched")
    t = time.time()
    rb.load(Path(a.load), meta)
    report(f"+ ReplayBuffer.load ({time.time() - t:.1f} s; peak: whole process)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env-id", default="Humanoid-v5")
    p.add_argument("--buffer-size", type=int, default=1_000_000)
    p.add_argument("--learning-starts", type=int, default=1000, help="random steps of the short real run")
    p.add_argument("--updates", type=int, default=200, help="updates of the short run and of the full-buffer stage")
    p.add_argument(
        "--checkpoint",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also save the full buffer and load it in a fresh process (writes ~1.5 GB to --dir)",
    )
    p.add_argument("--dir", default=None, help="where temporary files go (default: the system's temporary directory)")
    p.add_argument("--load", help=argparse.SUPPRESS)  # internal: stage 3's child process
    a = p.parse_args()
    if a.load:
        return load(a)
    print(f"{a.env_id}, --buffer-size {a.buffer_size:,}, observations stored once, float32; RSS in MiB (2^20 bytes)")
    short_run(a)
    full_buffer(a)


if __name__ == "__main__":
    main()
