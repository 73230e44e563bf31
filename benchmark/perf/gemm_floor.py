"""How close one SAC update is to its matrix-multiplication floor on this CPU.

    OMP_NUM_THREADS=1 python benchmark/perf/gemm_floor.py --env-id Humanoid-v5 --threads 1

Builds the script's agent with the environment's sizes and a random batch of 256, records every
matrix multiplication (aten mm/addmm) that one SAC.update runs, with its shapes and memory layout,
and times, in CPU time (time.process_time, so a busy machine's waiting is not counted):

- the whole update (SAC.update on a batch already in memory);
- the same matmuls alone, replayed in the same order on fresh tensors of the same layouts: the
  floor that no change to the rest of the update can go below;
- each matmul shape alone and repeated (operands hot in cache), and a 1024^3 matmul: the machine's
  matmul peak for these shapes.

GFLOP counts 2*m*k*n per matmul. Only numbers are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import sac_continuous as sac  # noqa: E402

MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)


class RecordMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            self.calls.append((func, [(a.shape, a.stride()) for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def cpu_time(fn, n: int, repeats: int = 7) -> tuple[float, float]:
    """(best, median) CPU seconds per call over `repeats` runs of n calls, after a short warm-up."""
    for _ in range(max(n // 10, 2)):
        fn()
    runs = []
    for _ in range(repeats):
        t = time.process_time()
        for _ in range(n):
            fn()
        runs.append((time.process_time() - t) / n)
    return min(runs), statistics.median(runs)


def operands(layout) -> list[torch.Tensor]:
    return [torch.empty_strided(shape, stride).normal_() for shape, stride in layout]


def flops(func, tensors) -> int:
    a, b = tensors[-2], tensors[-1]  # addmm(bias, a, b) or mm(a, b)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


def describe(func, tensors) -> str:
    a, b = tensors[-2], tensors[-1]
    t = lambda x: "^T" if x.stride(0) == 1 and x.shape[1] > 1 else ""  # noqa: E731  (stored transposed)
    return f"{func.__name__.split('.')[0]:5s} {tuple(a.shape)}{t(a)} x {tuple(b.shape)}{t(b)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env-id", default="Humanoid-v5")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--n", type=int, default=40, help="updates per timing run")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    env = sac.make_env(a.env_id)
    obs_dim, low, high = env.observation_space.shape[0], env.action_space.low, env.action_space.high
    env.close()
    torch.manual_seed(0)
    agent = sac.SAC(obs_dim, low, high, sac.Args(env_id=a.env_id, batch_size=a.batch_size), torch.device("cpu"))
    g = np.random.default_rng(0)
    b = a.batch_size
    batch = (
        g.standard_normal((b, obs_dim), dtype=np.float32),
        g.uniform(low, high, (b, low.shape[0])).astype(np.float32),
        g.standard_normal(b, dtype=np.float32),
        g.random(b) < 0.01,
        g.standard_normal((b, obs_dim), dtype=np.float32),
    )
    for _ in range(5):
        agent.update(batch)
    recorder = RecordMatmuls()
    with recorder:
        agent.update(batch)
    replay = [(func, operands(layout)) for func, layout in recorder.calls]
    total = sum(flops(f, ts) for f, ts in replay)

    def run_matmuls():
        for func, ts in replay:
            func(*ts)

    upd = cpu_time(lambda: agent.update(batch), a.n)
    mm = cpu_time(run_matmuls, a.n)
    print(f"{a.env_id} (obs {obs_dim}, act {low.shape[0]}), batch {b}, {a.threads} torch threads; CPU time per update")
    print(f"  matmuls per update: {len(replay)}, {total / 1e9:.3f} GFLOP")
    print(f"  whole SAC.update:        best {upd[0] * 1e3:6.2f} ms  median {upd[1] * 1e3:6.2f} ms")
    print(
        f"  its matmuls alone:       best {mm[0] * 1e3:6.2f} ms  median {mm[1] * 1e3:6.2f} ms  "
        f"({total / mm[0] / 1e9:.1f} GFLOP/s)"
    )
    print(
        f"  everything else:         {(upd[0] - mm[0]) * 1e3:6.2f} ms  "
        f"({100 * (upd[0] - mm[0]) / upd[0]:.0f}% of the update)"
    )

    by_shape = defaultdict(lambda: [0.0, 0, 0])
    for func, ts in replay:
        t = cpu_time(lambda: func(*ts), 200, 3)[0]
        row = by_shape[describe(func, ts)]
        row[0], row[1], row[2] = row[0] + t, row[1] + flops(func, ts), row[2] + 1
    hot = sum(r[0] for r in by_shape.values())
    print(
        f"  the same matmuls one shape at a time, operands hot in cache: {hot * 1e3:.2f} ms "
        f"({total / hot / 1e9:.1f} GFLOP/s)"
    )
    for name, (t, fl, count) in sorted(by_shape.items(), key=lambda kv: -kv[1][0]):
        print(f"    {name:40s} x{count:<2d} {t * 1e3:6.3f} ms  {fl / t / 1e9:5.1f} GFLOP/s")
    x, w = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t = cpu_time(lambda: torch.mm(x, w), 10, 5)[0]
    print(f"  reference: mm 1024x1024x1024 {t * 1e3:.1f} ms, {2 * 1024**3 / t / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
