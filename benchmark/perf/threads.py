"""How fast does a run train when other processes keep the CPUs busy, per thread setting? Prints numbers only.

    python benchmark/perf/threads.py [--envs Pendulum-v1 Humanoid-v5] [--loads 0 1 2] [--seconds 30] [--baseline F]

For each environment, load (that many `python -c 'while True: pass'` processes, started and stopped by pid) and thread
setting, runs sac_continuous.py until `--seconds` of training have passed, stops it with SIGTERM and takes steps/s after
learning starts from the wall times of its first and last loss points in TensorBoard. Before each run it waits (up to
`--settle` s) until the 1-minute load average is within 0.5 of the load, so that a run starts under a steady load: the
script's default reads that average. Take it on an otherwise idle machine: the loads are the only other work.
--baseline adds a column: another version of the script (e.g. `git show REV:sac_continuous.py > F`) with its default.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[2]
# name -> (extra flags, environment variables); the script's own default is "default"
SETTINGS = {
    "torch default": (["--num-threads", str(os.cpu_count())], {}),
    "one thread": (["--num-threads", "1"], {}),
    "passive wait": (["--num-threads", str(os.cpu_count())], {"OMP_WAIT_POLICY": "PASSIVE"}),
    "spin 10k": (["--num-threads", str(os.cpu_count())], {"GOMP_SPINCOUNT": "10000"}),
    "spin 1k": (["--num-threads", str(os.cpu_count())], {"GOMP_SPINCOUNT": "1000"}),
    "default": ([], {}),
}


def train_rate(env_id: str, flags: list, env: dict, seconds: float, out: Path, script: Path) -> float:
    """Steps/s after learning starts of one run, stopped after `seconds` of training."""
    learning_starts = 1000 if "Pendulum" not in env_id else 500
    cmd = [sys.executable, str(script), "--env-id", env_id, "--total-timesteps", "10000000"]
    cmd += ["--learning-starts", str(learning_starts), "--eval-frequency", "0", "--checkpoint-frequency", "0"]
    cmd += ["--log-frequency", "50", "--output-dir", str(out), "--run-name", "r", *flags]
    unset = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_CBWR")  # the script chooses
    clean = {k: v for k, v in os.environ.items() if k not in unset}
    proc = subprocess.Popen(cmd, env={**clean, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, started = time.time() + seconds + 300, None
    while proc.poll() is None and time.time() < deadline:  # training starts when the first loss point is written
        if started is None and any(out.glob("r/events.*")) and loss_points(out / "r"):
            started = time.time()
        if started and time.time() - started > seconds:
            break
        time.sleep(1)
    proc.send_signal(signal.SIGTERM)  # the run checkpoints, which flushes its events
    _, err = proc.communicate(timeout=600)
    points = loss_points(out / "r")
    if proc.returncode != 75 or len(points) < 2:
        raise SystemExit(f"{env_id} {flags} {env}: exit {proc.returncode}, {len(points)} loss points\n{err[-2000:]}")
    (first_step, first_time), (last_step, last_time) = points[0], points[-1]
    return (last_step - first_step) / (last_time - first_time)


def loss_points(run_dir: Path) -> list:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    return [(e.step, e.wall_time) for e in events.Scalars("losses/qf_loss")] if "losses/qf_loss" in tags else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "Humanoid-v5"])
    parser.add_argument("--loads", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=90.0)
    parser.add_argument("--baseline", type=Path, help="another sac_continuous.py, run with its default setting")
    args = parser.parse_args()
    scripts = {name: ROOT / "sac_continuous.py" for name in args.settings}
    if args.baseline:
        scripts["baseline default"] = args.baseline.resolve()
    print(
        f"{os.cpu_count()} CPUs; steps/s after learning starts, {args.seconds:.0f} s of training per run (x: best/this)"
    )
    print("| env | busy processes | " + " | ".join(scripts) + " |")
    print("|---|---|" + "---|" * len(scripts))
    for env_id in args.envs:
        for load in args.loads:
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
            try:
                rates = {}
                for name, script in scripts.items():
                    flags, env = SETTINGS.get(name, SETTINGS["default"])
                    deadline = time.time() + args.settle
                    while abs(os.getloadavg()[0] - load) > 0.5 and time.time() < deadline:
                        time.sleep(2)
                    with tempfile.TemporaryDirectory() as tmp:
                        rates[name] = train_rate(env_id, flags, env, args.seconds, Path(tmp), script)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            best = max(rates.values())
            cells = [f"{rate:.1f} ({best / rate:.2f}x)" for rate in rates.values()]
            print(f"| {env_id} | {load} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
