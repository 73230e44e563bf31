"""Benchmark runner: environments x seeds of sac_continuous.py, several at once, each restartable.

    python benchmark/run.py                                    # Ant-v5 and Humanoid-v5, seeds 1-5, 1M steps
    python benchmark/run.py --envs Humanoid-v5 --seeds 1 2 --jobs 2 --device cuda
    python benchmark/run.py --status                           # done / running / pending, steps reached
    python benchmark/run.py --envs Hopper-v5 --total-timesteps 50000 -- --eval-episodes 5

Every run is `python sac_continuous.py --resume auto --run-name <env>__seed<seed> ...` in its own
process, writing to <output-dir>/<env>__seed<seed>/. Running the same command again continues
unfinished runs from their last checkpoint and skips finished ones (a run is finished when its latest
checkpoint's global_step reaches the total). Ctrl-C (or SIGTERM) is forwarded once to every run, which
then writes a checkpoint and exits; a second Ctrl-C stops them at once. Settings per environment come
from benchmark/configs.json; flags after `--` go to sac_continuous.py and override them.

The runner keeps its own files in <output-dir>/_runner/: state.json (targets, outcomes, machines),
logs/<run>.log (each run's output) and stale/ (run directories that never reached a checkpoint).
Exit code: 0 all runs done, 1 a run failed or diverged, 2 bad input, 75 stopped or not finished
(run the same command again to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCRIPT = REPO / "sac_continuous.py"
CONFIGS = HERE / "configs.json"
sys.path.insert(0, str(HERE))
import report  # noqa: E402  (benchmark/report.py: checkpoint and TensorBoard readers, machine info)

# sac_continuous.py's exit codes
EXIT_OK, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_ABORTED = 0, 2, 3, 75, 130
# the runner's own
RUNNER_FAILED, RUNNER_BAD_INPUT, RUNNER_UNFINISHED = 1, 2, 75

DEFAULT_ENVS = ["Ant-v5", "Humanoid-v5"]
DEFAULT_SEEDS = [1, 2, 3, 4, 5]
# flags the runner sets itself; passing them after `--` is refused with the runner option to use
RESERVED = {
    "env-id": "--envs",
    "seed": "--seeds",
    "run-name": "(fixed: <env>__seed<seed>)",
    "output-dir": "--output-dir",
    "resume": "(always auto)",
    "device": "--device",
    "total-timesteps": "--total-timesteps",
    "eval-checkpoint": "(not a training flag)",
}


class BadInput(Exception):
    """A runner argument that cannot be used: printed as one line, exit code 2."""


# ----------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------


def parse_flags(tokens: list[str]) -> list[tuple[str, str | None]]:
    """['--alpha', '0.2', '--no-autotune', '--tau=0.01']
    -> [('alpha', '0.2'), ('no-autotune', None), ('tau', '0.01')]."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise BadInput(f"cannot read the script flags after '--' at '{tok}'; write them as --flag value")
        if "=" in tok:
            name, value = tok[2:].split("=", 1)
            out.append((name, value))
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out.append((tok[2:], tokens[i + 1]))
            i += 2
        else:
            out.append((tok[2:], None))
            i += 1
    return out


def base_name(flag: str) -> str:
    """'no-autotune' and 'autotune' are the same setting."""
    return flag[3:] if flag.startswith("no-") else flag


def config_for(configs: dict, env: str) -> list[tuple[str, str | None]]:
    merged = {**configs.get("common", {}), **configs.get("envs", {}).get(env, {})}
    flags = []
    for key, value in merged.items():
        if isinstance(value, bool):
            flags.append((key if value else f"no-{key}", None))
        else:
            flags.append((key, str(value)))
    return flags


def merge_flags(*layers: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Later layers override earlier ones, flag by flag."""
    merged: dict[str, tuple[str, str | None]] = {}
    for layer in layers:
        for name, value in layer:
            merged[base_name(name)] = (name, value)
    return list(merged.values())


def to_tokens(flags: list[tuple[str, str | None]]) -> list[str]:
    out = []
    for name, value in flags:
        out += [f"--{name}"] if value is None else [f"--{name}", value]
    return out


def check_extras(extras: list[tuple[str, str | None]]) -> None:
    for name, value in extras:
        if base_name(name) in RESERVED:
            raise BadInput(f"--{name} is set by the runner; use {RESERVED[base_name(name)]} instead")
        if base_name(name) == "checkpoint-frequency" and value is not None and value.strip() == "0":
            raise BadInput(
                "--checkpoint-frequency 0 leaves no checkpoint to continue from; the runner needs checkpoints"
            )


def run_name(env: str, seed: int) -> str:
    return f"{env}__seed{seed}"


# ----------------------------------------------------------------------------------------------
# Plan and state
# ----------------------------------------------------------------------------------------------


@dataclass
class Spec:
    env: str
    seed: int
    target: int
    flags: list[tuple[str, str | None]]
    device: str = "auto"

    @property
    def name(self) -> str:
        return run_name(self.env, self.seed)


def load_configs(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read the settings file {path}: {e}") from None


def plan(args, configs: dict, extras: list[tuple[str, str | None]]) -> list[Spec]:
    devices = [d for d in args.device.split(",") if d]
    specs = []
    for env in args.envs:
        flags = config_for(configs, env)
        total = dict(flags).get("total-timesteps")
        target = args.total_timesteps or int(total or 1_000_000)
        flags = [(n, v) for n, v in merge_flags(flags, extras) if base_name(n) != "total-timesteps"]
        for seed in args.seeds:
            specs.append(Spec(env, seed, target, flags))
    for i, spec in enumerate(specs):  # several GPUs: runs are dealt out in turn
        spec.device = devices[i % len(devices)]
    return specs


class State:
    """<output-dir>/_runner/state.json, rewritten atomically after every change."""

    def __init__(self, out: Path):
        self.path = out / report.RUNNER_DIR / "state.json"
        self.data = report.runner_state(out) or {}
        self.data.setdefault("runs", {})
        self.data.setdefault("sessions", [])

    def run(self, name: str) -> dict:
        return self.data["runs"].setdefault(name, {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.path)


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def pid_runs(pid: int | None, name: str) -> bool:
    """Whether process `pid` is alive and is sac_continuous.py working on run `name` (a run started
    by an earlier runner that was killed without stopping its children)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            return False
        return SCRIPT.name.encode() in b" ".join(args) and name.encode() in args
    return True  # no /proc (macOS): trust the pid


def classify(spec: Spec, out: Path, state: State, retry_failed: bool) -> tuple[str, str]:
    """(status, note) before launching: done, diverged, running (elsewhere) or pending."""
    run_dir = out / spec.name
    ckpt = report.checkpoint_step(run_dir)
    info = state.data["runs"].get(spec.name, {})
    if ckpt is not None and ckpt >= spec.target:
        return "done", f"checkpoint at {ckpt:,}"
    if info.get("status") == "running" and pid_runs(info.get("pid"), spec.name):
        return "running", f"already running as pid {info['pid']} (not started by this runner)"
    if info.get("status") == "diverged" and not retry_failed:
        return "diverged", f"{info.get('message', '')} (--retry-failed to try again)"
    return "pending", f"continues from step {ckpt:,}" if ckpt is not None else "starts from step 0"


# ----------------------------------------------------------------------------------------------
# Children
# ----------------------------------------------------------------------------------------------


def child_env(threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def default_threads(jobs: int, given: int | None) -> int | None:
    """CPU threads per run: --threads, else OMP_NUM_THREADS if set, else the cores split over --jobs
    (None with one job: torch's own default)."""
    if given:
        return given
    if "OMP_NUM_THREADS" in os.environ or jobs <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // jobs)


def start(cmd: list[str], log_path: Path, threads: int | None) -> subprocess.Popen:
    """The run in its own session, so that a Ctrl-C on the terminal reaches only the runner, which
    forwards exactly one SIGINT (two would make the run quit without its checkpoint)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n=== {now()} $ {' '.join(cmd)}\n")
        log.flush()
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(threads),
            start_new_session=True,
        )


def last_line(log_path: Path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def outcome(code: int) -> str:
    if code == EXIT_OK:
        return "done"
    if code == EXIT_INTERRUPTED:
        return "interrupted"
    if code == EXIT_BAD_INPUT:
        return "failed"
    if code == EXIT_DIVERGED:
        return "diverged"
    if code == EXIT_ABORTED:
        return "aborted"
    if code < 0:
        return "killed"
    return "failed"


class Stopper:
    """SIGINT/SIGTERM to the runner: forward the signal once to every child (they checkpoint and
    exit 75); a second one is forwarded too (they quit at once). Restores the old handlers on exit."""

    def __init__(self, children: dict):
        self.children = children  # name -> Popen, the live ones
        self.count = 0

    def __enter__(self):
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.old.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        self.count += 1
        if self.count == 1:
            print(
                f"\n{signal.Signals(signum).name}: each running run writes a checkpoint and exits; "
                f"no new runs start (again to stop them at once)",
                file=sys.stderr,
                flush=True,
            )
        for proc in list(self.children.values()):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------


def summary(specs: list[Spec], out: Path, state: State, live: dict[str, subprocess.Popen]) -> str:
    rows = []
    counts: dict[str, int] = {}
    for spec in specs:
        info = state.data["runs"].get(spec.name, {})
        ckpt = report.checkpoint_step(out / spec.name)
        status = info.get("status", "pending")
        note = ""
        if spec.name in live or (status == "running" and pid_runs(info.get("pid"), spec.name)):
            status = "running"
            logged = report.last_logged_step(out / spec.name) if (out / spec.name).is_dir() else 0
            steps = max(logged, ckpt or 0)
            note = f"checkpoint at {ckpt:,}" if ckpt is not None else "no checkpoint yet"
        else:
            steps = ckpt or 0
            if status == "running":  # recorded as running, but the process is gone
                status = "stopped"
            if ckpt is not None and ckpt >= spec.target:
                status = "done"
            elif status == "done":  # done at an earlier, smaller total
                status = "pending"
            elif status in ("failed", "diverged", "killed", "aborted"):
                note = info.get("message", "")
            if status in ("interrupted", "stopped", "aborted", "killed") or (status == "pending" and steps):
                note = (note + "; " if note else "") + "re-run to continue"
        counts[status] = counts.get(status, 0) + 1
        rows.append((spec.name, status, f"{steps:,}", f"{spec.target:,}", note))
    header = ("run", "status", "steps", "of", "note")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(4)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths)) + ("  " + r[4] if r[4] else "")
        for r in [header] + rows
    ]
    lines.append("totals: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def command(spec: Spec, out: Path) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--env-id",
        spec.env,
        "--seed",
        str(spec.seed),
        "--run-name",
        spec.name,
        "--output-dir",
        str(out),
        "--resume",
        "auto",
        "--device",
        spec.device,
        "--total-timesteps",
        str(spec.target),
    ] + to_tokens(spec.flags)


def set_aside(run_dir: Path, out: Path) -> Path:
    """A run directory without a checkpoint cannot be continued; it is moved to _runner/stale/ (never
    deleted), so the restarted run's directory holds only its own events, and the run starts from step 0."""
    dest = out / report.RUNNER_DIR / "stale" / f"{run_dir.name}-{int(time.time())}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), dest)
    return dest


def lock(out: Path):
    """One runner per output directory (fcntl; where it is missing, no lock)."""
    path = out / report.RUNNER_DIR / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass
    except OSError:
        raise BadInput(f"another benchmark/run.py is using {out}; wait for it or stop it first") from None
    return handle


def run_all(args, specs: list[Spec], out: Path) -> int:
    state = State(out)
    if args.status:  # read only
        print(summary(specs, out, state, {}))
        return 0
    _lock = lock(out)  # noqa: F841  (held until this function returns)
    state = State(out)  # again, now that no other runner can be writing it
    for spec in specs:
        state.run(spec.name).update(env=spec.env, seed=spec.seed, target=spec.target)
    state.save()
    queue, skipped = [], []
    for spec in specs:
        status, note = classify(spec, out, state, args.retry_failed)
        if status == "pending":
            queue.append(spec)
        else:
            skipped.append(spec.name)
            print(f"[{spec.name}] skipped: {status}, {note}", flush=True)
    threads = default_threads(args.jobs, args.threads)
    if queue:
        devices = sorted({s.device for s in queue})
        state.data["sessions"].append(
            {
                "started": now(),
                "device": ",".join(devices),
                "jobs": args.jobs,
                "threads": threads,
                "argv": sys.argv[1:],
                "machine": report.machine_info(with_gpu=devices != ["cpu"]),
            }
        )
        state.save()
        print(
            f"{len(queue)} run(s) to go, {args.jobs} at a time"
            + (f", {threads} CPU thread(s) each" if threads else "")
            + f"; logs in {out / report.RUNNER_DIR / 'logs'}",
            flush=True,
        )

    live: dict[str, subprocess.Popen] = {}
    started_at: dict[str, float] = {}
    next_summary = time.time() + args.summary_every if args.summary_every > 0 else float("inf")
    with Stopper(live) as stopper:
        while queue or live:
            for name, proc in list(live.items()):
                code = proc.poll()
                if code is None:
                    continue
                del live[name]
                finish(name, code, out, state, time.time() - started_at[name])
            if not stopper.count:
                while queue and len(live) < args.jobs:
                    spec = queue.pop(0)
                    live[spec.name] = launch(spec, out, state, threads)
                    started_at[spec.name] = time.time()
            elif queue:
                for spec in queue:
                    print(f"[{spec.name}] not started (stopping)", flush=True)
                queue.clear()
            if not live:
                break
            if time.time() >= next_summary:
                print(summary(specs, out, state, live), flush=True)
                next_summary = time.time() + args.summary_every
            time.sleep(0.2)
    print(summary(specs, out, state, {}), flush=True)
    if skipped:
        print(f"skipped {len(skipped)} run(s): {', '.join(skipped)}", flush=True)
    statuses = []
    for spec in specs:
        ckpt = report.checkpoint_step(out / spec.name)
        statuses.append(
            "done" if ckpt is not None and ckpt >= spec.target else state.run(spec.name).get("status", "pending")
        )
    if any(s in ("failed", "diverged") for s in statuses):
        return RUNNER_FAILED
    return 0 if all(s == "done" for s in statuses) else RUNNER_UNFINISHED


def launch(spec: Spec, out: Path, state: State, threads: int | None) -> subprocess.Popen:
    run_dir = out / spec.name
    ckpt = report.checkpoint_step(run_dir)
    if ckpt is None and run_dir.is_dir() and any(run_dir.iterdir()):
        dest = set_aside(run_dir, out)
        print(
            f"[{spec.name}] had no checkpoint (stopped before its first one): moved to {dest}; starting over",
            flush=True,
        )
    log_path = out / report.RUNNER_DIR / "logs" / f"{spec.name}.log"
    proc = start(command(spec, out), log_path, threads)
    info = state.run(spec.name)
    info.update(
        status="running",
        pid=proc.pid,
        device=spec.device,
        started=now(),
        exit_code=None,
        message="",
        launches=info.get("launches", 0) + 1,
        log=str(log_path.relative_to(out)),
    )
    state.save()
    where = f"from step {ckpt:,}" if ckpt is not None else "from step 0"
    print(f"[{spec.name}] started {where} (pid {proc.pid}, device {spec.device})", flush=True)
    return proc


def finish(name: str, code: int, out: Path, state: State, seconds: float) -> None:
    info = state.run(name)
    status = outcome(code)
    ckpt = report.checkpoint_step(out / name)
    target = info.get("target")
    if status == "done" and (ckpt is None or (target and ckpt < target)):
        status = "incomplete"  # exit 0 without a final checkpoint at the target
    log_path = out / info.get("log", "")
    message = "" if status == "done" else f"exit {code}: {last_line(log_path)}"
    info.update(status=status, exit_code=code, pid=None, checkpoint_step=ckpt, ended=now(), message=message)
    state.save()
    steps = f"step {ckpt:,}" if ckpt is not None else "no checkpoint"
    word, hint = {
        "done": ("done", ""),
        "interrupted": ("interrupted", "checkpoint written, re-run to continue"),
        "diverged": ("DIVERGED (exit 3)", last_line(log_path)),
        "failed": (f"FAILED (exit {code})", last_line(log_path)),
        "aborted": ("aborted (exit 130)", "re-run continues from the last checkpoint"),
        "killed": (f"killed by signal {-code}", "re-run continues from the last checkpoint"),
        "incomplete": ("exited 0 before its target", ""),
    }[status]
    print(
        f"[{name}] {word} at {steps} after {report.fmt_duration(seconds)}" + (f"; {hint}" if hint else ""), flush=True
    )


# ----------------------------------------------------------------------------------------------
# Throughput probe: total SPS of k concurrent runs on one device
# ----------------------------------------------------------------------------------------------


def training_sps(run_dir: Path) -> float | None:
    """Steps per second after learning started, from the wall times of the first and last
    charts/SPS points (logged with the losses), so start-up and the final evaluation are left out."""
    acc = report.accumulator(run_dir)
    if report.SPS_TAG not in acc.Tags()["scalars"]:
        return None
    events = acc.Scalars(report.SPS_TAG)
    if len(events) < 2 or events[-1].wall_time <= events[0].wall_time:
        return None
    return (events[-1].step - events[0].step) / (events[-1].wall_time - events[0].wall_time)


def throughput_probe(args, configs: dict, extras: list[tuple[str, str | None]]) -> int:
    env = args.envs[0]
    levels = sorted({int(k) for k in args.throughput_probe.split(",") if k.strip()})
    if not levels or min(levels) < 1:
        raise BadInput(f"--throughput-probe takes concurrency levels such as 1,2,4,8, got '{args.throughput_probe}'")
    base = merge_flags(
        config_for(configs, env),
        [("learning-starts", str(args.probe_learning_starts)), ("eval-frequency", "0"), ("eval-episodes", "1")],
        [(n, v) for n, v in extras if base_name(n) != "checkpoint-frequency"],
    )
    learning_starts = int(dict((base_name(n), v) for n, v in base)["learning-starts"])
    target = learning_starts + args.probe_steps
    flags = [(n, v) for n, v in base if base_name(n) != "total-timesteps"] + [("checkpoint-frequency", "0")]
    print(
        f"throughput probe: {env}, device {args.device}, {args.probe_steps} training steps per run after "
        f"{learning_starts} random ones; k runs at once",
        flush=True,
    )
    results = []
    live: dict[str, subprocess.Popen] = {}
    with Stopper(live) as stopper, tempfile.TemporaryDirectory(prefix="sac-probe-") as tmp:
        for k in levels:
            if stopper.count:
                break
            out = Path(tmp) / f"k{k}"
            # the cores shared out for every k (unless --threads or OMP_NUM_THREADS says otherwise)
            threads = args.threads or (None if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // k))
            t0 = time.time()
            specs = [Spec(env, seed, target, flags, args.device.split(",")[0]) for seed in range(1, k + 1)]
            for spec in specs:
                live[spec.name] = start(command(spec, out), out / "logs" / f"{spec.name}.log", threads)
            codes = {name: proc.wait() for name, proc in list(live.items())}
            live.clear()
            wall = time.time() - t0
            bad = {n: c for n, c in codes.items() if c != 0}
            if bad:
                for name, code in bad.items():
                    print(f"  k={k}: {name} exit {code}: {last_line(out / 'logs' / f'{name}.log')}", file=sys.stderr)
                return RUNNER_UNFINISHED if stopper.count else RUNNER_FAILED
            per_run = [training_sps(out / s.name) for s in specs]
            if any(v is None for v in per_run):
                print(f"  k={k}: too few charts/SPS points to time; raise --probe-steps", file=sys.stderr)
                return RUNNER_FAILED
            results.append(
                {"k": k, "per_run_sps": per_run, "total_sps": sum(per_run), "wall_s": wall, "threads": threads}
            )
            print(
                f"  k={k}: total {sum(per_run):.0f} SPS ({', '.join(f'{v:.0f}' for v in per_run)}), wall {wall:.0f}s",
                flush=True,
            )
    if not results:
        return RUNNER_UNFINISHED
    one = results[0]["total_sps"]
    print(f"\n| runs at once | total SPS | per run (median) | vs k={results[0]['k']} | CPU threads per run |")
    print("|---|---|---|---|---|")
    for r in results:
        median = sorted(r["per_run_sps"])[len(r["per_run_sps"]) // 2]
        print(
            f"| {r['k']} | {r['total_sps']:.0f} | {median:.0f} | {r['total_sps'] / one:.2f}x | "
            f"{r['threads'] or os.environ.get('OMP_NUM_THREADS', 'default')} |"
        )
    m = report.machine_info(with_gpu=args.device != "cpu")
    print(
        f"\n{env}, device {args.device}, {m['cpu']} ({m['cpu_count']} cores), GPU {m['gpu']}, torch {m['torch']}. "
        "SPS after learning starts, from the wall times of each run's first and last charts/SPS point."
    )
    if args.probe_json:
        Path(args.probe_json).write_text(
            json.dumps(
                {"env": env, "device": args.device, "machine": m, "probe_steps": args.probe_steps, "results": results},
                indent=1,
            )
            + "\n"
        )
    return RUNNER_UNFINISHED if stopper.count else 0


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str | None]]]:
    if "--" in argv:
        i = argv.index("--")
        argv, extra_tokens = argv[:i], argv[i + 1 :]
    else:
        extra_tokens = []
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Flags after `--` go to sac_continuous.py (see its --help).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--envs", nargs="+", default=DEFAULT_ENVS, help="environments (default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=DEFAULT_SEEDS, help="seeds (default: %(default)s)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once (default 1; the best value for one GPU is not measured yet, see --throughput-probe)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="passed to the script: auto, cpu, cuda, cuda:1, mps; a comma list (cuda:0,cuda:1) deals runs out in turn",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per run (OMP_NUM_THREADS); default: the cores divided by --jobs when --jobs > 1",
    )
    p.add_argument("--output-dir", default="runs/benchmark", help="where the run directories go (default: %(default)s)")
    p.add_argument(
        "--total-timesteps",
        type=int,
        default=None,
        help="steps per run instead of configs.json's; a larger value extends finished runs",
    )
    p.add_argument("--configs", default=str(CONFIGS), help="per-environment settings (default: benchmark/configs.json)")
    p.add_argument("--status", action="store_true", help="print which runs are done / running / pending and exit")
    p.add_argument("--retry-failed", action="store_true", help="start diverged runs again (from their last checkpoint)")
    p.add_argument("--summary-every", type=float, default=300, help="seconds between progress summaries (0: none)")
    p.add_argument(
        "--throughput-probe",
        default=None,
        metavar="K,K,...",
        help="instead of the benchmark: run K short runs of the first --envs at once for each K and print total SPS",
    )
    p.add_argument("--probe-steps", type=int, default=5000, help="training steps per probe run after learning starts")
    p.add_argument("--probe-learning-starts", type=int, default=1000, help="random steps before learning in probe runs")
    p.add_argument("--probe-json", default=None, help="also write the probe's numbers to this JSON file")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be 1 or more")
    if args.total_timesteps is not None and args.total_timesteps < 1:
        p.error("--total-timesteps must be positive")
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.envs)) != len(args.envs):
        p.error("--envs and --seeds must not repeat")
    extras = parse_flags(extra_tokens)
    check_extras(extras)
    return args, extras


def main(argv: list[str] | None = None) -> int:
    try:
        args, extras = parse(sys.argv[1:] if argv is None else list(argv))
        configs = load_configs(Path(args.configs))
        for env in args.envs:
            if env not in configs.get("envs", {}):
                print(
                    f"note: {env} has no entry in {Path(args.configs).name}; it gets the common settings and the "
                    f"script's defaults",
                    file=sys.stderr,
                )
        if args.throughput_probe:
            return throughput_probe(args, configs, extras)
        out = Path(args.output_dir).resolve()
        return run_all(args, plan(args, configs, extras), out)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return RUNNER_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
