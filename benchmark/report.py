"""Benchmark report: evaluation curves, tables and a markdown summary from the runs' TensorBoard events.

    python benchmark/report.py runs/benchmark
    python benchmark/report.py runs/benchmark --out report/ --references benchmark/references.csv

Reads every run directory under the given folder (one with args.json and events.out.tfevents.*),
with TensorBoard's own reader (EventAccumulator, which also drops the points a resumed run purged).
Writes, into --out (default: <runs>/report):

- eval_returns.csv: one row per env, seed and evaluation (env, seed, step, mean_return, std_return)
- <env>.png: per environment, each seed's eval curve (thin), the mean over seeds with a band of
  ± one standard deviation over seeds, and the reference results of references.csv as labelled
  horizontal lines (dashed when they were measured on another version of the environment)
- report.md: final and best eval return per environment, per-seed finals, steps reached, SPS,
  wall time, the machine, library versions and the git commit

Nothing here invents a number: a run that stopped early is shown with the steps it reached.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import platform
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_REFERENCES = HERE / "references.csv"
RUNNER_DIR = "_runner"  # what benchmark/run.py keeps next to the runs (state, logs)
EVAL_TAG, EVAL_STD_TAG, SPS_TAG = "eval/mean_return", "eval/std_return", "charts/SPS"
CSV_COLUMNS = ["env", "seed", "step", "mean_return", "std_return"]


# ----------------------------------------------------------------------------------------------
# Reading runs
# ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    path: Path
    env: str
    seed: int
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # (step, mean, std)
    sps: list[float] = field(default_factory=list)
    last_step: int = 0  # the largest step of any scalar TensorBoard kept
    checkpoint_step: int | None = None
    target: int | None = None  # the total steps asked for
    sessions: list[tuple[float, float]] = field(default_factory=list)  # (first, last) wall time per events file
    args: dict = field(default_factory=dict)

    @property
    def wall_time_s(self) -> float:
        return sum(last - first for first, last in self.sessions)

    @property
    def complete(self) -> bool:
        return self.target is not None and self.last_step >= self.target


def accumulator(path: Path):
    """TensorBoard's EventAccumulator over a run directory (all its event files, in order) or one
    file, keeping every scalar."""
    import logging

    from tensorboard.backend.event_processing import event_accumulator as ea

    # its warning on a resumed run ("Purging expired events ...") is the expected purge_step at work
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    guidance = {ea.SCALARS: 0, ea.TENSORS: 1, ea.HISTOGRAMS: 1, ea.COMPRESSED_HISTOGRAMS: 1, ea.IMAGES: 1, ea.AUDIO: 1}
    acc = ea.EventAccumulator(str(path), size_guidance=guidance)
    acc.Reload()
    return acc


def checkpoint_step(run_dir: Path) -> int | None:
    """global_step of the run's latest checkpoint: checkpoints/latest names step_<N>, and N is the
    step (sac_continuous.py's save_checkpoint). None when there is no complete checkpoint."""
    latest = run_dir / "checkpoints" / "latest"
    if not latest.is_file():
        return None
    name = latest.read_text().strip()
    match = re.fullmatch(r"step_(\d+)", name)
    if match is None or not (run_dir / "checkpoints" / name / "state.pt").is_file():
        return None
    return int(match.group(1))


def last_logged_step(run_dir: Path) -> int:
    """The largest step of any scalar in the run's TensorBoard events (0 if none)."""
    acc = accumulator(run_dir)
    steps = [acc.Scalars(tag)[-1].step for tag in acc.Tags()["scalars"] if acc.Scalars(tag)]
    return max(steps, default=0)


def runner_state(runs_dir: Path) -> dict:
    """What benchmark/run.py recorded (targets, statuses, machines), or {} for runs made otherwise."""
    path = runs_dir / RUNNER_DIR / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_run(run_dir: Path, target: int | None = None) -> Run:
    args = json.loads((run_dir / "args.json").read_text())
    run = Run(name=run_dir.name, path=run_dir, env=args["env_id"], seed=int(args["seed"]), args=args)
    acc = accumulator(run_dir)
    scalars = acc.Tags()["scalars"]
    if EVAL_TAG in scalars:
        stds = {e.step: e.value for e in acc.Scalars(EVAL_STD_TAG)} if EVAL_STD_TAG in scalars else {}
        run.evals = [(e.step, e.value, stds.get(e.step, math.nan)) for e in acc.Scalars(EVAL_TAG)]
    if SPS_TAG in scalars:
        run.sps = [e.value for e in acc.Scalars(SPS_TAG)]
    run.last_step = max((acc.Scalars(t)[-1].step for t in scalars if acc.Scalars(t)), default=0)
    run.checkpoint_step = checkpoint_step(run_dir)
    if run.checkpoint_step is not None:
        run.last_step = max(run.last_step, run.checkpoint_step)
    run.target = target if target is not None else int(args.get("total_timesteps", 0)) or None
    # wall time: each process writes its own events file; a stop between two sessions is not counted
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        one = accumulator(events)
        times = [e.wall_time for t in one.Tags()["scalars"] for e in one.Scalars(t)]
        if times:
            run.sessions.append((min(min(times), one.FirstEventTimestamp()), max(times)))
    return run


def load_runs(runs_dir: Path) -> list[Run]:
    """Every run directory directly under runs_dir. The targets come from the runner's state when it
    made the runs (it knows an extended --total-timesteps), else from args.json."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise SystemExit(f"error: {runs_dir} is not a directory")
    targets = {name: info.get("target") for name, info in runner_state(runs_dir).get("runs", {}).items()}
    runs = [
        load_run(d, targets.get(d.name))
        for d in sorted(runs_dir.iterdir())
        if d.is_dir() and (d / "args.json").is_file() and any(d.glob("events.out.tfevents.*"))
    ]
    seen: dict[tuple[str, int], str] = {}
    for r in runs:
        other = seen.setdefault((r.env, r.seed), r.name)
        if other != r.name:
            raise SystemExit(
                f"error: two runs of {r.env} seed {r.seed} in {runs_dir}: {other} and {r.name}; "
                f"a report needs one run per environment and seed"
            )
    return runs


def by_env(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.env, r.seed)):
        groups.setdefault(r.env, []).append(r)
    return groups


# ----------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------


def split_env_id(env_id: str) -> tuple[str, str]:
    """'Humanoid-v5' -> ('Humanoid', 'v5')."""
    match = re.fullmatch(r"(.+)-(v\d+)", env_id)
    return (match.group(1), match.group(2)) if match else (env_id, "")


def load_references(path: Path) -> list[dict]:
    """Rows of references.csv: env (family, e.g. Humanoid), env_version (v5), label, value, std,
    steps, metric, source, note. Every row must name its source."""
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            if not (row.get("source") or "").strip():
                raise SystemExit(f"error: {path} line {i} has no source")
            row["value"] = float(row["value"])
            row["std"] = float(row["std"]) if (row.get("std") or "").strip() else None
            rows.append(row)
    return rows


def references_for(env_id: str, references: list[dict]) -> list[dict]:
    family, version = split_env_id(env_id)
    out = []
    for row in references:
        if row["env"] != family:
            continue
        same = row["env_version"] == version
        text = f"{row['label']}, {row['env']}-{row['env_version']}: {row['value']:.0f}"
        if row["std"] is not None:
            text += f" ± {row['std']:.0f}"
        if row.get("metric"):
            text += f" ({row['metric']})"
        if not same:  # another version of the task: dashed, and said so first
            text = f"({row['env_version']}, not {version or '?'}) " + text
        out.append({**row, "same_version": same, "legend": text})
    return out


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------


def tidy_rows(runs: list[Run]) -> list[dict]:
    return [
        {"env": r.env, "seed": r.seed, "step": step, "mean_return": mean, "std_return": std}
        for r in sorted(runs, key=lambda r: (r.env, r.seed))
        for step, mean, std in r.evals
    ]


def write_csv(runs: list[Run], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(tidy_rows(runs))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0), the convention of the eval std too."""
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def seed_curves(runs: list[Run]) -> tuple[list[int], list[float], list[float]]:
    """Mean and std over seeds at the eval steps that every seed reached."""
    common = set.intersection(*(set(s for s, _, _ in r.evals) for r in runs)) if runs else set()
    steps = sorted(common)
    means, stds = [], []
    for step in steps:
        m, s = mean_std([next(v for st, v, _ in r.evals if st == step) for r in runs])
        means.append(m)
        stds.append(s)
    return steps, means, stds


def fmt_steps(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def reached_label(run: Run) -> str:
    if run.target is None:
        return f"{fmt_steps(run.last_step)} steps"
    if run.last_step >= run.target:
        return f"{fmt_steps(run.last_step)} steps (complete)"
    return f"reached {fmt_steps(run.last_step)} of {fmt_steps(run.target)} steps"


# ----------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------


def plot_env(env_id: str, runs: list[Run], references: list[dict]):
    """The figure of one environment. Artists carry a gid ('seed', 'mean', 'band', 'reference')
    so callers (and tests) can find them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(runs):
        if r.evals:
            steps, means = [s for s, _, _ in r.evals], [m for _, m, _ in r.evals]
            ax.plot(
                steps,
                means,
                lw=0.8,
                alpha=0.6,
                color="0.45",
                gid="seed",
                label="individual seeds" if i == 0 else "_nolegend_",
            )
    steps, means, stds = seed_curves([r for r in runs if r.evals])
    if steps:
        lo = [m - s for m, s in zip(means, stds)]
        hi = [m + s for m, s in zip(means, stds)]
        n = sum(1 for r in runs if r.evals)
        ax.fill_between(steps, lo, hi, color="tab:blue", alpha=0.2, gid="band", label="± 1 std over seeds (ddof=0)")
        ax.plot(steps, means, lw=2.2, color="tab:blue", gid="mean", label=f"mean over {n} seeds")
    for j, ref in enumerate(references_for(env_id, references)):
        ax.axhline(
            ref["value"],
            color=colors[(j + 1) % len(colors)],
            lw=1.4,
            gid="reference",
            linestyle="-" if ref["same_version"] else "--",
            label=ref["legend"],
        )
    reached = [r.last_step for r in runs]
    targets = {r.target for r in runs}
    subtitle = f"{len(runs)} seed{'s' if len(runs) != 1 else ''}"
    if any(not r.complete for r in runs):
        subtitle += (
            f"; reached {fmt_steps(min(reached))}–{fmt_steps(max(reached))} of "
            f"{'/'.join(fmt_steps(t) for t in sorted(t for t in targets if t)) or '?'} steps"
        )
    episodes = {r.args.get("eval_episodes") for r in runs}
    ax.set_title(f"{env_id}: SAC deterministic eval return ({subtitle})")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"mean eval return over {'/'.join(str(e) for e in sorted(x for x in episodes if x))} episodes")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, ncol=1, frameon=False)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Machine and versions
# ----------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit(repo: Path = REPO) -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(with_gpu: bool = True) -> dict:
    """This machine: CPU, GPU (torch.cuda), core count, library versions and git commit."""
    import os

    gpu = "none"
    if with_gpu:
        try:
            import torch

            if torch.cuda.is_available():
                gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        except Exception as e:  # a broken CUDA setup should not stop a report
            gpu = f"unknown ({type(e).__name__})"
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "gymnasium": package_version("gymnasium"),
        "mujoco": package_version("mujoco"),
        "git_commit": git_commit(),
    }


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------


def env_section(
    env_id: str, runs: list[Run], references: list[dict], png_name: str | None, without_data: list[int] = ()
) -> list[str]:
    out = [f"## {env_id}", ""]
    if without_data:
        out += [
            f"Seeds planned by the runner without any data yet: {', '.join(map(str, without_data))}; "
            f"the numbers below cover {len(runs)} seed{'s' if len(runs) != 1 else ''}.",
            "",
        ]
    with_eval = [r for r in runs if r.evals]
    a = runs[0].args
    out.append(
        f"Settings (args.json of seed {runs[0].seed}): alpha {a.get('alpha')} (autotune {a.get('autotune')}), "
        f"policy/q lr {a.get('policy_lr')}/{a.get('q_lr')}, batch {a.get('batch_size')}, "
        f"learning_starts {a.get('learning_starts')}, tau {a.get('tau')}, gamma {a.get('gamma')}, "
        f"eval every {a.get('eval_frequency')} steps with {a.get('eval_episodes')} deterministic episodes."
    )
    out.append("")
    incomplete = [r for r in runs if not r.complete]
    if incomplete:
        out.append(
            f"**Not finished:** {len(incomplete)} of {len(runs)} seeds stopped early: "
            + "; ".join(f"seed {r.seed} {reached_label(r)}" for r in incomplete)
            + '. Their "final" is the last evaluation they reached.'
        )
        out.append("")
    if with_eval:
        finals = [r.evals[-1][1] for r in with_eval]
        bests = [max(m for _, m, _ in r.evals) for r in with_eval]
        f_m, f_s = mean_std(finals)
        b_m, b_s = mean_std(bests)
        final_steps = sorted({r.evals[-1][0] for r in with_eval})
        at = (
            fmt_steps(final_steps[0])
            if len(final_steps) == 1
            else f"{fmt_steps(final_steps[0])}–{fmt_steps(final_steps[-1])}"
        )
        out += [
            "| | eval return, mean ± std over seeds (ddof=0) | seeds |",
            "|---|---|---|",
            f"| final (each seed's last evaluation, at step {at}) | {f_m:.1f} ± {f_s:.1f} | {len(with_eval)} |",
            f"| best (each seed's best evaluation) | {b_m:.1f} ± {b_s:.1f} | {len(with_eval)} |",
            "",
        ]
        out.append(
            '"Best" picks the maximum over many evaluations, so it is biased upwards; "final" is the '
            "number to compare with a final-model result."
        )
        out.append("")
    else:
        out += ["No evaluation has been logged yet.", ""]
    out += [
        "| seed | steps | final eval (step) | best eval (step) | SPS (median of charts/SPS) | wall time (sessions) |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r.evals:
            step, mean, std = r.evals[-1]
            best = max(r.evals, key=lambda e: e[1])
            final = f"{mean:.1f} ± {std:.1f} ({fmt_steps(step)})"
            best_s = f"{best[1]:.1f} ({fmt_steps(best[0])})"
        else:
            final = best_s = "–"
        sps = f"{statistics.median(r.sps):.0f}" if r.sps else "–"
        out.append(
            f"| {r.seed} | {reached_label(r)} | {final} | {best_s} | {sps} | "
            f"{fmt_duration(r.wall_time_s)} ({len(r.sessions)}) |"
        )
    out += [
        "",
        "The ± of a seed's eval is the std over its evaluation episodes. Wall time adds up the time "
        "between the first and last event of each process (events file), so the time a run was "
        "stopped is not counted; (n) is the number of processes.",
        "",
    ]
    refs = references_for(env_id, references)
    if refs:
        out += [
            "References (benchmark/references.csv; versions other than this run's are not the same task):",
            "",
            "| result | env | value | steps | what | source |",
            "|---|---|---|---|---|---|",
        ]
        for ref in refs:
            value = f"{ref['value']:.1f}" + (f" ± {ref['std']:.1f}" if ref["std"] is not None else "")
            out.append(
                f"| {ref['label']} | {ref['env']}-{ref['env_version']} | {value} | {ref.get('steps', '')} | "
                f"{ref.get('metric', '')}; {ref.get('note', '')} | {ref['source']} |"
            )
        out.append("")
    if png_name:
        out += [f"![{env_id}]({png_name})", ""]
    return out


def machine_section(state: dict) -> list[str]:
    out = ["## Machine and versions", ""]
    sessions = state.get("sessions") or []
    if sessions:
        out.append("Recorded by benchmark/run.py each time it started runs:")
        out.append("")
        out += [
            "| started | device | CPU | GPU | torch | gymnasium | mujoco | git commit |",
            "|---|---|---|---|---|---|---|---|",
        ]
        seen = set()
        for s in sessions:
            m = s.get("machine", {})
            key = (s.get("device"), m.get("cpu"), m.get("gpu"), m.get("torch"), m.get("gymnasium"), m.get("git_commit"))
            if key in seen:
                continue
            seen.add(key)
            out.append(
                f"| {s.get('started', '?')} | {s.get('device', '?')} | "
                f"{m.get('cpu', '?')} ({m.get('cpu_count', '?')} cores) | "
                f"{m.get('gpu', '?')} | {m.get('torch', '?')} | {m.get('gymnasium', '?')} | {m.get('mujoco', '?')} | "
                f"{m.get('git_commit', '?')} |"
            )
        out.append("")
    else:
        m = machine_info()
        out += [
            "These runs were not started by benchmark/run.py, so the training machine is not recorded. "
            "The machine that wrote this report:",
            "",
            f"- CPU: {m['cpu']} ({m['cpu_count']} cores); GPU: {m['gpu']}",
            f"- torch {m['torch']}, gymnasium {m['gymnasium']}, mujoco {m['mujoco']}, python {m['python']}",
            f"- git commit: {m['git_commit']}",
            "",
        ]
    return out


def shown_path(path: Path) -> str:
    """The runs directory as the report names it: as given when relative, relative to the current directory
    when under it, else its name alone; never the absolute path of the machine the report was made on."""
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return path.name


def write_report(runs_dir: Path, out_dir: Path | None = None, references_path: Path = DEFAULT_REFERENCES) -> dict:
    """Writes eval_returns.csv, one PNG per environment and report.md; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs_dir = Path(runs_dir)
    out_dir = Path(out_dir) if out_dir else runs_dir / "report"
    runs = load_runs(runs_dir)
    if not runs:
        raise SystemExit(f"error: no runs under {runs_dir} (a run directory holds args.json and events.out.tfevents.*)")
    references = load_references(references_path) if references_path else []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "eval_returns.csv", "markdown": out_dir / "report.md", "png": {}}
    write_csv(runs, paths["csv"])
    state = runner_state(runs_dir)
    lines = [
        "# SAC benchmark report",
        "",
        f"Runs: `{shown_path(runs_dir)}`; written {_dt.datetime.now().astimezone().isoformat(timespec='seconds')} "
        f"by benchmark/report.py. Eval curves per seed: `{paths['csv'].name}`.",
        "",
    ]
    planned = state.get("runs", {})
    missing = sorted(set(planned) - {r.name for r in runs})
    if missing:
        lines += [f"Planned by the runner but without data yet: {', '.join(missing)}.", ""]
    for env_id, env_runs in by_env(runs).items():
        fig = plot_env(env_id, env_runs, references)
        png = out_dir / f"{env_id}.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        paths["png"][env_id] = png
        have = {r.seed for r in env_runs}
        without = sorted(
            int(i["seed"]) for i in planned.values() if i.get("env") == env_id and int(i["seed"]) not in have
        )
        lines += env_section(env_id, env_runs, references, png.name, without)
    lines += machine_section(state)
    paths["markdown"].write_text("\n".join(lines) + "\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs_dir", nargs="?", default="runs/benchmark", help="the runner's --output-dir (default: runs/benchmark)"
    )
    parser.add_argument("--out", default=None, help="where to write the report (default: <runs_dir>/report)")
    parser.add_argument("--references", default=str(DEFAULT_REFERENCES), help="reference results CSV ('' for none)")
    args = parser.parse_args(argv)
    paths = write_report(
        Path(args.runs_dir), Path(args.out) if args.out else None, Path(args.references) if args.references else None
    )
    print(f"wrote {paths['csv']}, {paths['markdown']} and {len(paths['png'])} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
