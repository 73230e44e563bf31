"""Replay buffer save and load: this script's checkpoint layout vs the design notebook's.

    python benchmark/perf/buffer_io.py                       # a full 1M-transition Humanoid-v5 buffer
    python benchmark/perf/buffer_io.py --size 100000 --dir /mnt/scratch

Builds a full sac_continuous.ReplayBuffer shaped like Humanoid-v5's (the sizes come from
gym.make(--env-id)), fills it directly with random float32 data (no env steps) and marks every
slot valid, as a ring that has wrapped around. Then it times:

- ReplayBuffer.save: the five .npy files of a checkpoint's buffer/, each written and fsynced. The
  directory is a temporary one inside --dir (default: runs/, where training writes its checkpoints), so
  the numbers are for that disk. It is removed at the end.
- ReplayBuffer.load into a fresh buffer, twice: first with the saved files dropped from the page
  cache (posix_fadvise DONTNEED on those files only), so they are read from the disk; then again with
  them cached. The loaded buffer is checked against the original.
- The design notebook's layout, obs and next_obs as separate arrays, in one np.savez_compressed file
  (fields obs, next_obs, actions, rewards, dones, all float32), on the first --notebook-sample
  transitions. Its times and size are scaled linearly to --size and labelled EXTRAPOLATED. Random
  floats compress badly, real observations (Humanoid's are partly zeros) better, so its size is an
  upper bound. Its uncompressed size is exact.

Only numbers are printed. Nothing is asserted about them: they are what this machine and disk did this time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import sac_continuous as sac  # noqa: E402

GB = 1e9


def files_size(paths: list[Path]) -> tuple[int, int]:
    """(bytes, bytes allocated on disk) of some files."""
    stats = [p.stat() for p in paths]
    return sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def evict(paths: list[Path]) -> None:
    """Drop these files' pages from the page cache (they are fsynced, hence clean), so the next read
    goes to the disk. Touches nothing else on the machine."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def fill(rb: sac.ReplayBuffer, seed: int) -> None:
    """Random float32 data in every slot, every slot valid, the ring wrapped around once."""
    rng = np.random.default_rng(seed)
    rng.random(dtype=np.float32, out=rb.obs.reshape(-1, rb.obs.shape[-1]))
    rng.random(dtype=np.float32, out=rb.actions.reshape(-1, rb.actions.shape[-1]))
    rng.random(dtype=np.float32, out=rb.rewards.reshape(-1))
    rb.terminations[:] = rng.random(rb.terminations.shape) < 0.001
    rb.valid[:] = True
    rb.written[:] = rb.capacity + 1
    rb.pos[:] = 1


def seconds(t0: float) -> float:
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-id", default="Humanoid-v5", help="the env whose observation/action sizes are used")
    parser.add_argument("--size", type=int, default=1_000_000, help="transitions (buffer slots)")
    parser.add_argument("--dir", default="runs", help="a directory on the disk to measure (created if missing)")
    parser.add_argument(
        "--notebook-sample",
        type=int,
        default=100_000,
        help="transitions written in the notebook's layout, then extrapolated to --size",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    env = sac.make_env(args.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    n = args.size
    sample = min(args.notebook_sample, n - 1)

    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".buffer_io_", dir=base))
    try:
        print(
            f"{args.env_id}: obs_dim {obs_dim}, act_dim {act_dim}; a full buffer of {n:,} transitions, "
            f"random float32 data"
        )
        print(f"directory: {work.resolve()}")

        rb = sac.ReplayBuffer(n, 1, obs_dim, act_dim, seed=args.seed)
        fill(rb, args.seed)
        in_memory = sum(getattr(rb, name).nbytes for name in sac.ReplayBuffer.ARRAYS)

        ours = work / "buffer"
        ours.mkdir()
        t0 = time.perf_counter()
        meta = rb.save(ours)
        t_save = seconds(t0)
        files = sorted(ours.iterdir())
        size, allocated = files_size(files)

        evict(files)
        fresh = sac.ReplayBuffer(n, 1, obs_dim, act_dim, seed=args.seed + 1)
        t0 = time.perf_counter()
        fresh.load(ours, meta)
        t_load_cold = seconds(t0)
        same = all(np.array_equal(getattr(rb, name), getattr(fresh, name)) for name in sac.ReplayBuffer.ARRAYS)
        del fresh
        fresh = sac.ReplayBuffer(n, 1, obs_dim, act_dim, seed=args.seed + 1)
        t0 = time.perf_counter()
        fresh.load(ours, meta)
        t_load_warm = seconds(t0)
        del fresh

        print()
        print(
            "this script's layout: ReplayBuffer.save -> buffer/{obs,actions,rewards,terminations,valid}.npy, "
            "each fsynced"
        )
        print(f"  in memory                   {in_memory:>15,} bytes ({in_memory / GB:.3f} GB)")
        print(
            f"  on disk                     {size:>15,} bytes ({size / GB:.3f} GB; {allocated / GB:.3f} GB allocated)"
        )
        for f in files:
            print(f"    {f.name:<24}  {f.stat().st_size:>15,} bytes")
        print(f"  save (write + fsync)        {t_save:8.2f} s   ({size / GB / t_save:.2f} GB/s)")
        print(f"  load, files not in cache    {t_load_cold:8.2f} s   ({size / GB / t_load_cold:.2f} GB/s)")
        print(f"  load, files in page cache   {t_load_warm:8.2f} s   ({size / GB / t_load_warm:.2f} GB/s)")
        print(f"  loaded buffer equals the saved one: {same}")

        # --- the design notebook's layout on a sample: obs and next_obs stored separately, zip-deflated ---
        slots = np.arange(sample)
        nb = {
            "obs": rb.obs[0, slots],
            "next_obs": rb.obs[0, slots + 1],
            "actions": rb.actions[0, slots],
            "rewards": rb.rewards[0, slots],
            "dones": rb.terminations[0, slots].astype(np.float32),
        }
        del rb
        nb_raw_full = (2 * obs_dim + act_dim + 2) * 4 * n  # exact: float32 obs, next_obs, actions, reward, done
        path = work / "replay_buffer.npz"
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            np.savez_compressed(f, **nb)
            f.flush()
            os.fsync(f.fileno())
        t_nb_save = seconds(t0)
        nb_size, _ = files_size([path])
        evict([path])
        t0 = time.perf_counter()
        with np.load(path) as z:
            loaded = {k: z[k] for k in z.files}
        t_nb_load = seconds(t0)
        assert all(np.array_equal(loaded[k], nb[k]) for k in nb)  # a correctness check, not a timing one
        scale = n / sample

        print()
        print("design notebook layout: obs + next_obs + actions + rewards + dones (float32), np.savez_compressed")
        print(
            f"  measured on {sample:,} transitions: {nb_size:,} bytes, save {t_nb_save:.2f} s, "
            f"load {t_nb_load:.2f} s (file not in cache)"
        )
        print(f"  uncompressed at {n:,} transitions (exact):  {nb_raw_full:>15,} bytes ({nb_raw_full / GB:.3f} GB)")
        print(f"  EXTRAPOLATED x{scale:g} to {n:,} transitions:")
        print(f"    on disk                   {nb_size * scale:>15,.0f} bytes ({nb_size * scale / GB:.3f} GB)")
        print(f"    save (compress + fsync)   {t_nb_save * scale:8.2f} s")
        print(f"    load (decompress)         {t_nb_load * scale:8.2f} s")
        print()
        print(
            f"notebook (extrapolated) / this script:  size x{nb_size * scale / size:.2f}, "
            f"save time x{t_nb_save * scale / t_save:.2f}, load time x{t_nb_load * scale / t_load_cold:.2f} "
            f"(vs load not in cache)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
