"""benchmark/run.py --slurm: the benchmark's runs as one Slurm job array, a task per run.

The array script (<output-dir>/_slurm/sac_array.sh) gives each task its run's command, the same idempotent
`python sac_continuous.py --resume auto --run-name <env>__seed<seed> ...` as a local run, and then the body
in benchmark/slurm_task.sh, which checkpoints the run before the time limit and requeues the task. Each
task logs to _slurm/logs/<run>.log. Submitting the script again redoes no finished work.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import re
import shlex
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLURM_DIR = "_slurm"
LOG_LINE = re.compile(r"^\[slurm \S+ \S+\] exit (\d+)", re.MULTILINE)  # slurm_task.sh's last word on a try


def add_arguments(parser: argparse.ArgumentParser) -> None:
    s = parser.add_argument_group("Slurm (--slurm: submit one job array, a task per run, instead of running here)")
    s.add_argument("--slurm", action="store_true", help="write <output-dir>/_slurm/sac_array.sh and sbatch it")
    s.add_argument("--partition", default=None, help="sbatch --partition (default: the cluster's default)")
    s.add_argument("--time", default="24:00:00", help="time limit per task (default %(default)s)")
    s.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per run (default 0: CPU only)")
    s.add_argument("--cpus-per-task", type=int, default=1, help="CPU cores per run, its torch threads (default 1)")
    s.add_argument("--mem", default="6G", help="memory per run (default %(default)s; benchmark/README.md says why)")
    s.add_argument("--max-parallel", type=int, default=None, help="at most K tasks of the array at once")
    s.add_argument(
        "--signal-before",
        type=int,
        default=300,
        help="seconds before the time limit that a run checkpoints and requeues its task (default %(default)s)",
    )
    s.add_argument("--job-name", default="sac-benchmark", help="the job's name (default %(default)s)")


def queued(runs: dict) -> dict[str, str]:
    """'<array job>_<task>' -> Slurm state (RUNNING, PENDING, ...) of the tasks in `runs` still in the queue."""
    tasks = {info["slurm"] for info in runs.values() if info.get("slurm")}
    if not tasks:
        return {}
    try:  # all the user's tasks: asked by job id, squeue fails on a job it has forgotten
        res = subprocess.run(["squeue", "-h", "-r", "--me", "-o", "%i %T"], capture_output=True, text=True)
    except OSError:  # no squeue on this machine
        return {}
    return {w[0]: w[1] for w in map(str.split, res.stdout.splitlines()) if len(w) == 2 and w[0] in tasks}


def last_exit(out: Path, name: str) -> int | None:
    """The run's exit code as its task logged it last, or None."""
    log = out / SLURM_DIR / "logs" / f"{name}.log"
    found = LOG_LINE.findall(log.read_text(errors="replace")) if log.is_file() else []
    return int(found[-1]) if found else None


def array_script(args, specs: list, commands: list[list[str]], out: Path) -> str:
    """Task i runs specs[i] with commands[i]; the rest of each task is benchmark/slurm_task.sh."""
    path, logs = out / SLURM_DIR / "sac_array.sh", out / SLURM_DIR / "logs"
    limit = f"%{args.max_parallel}" if args.max_parallel else ""
    options = [f"--job-name={args.job_name}", f"--array=0-{len(specs) - 1}{limit}", "--ntasks=1"]
    options += [f"--cpus-per-task={args.cpus_per_task}", f"--mem={args.mem}", f"--time={args.time}"]
    options += [f"--gpus-per-task={args.gpus_per_task}"] if args.gpus_per_task else []
    options += [f"--partition={args.partition}"] if args.partition else []
    # USR1 to the batch shell alone, before the limit: the shell has the run checkpoint, then requeues the task
    options += [f"--signal=B:USR1@{args.signal_before}", "--requeue", "--open-mode=append"]
    options += [f"--output={logs}/slurm-%A_%a.out", f"--chdir={HERE.parent}"]
    when = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = ["#!/bin/bash", f"# Written by benchmark/run.py --slurm on {when}. Submitted again (sbatch {path}),"]
    lines += ["# it redoes no finished work: each run continues from its checkpoint or exits at once."]
    lines += [f"#SBATCH {o}" for o in options] + ["", "case $SLURM_ARRAY_TASK_ID in"]
    lines += [f"{i}) NAME={s.name}; CMD=({shlex.join(c)}) ;;" for i, (s, c) in enumerate(zip(specs, commands))]
    lines += ['*) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac"]
    lines += [f"LOG={shlex.quote(str(logs))}/$NAME.log", "", (HERE / "slurm_task.sh").read_text()]
    return "\n".join(lines)


def submit(args, specs: list, commands: list[list[str]], todo: list, out: Path) -> str | None:
    """Writes the array script and submits the tasks of `todo` (all with --dry-run: prints it instead).
    Returns the array's job id, or None for a dry run. Raises RuntimeError when sbatch fails."""
    path = out / SLURM_DIR / "sac_array.sh"
    (out / SLURM_DIR / "logs").mkdir(parents=True, exist_ok=True)
    path.write_text(array_script(args, specs, commands, out))
    path.chmod(0o755)
    limit = f"%{args.max_parallel}" if args.max_parallel else ""
    cmd = ["sbatch", "--parsable", f"--array={','.join(str(specs.index(s)) for s in todo)}{limit}", str(path)]
    if args.dry_run:
        print(path.read_text() + "\n" + (shlex.join(cmd) if todo else "(nothing to submit)"), flush=True)
    elif not todo:
        print(f"nothing to submit: every run is done or in the queue ({path})", flush=True)
    if args.dry_run or not todo:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"cannot run sbatch ({e}); submit from a machine of the Slurm cluster") from None
    if res.returncode != 0:
        raise RuntimeError(f"sbatch refused the array: {res.stderr.strip()}")
    return res.stdout.strip().split(";")[0]
