"""Benchmark runner: environments x seeds of sac_continuous.py, here (several at once) or as a Slurm job array.

    python benchmark/run.py                                    # Ant-v5 and Humanoid-v5, seeds 1-5, 1M steps
    python benchmark/run.py --envs Humanoid-v5 --seeds 1 2 --jobs 2 --device cuda
    python benchmark/run.py --slurm --partition gpu --gpus-per-task 1 --time 12:00:00   # a task per run
    python benchmark/run.py --status                           # done / running / pending, steps reached
    python benchmark/run.py --envs Hopper-v5 --total-timesteps 50000 -- --eval-episodes 5

Every run is `python sac_continuous.py --resume auto --run-name <env>__seed<seed> ...`, which continues from
its last checkpoint (or starts over if it had none): the same command again continues unfinished runs and
skips finished ones. Ctrl-C is forwarded once to every local run (it checkpoints and exits 75); on Slurm
(benchmark/slurm.py) a task checkpoints and requeues itself before its time limit. Settings come from
benchmark/configs.json; flags after `--` go to the script. Exit code: 0 all done (or submitted), 1 a run
failed or diverged, 2 bad input, 75 stopped or unfinished.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCRIPT = REPO / "sac_continuous.py"
CONFIGS = HERE / "configs.json"
sys.path.insert(0, str(HERE))
import report  # noqa: E402  (benchmark/report.py: checkpoint and TensorBoard readers, machine info)
import slurm  # noqa: E402  (benchmark/slurm.py: the job array)

RUNNER_FAILED, RUNNER_BAD_INPUT, RUNNER_UNFINISHED = 1, 2, 75
OUTCOMES = {0: "done", 2: "failed", 3: "diverged", 75: "interrupted", 130: "aborted"}  # sac_continuous.py's codes
DEFAULT_ENVS = ["Ant-v5", "Humanoid-v5"]
DEFAULT_SEEDS = [1, 2, 3, 4, 5]
# flags the runner sets itself; passing them after `--` is refused with the runner option to use
RESERVED = {"env-id": "--envs", "seed": "--seeds", "run-name": "(fixed: <env>__seed<seed>)"}
RESERVED |= {"output-dir": "--output-dir", "resume": "(always auto)", "device": "--device"}
RESERVED |= {"total-timesteps": "--total-timesteps", "eval-checkpoint": "(not a training flag)"}


class BadInput(Exception):
    """A runner argument that cannot be used: printed as one line, exit code 2."""


def parse_flags(tokens: list[str]) -> list[tuple[str, str | None]]:
    """--alpha 0.2 --no-autotune --tau=0.01 -> [('alpha', '0.2'), ('no-autotune', None), ('tau', '0.01')]."""
    out: list[tuple[str, str | None]] = []
    for i, tok in enumerate(tokens):
        if tok.startswith("--") and tok != "--":
            out.append(tuple(tok[2:].split("=", 1)) if "=" in tok else (tok[2:], None))
        elif i > 0 and tokens[i - 1].startswith("--") and "=" not in tokens[i - 1]:  # the value of that flag
            out[-1] = (out[-1][0], tok)
        else:
            raise BadInput(f"cannot read the script flags after '--' at '{tok}'; write them as --flag value")
    return out


def base_name(flag: str) -> str:
    """'no-autotune' and 'autotune' are the same setting."""
    return flag.removeprefix("no-")


def config_for(configs: dict, env: str) -> list[tuple[str, str | None]]:
    merged = {**configs.get("common", {}), **configs.get("envs", {}).get(env, {})}
    return [((k if v else f"no-{k}"), None) if isinstance(v, bool) else (k, str(v)) for k, v in merged.items()]


def merge_flags(*layers: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Later layers override earlier ones, flag by flag."""
    return list({base_name(name): (name, value) for layer in layers for name, value in layer}.values())


def check_extras(extras: list[tuple[str, str | None]]) -> None:
    for name, value in extras:
        if base_name(name) in RESERVED:
            raise BadInput(f"--{name} is set by the runner; use {RESERVED[base_name(name)]} instead")
        if base_name(name) == "checkpoint-frequency" and value is not None and value.strip() == "0":
            raise BadInput("--checkpoint-frequency 0 leaves no checkpoint to continue from; the runner needs them")


@dataclass
class Spec:
    env: str
    seed: int
    target: int
    flags: list[tuple[str, str | None]]
    device: str = "auto"

    @property
    def name(self) -> str:
        return f"{self.env}__seed{self.seed}"


def plan(args, configs: dict, extras: list[tuple[str, str | None]]) -> list[Spec]:
    devices = [d for d in args.device.split(",") if d]
    specs = []
    for env in args.envs:
        flags = config_for(configs, env)
        target = args.total_timesteps or int(dict(flags).get("total-timesteps") or 1_000_000)
        flags = [(n, v) for n, v in merge_flags(flags, extras) if base_name(n) != "total-timesteps"]
        specs += [Spec(env, seed, target, flags) for seed in args.seeds]
    return [replace(s, device=devices[i % len(devices)]) for i, s in enumerate(specs)]  # several GPUs: in turn


def command(spec: Spec, out: Path) -> list[str]:
    """The one idempotent command of a run, the same here and on Slurm."""
    cmd = [sys.executable, str(SCRIPT), "--env-id", spec.env, "--seed", str(spec.seed), "--run-name", spec.name]
    cmd += ["--output-dir", str(out), "--resume", "auto", "--device", spec.device]
    cmd += ["--total-timesteps", str(spec.target)]
    return cmd + [tok for name, value in spec.flags for tok in [f"--{name}"] + ([] if value is None else [value])]


def save_state(out: Path, state: dict) -> None:
    path = out / report.RUNNER_DIR / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(state, indent=1) + "\n")
    os.replace(path.with_suffix(".tmp"), path)


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def outcome(code: int) -> str:
    return OUTCOMES.get(code, "killed" if code < 0 or code > 128 else "failed")


def alive(pid: int | None) -> bool:
    with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
        return os.kill(pid, 0) is None
    return False


def status_of(spec: Spec, out: Path, state: dict, queue: dict[str, str], live=()) -> tuple[str, int, str]:
    """(status, steps reached, note) of a run, local or on Slurm; `queue` is slurm.queued()."""
    ckpt = report.checkpoint_step(out / spec.name)
    info, note = state["runs"].get(spec.name, {}), ""
    job = info.get("slurm")
    if ckpt is not None and ckpt >= spec.target:
        return "done", ckpt, ""
    if job in queue:
        status, note = queue[job].lower(), f"Slurm job {job}"
    elif job:
        code = slurm.last_exit(out, spec.name)
        status = "pending" if code is None else outcome(code)
        note = f"Slurm job {job}" + ("" if code is None else f", exit {code}")
    elif spec.name in live or (info.get("status") == "running" and alive(state.get("runner_pid"))):
        status = "running"
    else:  # a recorded "running" whose runner is gone was stopped
        status, note = info.get("status", "pending").replace("running", "stopped"), info.get("message", "")
    if status in ("running", "requeued", "completing") and (out / spec.name).is_dir():
        steps = max(ckpt or 0, report.last_logged_step(out / spec.name))
        return status, steps, note or ("no checkpoint yet" if ckpt is None else f"checkpoint at {ckpt:,}")
    status = "pending" if status == "done" else status  # done at an earlier, smaller total
    unfinished = status in ("interrupted", "stopped", "aborted", "killed") or (status == "pending" and ckpt)
    if unfinished and job not in queue:  # (Slurm continues a queued one itself)
        note = (note + "; " if note else "") + "re-run to continue"
    return status, ckpt or 0, note


def summary(specs: list[Spec], out: Path, state: dict, live=()) -> str:
    queue = slurm.queued(state["runs"])
    rows = [("run", "status", "steps", "of", "note")]
    for spec in specs:
        status, steps, note = status_of(spec, out, state, queue, live)
        rows.append((spec.name, status, f"{steps:,}", f"{spec.target:,}", note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + ("  " + r[4] if r[4] else "") for r in rows]
    counts = {s: [r[1] for r in rows[1:]].count(s) for s in sorted({r[1] for r in rows[1:]})}
    return "\n".join(lines + ["totals: " + ", ".join(f"{n} {s}" for s, n in counts.items())])


def to_start(args, specs: list[Spec], out: Path, state: dict) -> list[Spec]:
    """The runs to start: not done, not in Slurm's queue, not diverged (unless --retry-failed)."""
    queue, todo = slurm.queued(state["runs"]), []
    for spec in specs:
        status, steps, note = status_of(spec, out, state, queue)
        in_queue = state["runs"].get(spec.name, {}).get("slurm") in queue
        if status == "done" or in_queue or (status == "diverged" and not args.retry_failed):
            hint = " (--retry-failed to try again)" if status == "diverged" else ""
            print(f"[{spec.name}] skipped: {status}, {note or f'step {steps:,}'}{hint}", flush=True)
        else:
            todo.append(spec)
    return todo


@contextlib.contextmanager
def forwarding(children: dict[str, subprocess.Popen]):
    """SIGINT/SIGTERM to the runner go to every child: the first (they checkpoint and exit 75), and a second
    (they quit at once). Yields the list of signals received; the old handlers come back afterwards."""
    got = []

    def handle(signum, frame):
        got.append(signum)
        what = "each run writes a checkpoint and exits; no new runs start (again to stop them at once)"
        print(f"\n{signal.Signals(signum).name}: {what}" if len(got) == 1 else "", file=sys.stderr, flush=True)
        for proc in list(children.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def launch(spec: Spec, out: Path, state: dict, threads: int | None) -> subprocess.Popen:
    """The run in its own session, so that a Ctrl-C on the terminal reaches only the runner, which forwards
    exactly one SIGINT (two would make the run quit without its checkpoint)."""
    log_path = out / report.RUNNER_DIR / "logs" / f"{spec.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if threads})
    with open(log_path, "a") as log:
        log.write(f"\n=== {now()} $ {shlex.join(command(spec, out))}\n")
        log.flush()
        kw = dict(cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc = subprocess.Popen(command(spec, out), env=env, **kw)
    info = state["runs"][spec.name]
    info.update(status="running", pid=proc.pid, device=spec.device, exit_code=None, message="")
    info["launches"] = info.get("launches", 0) + 1
    info.pop("slurm", None)
    ckpt = report.checkpoint_step(out / spec.name)
    print(f"[{spec.name}] started from step {ckpt or 0:,} (pid {proc.pid}, device {spec.device})", flush=True)
    return proc


def finish(spec: Spec, code: int, out: Path, state: dict, seconds: float) -> None:
    status, ckpt = outcome(code), report.checkpoint_step(out / spec.name)
    log = (out / report.RUNNER_DIR / "logs" / f"{spec.name}.log").read_text(errors="replace").strip()
    message = "" if status == "done" else f"exit {code}: {log.splitlines()[-1][:300] if log else ''}"
    state["runs"][spec.name].update(status=status, exit_code=code, checkpoint_step=ckpt, ended=now(), message=message)
    word = {"done": "done", "diverged": "DIVERGED (exit 3)", "failed": f"FAILED (exit {code})"}.get(status, status)
    where = f"step {ckpt:,}" if ckpt is not None else "no checkpoint"
    print(f"[{spec.name}] {word} at {where} after {report.fmt_duration(seconds)}" + f"; {message}" * bool(message))


def run_local(args, specs: list[Spec], out: Path, state: dict) -> int:
    queue = to_start(args, specs, out, state)
    # CPU threads per run: --threads, else OMP_NUM_THREADS if set, else the cores split over --jobs
    split = None if "OMP_NUM_THREADS" in os.environ or args.jobs <= 1 else max(1, (os.cpu_count() or 1) // args.jobs)
    threads = args.threads or split
    if args.dry_run:
        print("\n".join(shlex.join(command(s, out)) for s in queue) or "nothing to run")
        return 0
    if queue:
        devices = sorted({s.device for s in queue})
        machine = report.machine_info(with_gpu=devices != ["cpu"])
        session = {"started": now(), "device": ",".join(devices), "jobs": args.jobs, "threads": threads}
        state["sessions"].append(dict(session, argv=sys.argv[1:], machine=machine))
        state["runner_pid"] = os.getpid()
        each = f", {threads} CPU thread(s) each" * bool(threads)
        print(f"{len(queue)} run(s) to go, {args.jobs} at a time{each}; logs in {out / report.RUNNER_DIR / 'logs'}")
    live: dict[str, subprocess.Popen] = {}
    started: dict[str, tuple[Spec, float]] = {}
    next_summary = time.time() + args.summary_every if args.summary_every > 0 else float("inf")
    with forwarding(live) as stopping:
        while queue or live:
            for name, proc in list(live.items()):
                if proc.poll() is not None:
                    del live[name]
                    finish(started[name][0], proc.returncode, out, state, time.time() - started[name][1])
                    save_state(out, state)
            while queue and len(live) < args.jobs and not stopping:
                spec = queue.pop(0)
                live[spec.name], started[spec.name] = launch(spec, out, state, threads), (spec, time.time())
                save_state(out, state)
            if stopping and queue:
                print("not started (stopping): " + ", ".join(s.name for s in queue), flush=True)
                queue.clear()
            if time.time() >= next_summary and live:
                print(summary(specs, out, state, live), flush=True)
                next_summary = time.time() + args.summary_every
            time.sleep(0.2)
    print(summary(specs, out, state), flush=True)
    statuses = [status_of(s, out, state, {})[0] for s in specs]
    if any(s in ("failed", "diverged") for s in statuses):
        return RUNNER_FAILED
    return 0 if all(s == "done" for s in statuses) else RUNNER_UNFINISHED


def run_slurm(args, specs: list[Spec], out: Path, state: dict) -> int:
    todo = to_start(args, specs, out, state)
    try:
        job = slurm.submit(args, specs, [command(s, out) for s in specs], todo, out)
    except RuntimeError as e:
        raise BadInput(str(e)) from None
    if job is None:  # a dry run, or nothing to submit
        return 0
    for spec in todo:
        state["runs"][spec.name]["slurm"] = f"{job}_{specs.index(spec)}"
    machine = dict(report.machine_info(with_gpu=False), cpu="Slurm nodes (see _slurm/logs)", gpu="see _slurm/logs")
    where = f"Slurm array {job}: {args.gpus_per_task} GPU(s), {args.cpus_per_task} CPU(s) per task"
    state["sessions"].append({"started": now(), "device": where, "argv": sys.argv[1:], "machine": machine})
    save_state(out, state)
    print(f"submitted {len(todo)} run(s) as Slurm job array {job}; logs in {out / slurm.SLURM_DIR / 'logs'}")
    print(f"progress: python benchmark/run.py --status --output-dir {out} (with the same --envs, --seeds)")
    return 0


def default_jobs(device: str) -> int:
    """4 runs share one NVIDIA GPU: on an H200, 4 gave 91% of 8's total steps/s (docs/performance.md); else 1."""
    if device.startswith("cpu") or "," in device or shutil.which("nvidia-smi") is None:
        return 1
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return 4 if listed.count("GPU ") == 1 else 1


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str | None]]]:
    i = argv.index("--") if "--" in argv else len(argv)
    argv, extra_tokens = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Flags after `--` go to the script.")
    p.add_argument("--envs", nargs="+", default=DEFAULT_ENVS, help="environments (default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=DEFAULT_SEEDS, help="seeds (default: %(default)s)")
    p.add_argument("--jobs", type=int, help="runs at once, locally (default 4 on one NVIDIA GPU, else 1)")
    p.add_argument("--device", default="auto", help="for the script; locally a list (cuda:0,cuda:1) deals runs out")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per local run (default: cores / --jobs)")
    p.add_argument("--output-dir", default="runs/benchmark", help="for the run directories (default: %(default)s)")
    p.add_argument("--total-timesteps", type=int, help="steps per run instead of configs.json's (larger: extends)")
    p.add_argument("--configs", default=str(CONFIGS), help="per-environment settings (default: benchmark/configs.json)")
    p.add_argument("--status", action="store_true", help="print which runs are done / running / pending and exit")
    p.add_argument("--dry-run", action="store_true", help="print the commands (or the Slurm script); start nothing")
    p.add_argument("--retry-failed", action="store_true", help="start diverged runs again (from their last checkpoint)")
    p.add_argument("--summary-every", type=float, default=300, help="seconds between local progress tables (0: none)")
    slurm.add_arguments(p)
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = default_jobs(args.device)
    if args.jobs < 1 or (args.total_timesteps is not None and args.total_timesteps < 1):
        p.error("--jobs and --total-timesteps must be positive")
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.envs)) != len(args.envs):
        p.error("--envs and --seeds must not repeat")
    if args.slurm and "," in args.device:
        p.error("with --slurm each task gets its own GPUs (--gpus-per-task): pass one --device, e.g. auto or cuda")
    extras = parse_flags(extra_tokens)
    check_extras(extras)
    return args, extras


def main(argv: list[str] | None = None) -> int:
    try:
        args, extras = parse(sys.argv[1:] if argv is None else list(argv))
        try:
            configs = json.loads(Path(args.configs).read_text())
        except (OSError, ValueError) as e:
            raise BadInput(f"cannot read the settings file {args.configs}: {e}") from None
        for env in set(args.envs) - set(configs.get("envs", {})):
            print(f"note: {env} is not in {Path(args.configs).name}: it gets the common settings", file=sys.stderr)
        out = Path(args.output_dir).resolve()
        specs, state = plan(args, configs, extras), {"runs": {}, "sessions": [], **report.runner_state(out)}
        if args.status:
            print(summary(specs, out, state))
            return 0
        for spec in specs:
            state["runs"].setdefault(spec.name, {}).update(env=spec.env, seed=spec.seed, target=spec.target)
        return (run_slurm if args.slurm else run_local)(args, specs, out, state)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return RUNNER_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
