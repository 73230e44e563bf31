"""Benchmark report: evaluation curves, tables and a markdown summary from the runs' TensorBoard events.

    python benchmark/report.py runs/benchmark [--out DIR] [--references benchmark/references.csv]

Reads every run directory under the folder (one with args.json and events.out.tfevents.*) with TensorBoard's
EventAccumulator, which also drops the points a resumed run purged. Writes into --out (default <runs>/report):
eval_returns.csv (env, seed, step, mean_return, std_return), <env>.png (each seed's eval curve, the mean over
seeds with a band of ± one std over seeds, the references as horizontal lines, dashed for another version of the
environment) and report.md (final and best eval return, per-seed steps reached, SPS and wall time, the machine).
A run that stopped early is shown with the steps it reached.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_REFERENCES = HERE / "references.csv"
RUNNER_DIR = "_runner"  # what benchmark/run.py keeps next to the runs (state, logs)
EVAL_TAG, EVAL_STD_TAG, SPS_TAG = "eval/mean_return", "eval/std_return", "charts/SPS"


@dataclass
class Run:
    name: str
    env: str
    seed: int
    args: dict
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # (step, mean, std)
    sps: list[float] = field(default_factory=list)
    last_step: int = 0  # the largest step of any scalar, or of the checkpoint
    target: int | None = None  # the total steps asked for
    sessions: list[tuple[float, float]] = field(default_factory=list)  # (first, last) wall time per events file

    @property
    def complete(self) -> bool:
        return self.target is not None and self.last_step >= self.target

    @property
    def reached(self) -> str:
        if self.target is None or self.complete:
            return f"{self.last_step:,} steps" + " (complete)" * self.complete
        return f"reached {self.last_step:,} of {self.target:,} steps"


def accumulator(path: Path):
    """TensorBoard's EventAccumulator over a run directory (all its event files, in order) or one file, every scalar."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # "Purging expired events" is a resume's purge_step
    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return acc


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run's latest complete checkpoint: checkpoints/latest names step_<N>; else None."""
    latest = run_dir / "checkpoints" / "latest"
    match = re.fullmatch(r"step_(\d+)", latest.read_text().strip()) if latest.is_file() else None
    ok = match and (run_dir / "checkpoints" / match[0] / "state.pt").is_file()
    return int(match[1]) if ok else None


def last_logged_step(run_dir: Path) -> int:
    acc = accumulator(run_dir)
    return max((acc.Scalars(t)[-1].step for t in acc.Tags()["scalars"] if acc.Scalars(t)), default=0)


def runner_state(runs_dir: Path) -> dict:
    """What benchmark/run.py recorded (targets, machines), or {} for runs made otherwise."""
    try:
        return json.loads((runs_dir / RUNNER_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def load_run(run_dir: Path, target: int | None) -> Run:
    args = json.loads((run_dir / "args.json").read_text())
    run = Run(run_dir.name, args["env_id"], int(args["seed"]), args)
    acc = accumulator(run_dir)
    tags = acc.Tags()["scalars"]
    stds = {e.step: e.value for e in acc.Scalars(EVAL_STD_TAG)} if EVAL_STD_TAG in tags else {}
    evals = acc.Scalars(EVAL_TAG) if EVAL_TAG in tags else []
    run.evals = [(e.step, e.value, stds.get(e.step, math.nan)) for e in evals]
    run.sps = [e.value for e in acc.Scalars(SPS_TAG)] if SPS_TAG in tags else []
    run.last_step = max([checkpoint_step(run_dir) or 0] + [acc.Scalars(t)[-1].step for t in tags if acc.Scalars(t)])
    run.target = target or int(args.get("total_timesteps", 0)) or None
    for events in sorted(run_dir.glob("events.out.tfevents.*")):  # one file per process: stops are not counted
        one = accumulator(events)
        times = [e.wall_time for t in one.Tags()["scalars"] for e in one.Scalars(t)]
        if times:
            run.sessions.append((min(min(times), one.FirstEventTimestamp()), max(times)))
    return run


def load_runs(runs_dir: Path) -> list[Run]:
    """Every run directory directly under runs_dir, sorted by env and seed; the targets come from the runner's
    state when it made them (it knows an extended --total-timesteps), else from args.json."""
    if not Path(runs_dir).is_dir():
        raise SystemExit(f"error: {runs_dir} is not a directory")
    targets = {name: info.get("target") for name, info in runner_state(runs_dir).get("runs", {}).items()}
    dirs = [d for d in Path(runs_dir).iterdir() if (d / "args.json").is_file() and any(d.glob("events.out.tfevents.*"))]
    runs = sorted((load_run(d, targets.get(d.name)) for d in dirs), key=lambda r: (r.env, r.seed))
    for a, b in zip(runs, runs[1:]):
        if (a.env, a.seed) == (b.env, b.seed):
            raise SystemExit(f"error: two runs of {a.env} seed {a.seed} in {runs_dir}: {a.name} and {b.name}")
    return runs


def load_references(path: Path) -> list[dict]:
    """Rows of references.csv: env (family, e.g. Humanoid), env_version (v5), label, value, std, steps, metric,
    source, note. Every row must name its source."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows, start=2):
        if not (row.get("source") or "").strip():
            raise SystemExit(f"error: {path} line {i} has no source")
        row["value"], row["std"] = float(row["value"]), float(row["std"]) if (row["std"] or "").strip() else None
    return rows


def references_for(env_id: str, references: list[dict]) -> list[dict]:
    """The references of env_id's family, each with its legend; one on another version says so first."""
    family, _, version = env_id.rpartition("-") if re.search(r"-v\d+$", env_id) else (env_id, "", "")
    out = []
    for row in (r for r in references if r["env"] == family):
        text = f"{row['label']}, {row['env']}-{row['env_version']}: {row['value']:.0f}"
        text += ("" if row["std"] is None else f" ± {row['std']:.0f}") + f" ({row['metric']})" * bool(row.get("metric"))
        same = row["env_version"] == version
        legend = text if same else f"({row['env_version']}, not {version}) {text}"
        out.append({**row, "same_version": same, "legend": legend})
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0), the convention of the eval std too."""
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def fmt_duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s" if m else f"{s}s"


def plot_env(env_id: str, runs: list[Run], references: list[dict]):
    """The figure of one environment; its artists carry a gid ('seed', 'mean', 'band', 'reference')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6.5))
    runs = [r for r in runs if r.evals]
    for i, r in enumerate(runs):
        label = "individual seeds" if i == 0 else "_nolegend_"
        ax.plot(*zip(*[(s, m) for s, m, _ in r.evals]), lw=0.8, alpha=0.6, color="0.45", gid="seed", label=label)
    steps = sorted(set.intersection(*(set(s for s, _, _ in r.evals) for r in runs))) if runs else []  # every seed's
    if steps:
        means, stds = zip(*(mean_std([dict((s, m) for s, m, _ in r.evals)[step] for r in runs]) for step in steps))
        lo, hi = [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)]
        ax.fill_between(steps, lo, hi, color="tab:blue", alpha=0.2, gid="band", label="± 1 std over seeds (ddof=0)")
        ax.plot(steps, means, lw=2.2, color="tab:blue", gid="mean", label=f"mean over {len(runs)} seeds")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, ref in enumerate(references_for(env_id, references)):
        style = "-" if ref["same_version"] else "--"
        color = colors[(j + 1) % len(colors)]
        ax.axhline(ref["value"], color=color, lw=1.4, ls=style, gid="reference", label=ref["legend"])
    title = f"{len(runs)} seed{'s' * (len(runs) != 1)}"
    if not all(r.complete for r in runs) and runs:
        targets = "/".join(f"{t:,}" for t in sorted({r.target for r in runs if r.target})) or "?"
        title += f"; reached {min(r.last_step for r in runs):,}–{max(r.last_step for r in runs):,} of {targets} steps"
    episodes = "/".join(str(e) for e in sorted({r.args.get("eval_episodes") for r in runs} - {None}))
    ax.set(title=f"{env_id}: SAC deterministic eval return ({title})", xlabel="environment steps")
    ax.set_ylabel(f"mean eval return over {episodes} episodes")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def machine_info(with_gpu: bool = True) -> dict:
    """This machine: CPU, GPU (torch.cuda), cores, library versions and git commit."""
    gpu = "none"
    if with_gpu:
        try:
            import torch

            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"
        except Exception as e:  # a broken CUDA setup should not stop a report
            gpu = f"unknown ({type(e).__name__})"
    cpu = platform.processor() or platform.machine() or "unknown"
    if Path("/proc/cpuinfo").is_file():
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu)

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") + " (with uncommitted changes)" * bool(git("status", "--porcelain", "-uno"))
    except (OSError, subprocess.SubprocessError):
        commit = ""
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu, "python": platform.python_version()}
    return info | {p: version(p) for p in ("torch", "gymnasium", "mujoco")} | {"git_commit": commit or "unknown"}


def best(run: Run) -> tuple[int, float, float]:
    return max(run.evals, key=lambda e: e[1])


def env_section(env_id: str, runs: list[Run], references: list[dict], png: str, without_data: list) -> list[str]:
    out = [f"## {env_id}", ""]
    if without_data:
        out += [f"Seeds planned by the runner without any data yet: {', '.join(map(str, without_data))}.", ""]
    a = runs[0].args
    out += [
        f"Settings (args.json of seed {runs[0].seed}): alpha {a.get('alpha')} (autotune {a.get('autotune')}), "
        f"policy/q lr {a.get('policy_lr')}/{a.get('q_lr')}, batch {a.get('batch_size')}, learning_starts "
        f"{a.get('learning_starts')}, tau {a.get('tau')}, gamma {a.get('gamma')}, eval every "
        f"{a.get('eval_frequency')} steps with {a.get('eval_episodes')} deterministic episodes.",
        "",
    ]
    if unfinished := [r for r in runs if not r.complete]:
        seeds = "; ".join(f"seed {r.seed} {r.reached}" for r in unfinished)
        out += [f'**Not finished:** {seeds}. Their "final" is the last evaluation they reached.', ""]
    if evaluated := [r for r in runs if r.evals]:
        (fm, fs), (bm, bs) = mean_std([r.evals[-1][1] for r in evaluated]), mean_std([best(r)[1] for r in evaluated])
        steps = sorted({r.evals[-1][0] for r in evaluated})
        at = f"{steps[0]:,}" + f"–{steps[-1]:,}" * (len(steps) > 1)
        out += ["| | eval return, mean ± std over seeds (ddof=0) | seeds |", "|---|---|---|"]
        out += [f"| final (each seed's last evaluation, at step {at}) | {fm:.1f} ± {fs:.1f} | {len(evaluated)} |"]
        out += [f"| best (each seed's best evaluation) | {bm:.1f} ± {bs:.1f} | {len(evaluated)} |", ""]
        out += ['"Best" is the maximum over many evaluations, biased upwards; "final" compares with a final model.', ""]
    else:
        out += ["No evaluation has been logged yet.", ""]
    out += ["| seed | steps | final eval (step) | best eval (step) | SPS (median) | wall time (processes) |"]
    out += ["|---|---|---|---|---|---|"]
    for r in runs:
        final = f"{r.evals[-1][1]:.1f} ± {r.evals[-1][2]:.1f} ({r.evals[-1][0]:,})" if r.evals else "–"
        top = f"{best(r)[1]:.1f} ({best(r)[0]:,})" if r.evals else "–"
        sps = f"{statistics.median(r.sps):.0f}" if r.sps else "–"
        wall = fmt_duration(sum(b - a for a, b in r.sessions))
        steps = r.reached + "; never left the random phase" * (r.last_step <= int(r.args.get("learning_starts", 0)))
        out.append(f"| {r.seed} | {steps} | {final} | {top} | {sps} | {wall} ({len(r.sessions)}) |")
    out += ["", "A seed's ± is over its evaluation episodes. Wall time adds each process's first to last event.", ""]
    if refs := references_for(env_id, references):
        out += ["References (benchmark/references.csv; other versions are not the same task):", ""]
        out += ["| result | env | value | steps | what | source |", "|---|---|---|---|---|---|"]
        for f in refs:
            value = f"{f['value']:.1f}" + ("" if f["std"] is None else f" ± {f['std']:.1f}")
            what = f"{f.get('metric', '')}; {f.get('note', '')}"
            env = f"{f['env']}-{f['env_version']}"
            out.append(f"| {f['label']} | {env} | {value} | {f['steps']} | {what} | {f['source']} |")
        out.append("")
    return out + [f"![{env_id}]({png})", ""]


def machine_section(state: dict) -> list[str]:
    out, rows = ["## Machine and versions", ""], {}
    for s in state.get("sessions") or []:  # one row per distinct machine and setup
        m = s.get("machine", {})
        row = [s.get("started"), s.get("device"), f"{m.get('cpu')} ({m.get('cpu_count')} cores)", m.get("gpu")]
        row += [m.get(k) for k in ("torch", "gymnasium", "mujoco", "git_commit")]
        rows.setdefault(tuple(row[1:]), row)
    if rows:
        out += ["Recorded by benchmark/run.py each time it started runs:", ""]
        out += ["| started | device | CPU | GPU | torch | gymnasium | mujoco | git commit |", "|" + "---|" * 8]
        return out + ["| " + " | ".join(map(str, r)) + " |" for r in rows.values()] + [""]
    m = machine_info()
    out += ["These runs were not started by benchmark/run.py; the machine that wrote this report:", ""]
    out += [f"- CPU: {m['cpu']} ({m['cpu_count']} cores); GPU: {m['gpu']}"]
    out += [f"- torch {m['torch']}, gymnasium {m['gymnasium']}, mujoco {m['mujoco']}, python {m['python']}"]
    return out + [f"- git commit: {m['git_commit']}", ""]


def shown_path(path: Path) -> str:
    """The runs directory as the report names it: as given when relative, relative to the current directory when
    under it, else its name alone; never an absolute path of the machine the report was made on."""
    if not path.is_absolute():
        return str(path)
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else path.name


def write_report(runs_dir: Path, out_dir: Path | None = None, references_path=DEFAULT_REFERENCES) -> dict:
    """Writes eval_returns.csv, one PNG per environment and report.md; returns their paths."""
    import matplotlib.pyplot as plt

    runs_dir, runs = Path(runs_dir), load_runs(runs_dir)
    if not runs:
        raise SystemExit(f"error: no runs under {runs_dir} (a run directory holds args.json and events.out.tfevents.*)")
    out_dir = Path(out_dir or runs_dir / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    references, state = load_references(references_path) if references_path else [], runner_state(runs_dir)
    paths = {"csv": out_dir / "eval_returns.csv", "markdown": out_dir / "report.md", "png": {}}
    with open(paths["csv"], "w", newline="") as f:
        rows = [[r.env, r.seed, *e] for r in runs for e in r.evals]
        csv.writer(f).writerows([["env", "seed", "step", "mean_return", "std_return"], *rows])
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = ["# SAC benchmark report", "", f"Runs: `{shown_path(runs_dir)}`; written {when} by report.py.", ""]
    planned = state.get("runs", {})
    if missing := sorted(set(planned) - {r.name for r in runs}):
        lines += [f"Planned by the runner but without data yet: {', '.join(missing)}.", ""]
    for env_id in dict.fromkeys(r.env for r in runs):
        env_runs = [r for r in runs if r.env == env_id]
        fig = plot_env(env_id, env_runs, references)
        fig.savefig(paths["png"].setdefault(env_id, out_dir / f"{env_id}.png"), dpi=110)
        plt.close(fig)
        seeds = {int(i["seed"]) for i in planned.values() if i.get("env") == env_id}
        without = sorted(seeds - {r.seed for r in env_runs})
        lines += env_section(env_id, env_runs, references, f"{env_id}.png", without)
    paths["markdown"].write_text("\n".join(lines + machine_section(state)) + "\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs_dir", nargs="?", default="runs/benchmark", help="the runner's --output-dir")
    p.add_argument("--out", default=None, help="where to write the report (default: <runs_dir>/report)")
    p.add_argument("--references", default=str(DEFAULT_REFERENCES), help="reference results CSV ('' for none)")
    a = p.parse_args(argv)
    paths = write_report(Path(a.runs_dir), a.out and Path(a.out), a.references and Path(a.references))
    print(f"wrote {paths['csv']}, {paths['markdown']} and {len(paths['png'])} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
