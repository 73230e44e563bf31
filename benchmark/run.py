"""Benchmark runner: environments x seeds of sac_continuous.py, here (--jobs at once) or as one Slurm job array.

Every run is `sac_continuous.py --resume auto --run-name <env>__seed<seed> ...` with benchmark/configs.json's
settings, so the same command again continues unfinished runs and skips finished ones. benchmark/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import report  # benchmark/report.py, beside this file: checkpoint and TensorBoard readers, machine info

HERE = Path(__file__).resolve().parent
SCRIPT, CONFIGS, SLURM_DIR = HERE.parent / "sac_continuous.py", HERE / "configs.json", "_slurm"

OUTCOMES = {0: "done", 2: "failed", 3: "diverged", 75: "interrupted", 130: "aborted"}  # sac_continuous.py's codes
MARK = re.compile(r"^(?:=== \S+|\[slurm \S+ \S+\]) (?:exit (-?\d+)|\$|\S+ starts)")  # a run's start or end in its log
# flags the runner sets itself: refused after `--`, with the option to use instead
RESERVED = {"env-id": "--envs", "seed": "--seeds", "run-name": "(fixed)", "device": "--device", "resume": "(auto)"}
RESERVED |= {"output-dir": "--output-dir", "total-timesteps": "--total-timesteps", "eval-checkpoint": "(not training)"}
RESERVED |= {"track": "--track", "wandb-project-name": "--wandb-project-name", "wandb-entity": "--wandb-entity"}


class BadInput(Exception):
    """A runner argument that cannot be used: one line, exit code 2."""


def parse_flags(tokens: list[str]) -> list[tuple[str, str | None]]:
    """--alpha 0.2 --no-autotune --tau=0.01 -> [('alpha', '0.2'), ('no-autotune', None), ('tau', '0.01')]."""
    out: list[tuple[str, str | None]] = []
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            out.append((name, value if eq else None))
        elif out and out[-1][1] is None and "=" not in tokens[i - 1]:
            out[-1] = (out[-1][0], tok)
        else:
            raise BadInput(f"cannot read the script flags after '--' at '{tok}'; write them as --flag value")
    for name, value in out:
        if name.removeprefix("no-") in RESERVED:
            raise BadInput(f"--{name} is set by the runner; use {RESERVED[name.removeprefix('no-')]} instead")
        if name == "checkpoint-frequency" and (value or "").strip() == "0":
            raise BadInput("--checkpoint-frequency 0 leaves no checkpoint to continue from; the runner needs them")
    return out


Spec = namedtuple("Spec", "env seed target flags device name")  # a run; flags: [(name, value or None)]


def plan(args, configs: dict, extras: list[tuple[str, str | None]]) -> list[Spec]:
    devices, specs, auto = [d for d in args.device.split(",") if d], [], []
    if args.track:
        auto += [("track", None), ("wandb-project-name", args.wandb_project_name)]
        auto += [("wandb-entity", args.wandb_entity)] * bool(args.wandb_entity)
    # threads per run: the Slurm task's cores; here cores / --jobs when > 1 and OMP_NUM_THREADS is unset
    split = args.jobs > 1 and "OMP_NUM_THREADS" not in os.environ and max(1, (os.cpu_count() or 1) // args.jobs)
    auto += [("num-threads", str(args.cpus_per_task if args.slurm else split))] * bool(args.cpus_per_task or split)
    for env in args.envs:
        merged = {**configs["common"], **configs["envs"].get(env, {})}
        default_target = int(merged.pop("total-timesteps", 1_000_000))
        target = args.total_timesteps or default_target
        config = [((k if v else f"no-{k}"), None) if isinstance(v, bool) else (k, str(v)) for k, v in merged.items()]
        # later layers override earlier ones, flag by flag ('no-autotune' overrides 'autotune')
        flags = list({n.removeprefix("no-"): (n, v) for n, v in config + auto + extras}.values())
        for seed in args.seeds:  # several devices: dealt out in turn
            specs.append(Spec(env, seed, target, flags, devices[len(specs) % len(devices)], f"{env}__seed{seed}"))
    return specs


def command(spec: Spec, out: Path) -> list[str]:
    """The one idempotent command of a run, the same here and on Slurm."""
    cmd = [sys.executable, str(SCRIPT), "--env-id", spec.env, "--seed", str(spec.seed), "--run-name", spec.name]
    cmd += ["--output-dir", str(out), "--resume", "auto", "--device", spec.device, "--total-timesteps"]
    cmd += [str(spec.target)]
    return cmd + [tok for name, value in spec.flags for tok in [f"--{name}"] + ([] if value is None else [value])]


def save_state(out: Path, state: dict) -> None:
    (path := out / report.RUNNER_DIR / "state.json").with_name("logs").mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(state, indent=1) + "\n")
    os.replace(path.with_suffix(".tmp"), path)


def alive(pid) -> bool | None:
    with contextlib.suppress(OSError, TypeError):  # (None when it is not)
        return os.kill(pid, 0) is None


def log_path(out: Path, name: str, slurm: bool = False) -> Path:
    return out / (SLURM_DIR if slurm else report.RUNNER_DIR) / "logs" / f"{name}.log"


def queued(state: dict) -> dict[str, str]:
    """'<array job>_<task>' -> Slurm state (RUNNING, PENDING, ...) of our tasks still in the queue."""
    tasks = {info["slurm"] for info in state["runs"].values() if info.get("slurm")}
    if not tasks or not shutil.which("squeue"):
        return {}
    # all the user's tasks: asked by job id, squeue fails on a job it has forgotten
    listed = subprocess.run(["squeue", "-h", "-r", "--me", "-o", "%i %T"], capture_output=True, text=True).stdout
    return {w[0]: w[1] for w in map(str.split, listed.splitlines()) if len(w) == 2 and w[0] in tasks}


def status_of(spec: Spec, out: Path, state: dict, queue: dict, live=()) -> tuple[str, int, str]:
    """(status, steps reached, note) of a run, local or on Slurm, from its checkpoint, log and Slurm's queue."""
    ckpt, job = report.checkpoint_step(out / spec.name), state["runs"].get(spec.name, {}).get("slurm")
    log = log_path(out, spec.name, slurm=bool(job))
    # the exit code that follows the run's last start in its log (ours or its Slurm task's), and the line before it
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    i, code = ([(i, m[1]) for i, line in enumerate(lines) if (m := MARK.match(line))] or [(0, None)])[-1]
    code, why = (None, "") if code is None else (int(code), lines[i - 1])
    if ckpt is not None and ckpt >= spec.target:
        return "done", ckpt, ""
    if job in queue or spec.name in live or (log.is_file() and code is None and alive(state.get("runner_pid"))):
        steps = max(ckpt or 0, report.last_logged_step(out / spec.name)) if (out / spec.name).is_dir() else 0
        where = "no checkpoint yet" if ckpt is None else f"checkpoint at {ckpt:,}"
        return (queue[job].lower(), steps, f"Slurm job {job}") if job in queue else ("running", steps, where)
    other = "killed" if code and (code < 0 or code > 128) else "failed"  # a signal's code, or another
    status = "pending" if code == 0 or not log.is_file() else "stopped" if code is None else OUTCOMES.get(code, other)
    note = f"exit {code}: {why[:300]}" if status in ("failed", "diverged") else ""
    if status in ("interrupted", "stopped", "aborted", "killed") or (status == "pending" and ckpt):
        note = "re-run to continue"
    stuck = re.search(r"no progress in \d+ starts", lines[i]) if code is not None else None
    if stuck:  # the Slurm task stopped requeueing a run that failed again and again without a newer checkpoint
        status = "failed"
        note = f"exit {code}, {stuck[0]}: {why[:300]}"
    return status, ckpt or 0, f"Slurm job {job}; " * bool(job) + note


def summary(specs: list[Spec], out: Path, state: dict, live=()) -> str:
    queue, rows = queued(state), [("run", "status", "steps", "of", "note")]
    for spec in specs:
        status, steps, note = status_of(spec, out, state, queue, live)
        rows.append((spec.name, status, f"{steps:,}", f"{spec.target:,}", note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + ("  " + r[4]) * bool(r[4]) for r in rows]
    counts = {s: [r[1] for r in rows[1:]].count(s) for s in sorted({r[1] for r in rows[1:]})}
    return "\n".join(lines + ["totals: " + ", ".join(f"{n} {s}" for s, n in counts.items())])


def to_start(args, specs: list[Spec], out: Path, state: dict) -> list[Spec]:
    """The runs to start: not done, not in Slurm's queue, not diverged (unless --retry-failed)."""
    queue, todo = queued(state), []
    for spec in specs:
        status, steps, note = status_of(spec, out, state, queue)
        in_queue = state["runs"][spec.name].get("slurm") in queue
        if status == "done" or in_queue or (status == "diverged" and not args.retry_failed):
            hint = " (see --retry-failed)" * (status == "diverged")
            print(f"[{spec.name}] skipped: {status}, {note or f'step {steps:,}'}{hint}", flush=True)
        else:
            todo.append(spec)
    return todo


def run_local(args, specs: list[Spec], out: Path, state: dict) -> int:
    queue, live, started, stopping = to_start(args, specs, out, state), {}, {}, []
    if args.dry_run:
        print("\n".join(shlex.join(command(s, out)) for s in queue) or "nothing to run")
        return 0
    env = dict(os.environ, **({"WANDB_RUN_GROUP": os.environ.get("WANDB_RUN_GROUP", out.name)} if args.track else {}))
    if queue:
        devices = sorted({s.device for s in queue})
        machine = report.machine_info(with_gpu=devices != ["cpu"])
        state["sessions"].append(dict(started=time.strftime("%FT%T%z"), device=",".join(devices), machine=machine))
        state["runner_pid"] = os.getpid()
        for spec in queue:  # from now on run here, not on Slurm
            state["runs"][spec.name].pop("slurm", None)
        save_state(out, state)
        print(f"{len(queue)} run(s) to go, {args.jobs} at a time; logs in {log_path(out, '').parent}")

    def forward(signum, frame):  # each signal once to every run: the first checkpoints it, a second stops it
        stopping.append(signum)
        what = "each run checkpoints and exits; no new runs start (again: they stop at once)"
        print(f"\n{signal.Signals(signum).name}: {what}" * (len(stopping) == 1), file=sys.stderr, flush=True)
        for proc in list(live.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while live or (queue and not stopping):  # once stopping, the rest stays pending
            for name, proc in list(live.items()):
                if (code := proc.poll()) is not None:
                    del live[name]
                    with open(log_path(out, name), "a") as f:
                        f.write(f"=== {time.strftime('%FT%T%z')} exit {code}\n")
                    status, steps, note = status_of(started[name], out, state, {})
                    word = status.upper() if status in ("failed", "diverged") else status
                    print(f"[{name}] {word} (exit {code}) at step {steps:,}" + f"; {note}" * bool(note), flush=True)
            while queue and len(live) < args.jobs and not stopping:
                spec = queue.pop(0)
                with open(log_path(out, spec.name), "a") as f:
                    f.write(f"\n=== {time.strftime('%FT%T%z')} $ {shlex.join(command(spec, out))}\n")
                    f.flush()  # the run in its own session: a terminal's Ctrl-C reaches only the runner, which
                    # forwards exactly one SIGINT (two would make the run quit without its checkpoint)
                    kw = dict(cwd=HERE.parent, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env)
                    live[spec.name] = subprocess.Popen(command(spec, out), start_new_session=True, **kw)
                started[spec.name], ckpt = spec, report.checkpoint_step(out / spec.name)
                print(f"[{spec.name}] started from step {ckpt or 0:,} (pid {live[spec.name].pid}, {spec.device})")
            time.sleep(0.2)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    print(summary(specs, out, state), flush=True)
    statuses = {status_of(s, out, state, {})[0] for s in specs}
    return 1 if {"failed", "diverged"} & statuses else 0 if statuses == {"done"} else 75


def run_slurm(args, specs: list[Spec], out: Path, state: dict) -> int:
    """Writes the array script (task i: specs[i], then slurm_task.sh) and submits the tasks of the runs to start."""
    logs, path = out / SLURM_DIR / "logs", out / SLURM_DIR / "sac_array.sh"
    limit = f"%{args.max_parallel}" * bool(args.max_parallel)
    options = ["--job-name=sac-benchmark", f"--array=0-{len(specs) - 1}{limit}", "--ntasks=1", f"--mem={args.mem}"]
    optional = {"cpus-per-task": args.cpus_per_task, "gpus-per-task": args.gpus_per_task, "partition": args.partition}
    options += [f"--time={args.time}"] + [f"--{k}={v}" for k, v in optional.items() if v]
    # USR1 to the batch shell alone, before the limit: the shell has the run checkpoint, then requeues the task
    options += [f"--signal=B:USR1@{args.signal_before}", "--requeue", "--open-mode=append"]
    options += [f"--output={logs}/slurm-%A_%a.out", f"--chdir={HERE.parent}"]
    lines = ["#!/bin/bash", f"# benchmark/run.py --slurm, {time.strftime('%FT%T%z')}; again, it redoes no work"]
    lines += [f"#SBATCH {o}" for o in options] + [""]
    group = os.environ.get("WANDB_RUN_GROUP", out.name)
    lines += [f"export WANDB_RUN_GROUP={shlex.quote(group)}  # one W&B group per benchmark"] * args.track
    lines += ["case $SLURM_ARRAY_TASK_ID in"]
    lines += [f"{i}) NAME={s.name}; CMD=({shlex.join(command(s, out))}) ;;" for i, s in enumerate(specs)]
    lines += ['*) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac"]
    logs.mkdir(parents=True, exist_ok=True)
    lines += [f"LOG={shlex.quote(str(logs))}/$NAME.log", f"RUN={shlex.quote(str(out))}/$NAME"]
    lines += [f"MAX_STARTS={args.max_starts_without_progress}", "", (HERE / "slurm_task.sh").read_text()]
    path.write_text("\n".join(lines))
    path.chmod(0o755)
    todo = to_start(args, specs, out, state)
    cmd = ["sbatch", "--parsable", f"--array={','.join(str(specs.index(s)) for s in todo)}{limit}", str(path)]
    if args.dry_run or not todo:
        print(path.read_text() + "\n" + shlex.join(cmd) if args.dry_run else "nothing to submit: all done or queued")
        return 0
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BadInput(f"cannot run sbatch ({e}); submit from a machine of the Slurm cluster") from None
    if res.returncode != 0:
        raise BadInput(f"sbatch refused the array: {res.stderr.strip()}")
    job = res.stdout.strip().split(";")[0]
    for spec in todo:
        state["runs"][spec.name]["slurm"] = f"{job}_{specs.index(spec)}"
    machine = dict(report.machine_info(with_gpu=False), cpu="Slurm nodes (see _slurm/logs)", gpu="see _slurm/logs")
    where = f"Slurm array {job}: {args.gpus_per_task} GPU(s), {args.cpus_per_task or 'default'} CPU(s) per task"
    state["sessions"].append(dict(started=time.strftime("%FT%T%z"), device=where, machine=machine))
    save_state(out, state)
    print(f"submitted {len(todo)} run(s) as Slurm job array {job}; logs in {out / SLURM_DIR / 'logs'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    i = argv.index("--") if "--" in argv else len(argv)
    epilog = "Flags after `--` go to the script. Exit: 0 done or submitted, 1 a run failed, 2 bad input, 75 not done"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=epilog)
    p.add_argument("--envs", nargs="+", default=["Ant-v5", "Humanoid-v5"], help="environments (default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="seeds (default: %(default)s)")
    p.add_argument("--jobs", type=int, help="runs at once here (default 4 on one NVIDIA GPU, else 1); with more than 1 "
                   "each run gets --num-threads cores/jobs unless OMP_NUM_THREADS is set")  # fmt: skip
    p.add_argument("--device", default="auto", help="for the script; here a list (cuda:0,cuda:1) deals runs out")
    p.add_argument("--output-dir", default="runs/benchmark", help="for the run directories (default: %(default)s)")
    p.add_argument("--total-timesteps", type=int, help="steps per run instead of configs.json's (larger: extends)")
    p.add_argument("--status", action="store_true", help="print which runs are done / running / pending and exit")
    p.add_argument("--dry-run", action="store_true", help="print the commands (or the Slurm script); start nothing")
    p.add_argument("--retry-failed", action="store_true", help="start diverged runs again (from their last checkpoint)")
    p.add_argument("--track", action="store_true", help="runs log to W&B, one group (WANDB_RUN_GROUP) per benchmark")
    p.add_argument("--wandb-project-name", default="sac_continuous", help="W&B project (default: %(default)s)")
    p.add_argument("--wandb-entity", default=None, help="W&B entity (default: yours)")
    s = p.add_argument_group("Slurm (--slurm: one job array, a task per run, instead of running here)")
    s.add_argument("--slurm", action="store_true", help="write <output-dir>/_slurm/sac_array.sh and sbatch it")
    s.add_argument("--partition", default=None, help="sbatch --partition (default: the cluster's default)")
    s.add_argument("--time", default="24:00:00", help="time limit per task (default %(default)s)")
    s.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per run (default 0: CPU only)")
    s.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per run, passed as its --num-threads")
    s.add_argument("--mem", default="6G", help="memory per run (default %(default)s; benchmark/README.md says why)")
    s.add_argument("--max-parallel", type=int, default=None, help="at most K tasks of the array at once")
    s.add_argument("--signal-before", type=int, default=300, help="seconds before the time limit that a run "
                   "checkpoints and requeues its task (default %(default)s)")  # fmt: skip
    s.add_argument("--max-starts-without-progress", type=int, default=3, metavar="K", help="stop requeueing a "
                   "task whose run failed K starts in a row with no new checkpoint (default %(default)s)")  # fmt: skip
    args = p.parse_args(argv[:i])
    if args.jobs is None:  # 4 runs on one NVIDIA GPU: on an H200 4 made 91% of 8's total steps/s (docs/performance.md)
        gpu = not args.device.startswith("cpu") and "," not in args.device and shutil.which("nvidia-smi")
        listed = subprocess.run([gpu, "-L"], capture_output=True, text=True).stdout if gpu else ""
        args.jobs = 4 if listed.count("GPU ") == 1 else 1
    if min(args.jobs, args.total_timesteps or 1) < 1 or len({*args.seeds, *args.envs}) < len(args.seeds + args.envs):
        p.error("--jobs and --total-timesteps must be positive, --envs and --seeds must not repeat")
    if args.max_starts_without_progress < 1:
        p.error("--max-starts-without-progress must be at least 1")
    if args.slurm and "," in args.device:
        p.error("with --slurm each task gets its own GPUs (--gpus-per-task): pass one --device, e.g. auto or cuda")
    try:
        configs, extras = json.loads(CONFIGS.read_text()), parse_flags(argv[i + 1 :])
        out = Path(args.output_dir).resolve()
        specs, state = plan(args, configs, extras), {"runs": {}, "sessions": [], **report.runner_state(out)}
        if args.status:
            return print(summary(specs, out, state)) or 0
        for spec in {s.env: s for s in specs}.values():  # a run that ends by learning-starts trains nothing
            starts = int(dict(spec.flags).get("learning-starts") or 0)
            if spec.target <= starts:
                advice = "raise --total-timesteps or lower it (-- --learning-starts N)"
                print(f"warning: {spec.env}: {spec.target:,} steps, learning-starts {starts:,}: the runs never "
                      f"leave the random phase (no training, only the untrained actor evaluated); {advice}",
                      file=sys.stderr)  # fmt: skip
        for spec in specs:
            state["runs"].setdefault(spec.name, {}).update(env=spec.env, seed=spec.seed, target=spec.target)
        return (run_slurm if args.slurm else run_local)(args, specs, out, state)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
