"""benchmark/run.py and benchmark/report.py on tiny Pendulum-v1 runs (CPU, a minute or so).

The runner is run as a real process where its behaviour depends on it (restart, Ctrl-C), and in this
process with a stand-in training script where only its handling of exit codes is under test.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmark"


sys.path.insert(0, str(BENCH))
import report  # noqa: E402  (benchmark/report.py; benchmark/run.py imports it under this name too)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench_run = _load("benchmark_run", BENCH / "run.py")  # not as "run", a name too common to claim

SEEDS = ["1", "2"]
TINY = [
    "--learning-starts",
    "500",
    "--eval-frequency",
    "500",
    "--eval-episodes",
    "2",
    "--batch-size",
    "64",
    "--buffer-size",
    "5000",
]


def runner_command(out: Path, *options: str, script_flags=TINY) -> list[str]:
    """benchmark/run.py over Pendulum-v1 x SEEDS, two CPU runs at once, into out."""
    return [
        sys.executable,
        str(BENCH / "run.py"),
        "--envs",
        "Pendulum-v1",
        "--seeds",
        *SEEDS,
        "--jobs",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        *options,
        "--",
        *script_flags,
    ]


def runner(out: Path, *options: str, script_flags=TINY, timeout=300) -> subprocess.CompletedProcess:
    cmd = runner_command(out, *options, script_flags=script_flags)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def snapshot(directory: Path) -> dict:
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def events_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("events.out.tfevents.*"))


def run_dirs(out: Path) -> list[Path]:
    return [out / f"Pendulum-v1__seed{s}" for s in SEEDS]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Three invocations of the same runner command: total 1000, the same again, then total 1500."""
    out = tmp_path_factory.mktemp("bench") / "runs"
    first = runner(out, "--total-timesteps", "1000")
    ckpt_first = {d.name: report.checkpoint_step(d) for d in run_dirs(out)}
    after_first = {d.name: snapshot(d) for d in run_dirs(out)}
    state_first = json.loads((out / "_runner" / "state.json").read_text())
    again = runner(out, "--total-timesteps", "1000")
    after_again = {d.name: snapshot(d) for d in run_dirs(out)}
    events_before = {d.name: events_files(d) for d in run_dirs(out)}
    extended = runner(out, "--total-timesteps", "1500")
    return {
        "out": out,
        "first": first,
        "ckpt_first": ckpt_first,
        "again": again,
        "extended": extended,
        "after_first": after_first,
        "after_again": after_again,
        "state_first": state_first,
        "events_before": events_before,
    }


def test_first_invocation_trains_every_seed_to_the_total(tiny):
    first = tiny["first"]
    assert first.returncode == 0, first.stdout + first.stderr
    assert list(tiny["ckpt_first"].values()) == [1000, 1000]
    runs = tiny["state_first"]["runs"]
    assert {runs[d.name]["status"] for d in run_dirs(tiny["out"])} == {"done"}
    assert all(runs[d.name]["launches"] == 1 for d in run_dirs(tiny["out"]))


def test_same_command_again_skips_finished_runs(tiny):
    again = tiny["again"]
    assert again.returncode == 0, again.stdout + again.stderr
    for d in run_dirs(tiny["out"]):
        assert re.search(rf"\[{re.escape(d.name)}\] skipped: done", again.stdout), again.stdout
    assert "started" not in again.stdout
    assert tiny["after_again"] == tiny["after_first"]  # not a file of the runs touched


def test_larger_total_continues_each_run_from_its_checkpoint(tiny):
    ext = tiny["extended"]
    assert ext.returncode == 0, ext.stdout + ext.stderr
    state = json.loads((tiny["out"] / "_runner" / "state.json").read_text())
    for d in run_dirs(tiny["out"]):
        assert f"[{d.name}] started from step 1,000" in ext.stdout
        assert report.checkpoint_step(d) == 1500
        assert state["runs"][d.name]["launches"] == 2 and state["runs"][d.name]["target"] == 1500
        new = [f for f in events_files(d) if f not in tiny["events_before"][d.name]]
        assert len(new) == 1
        acc = report.accumulator(new[0])
        steps = [e.step for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]
        assert steps and min(steps) > 1000  # the resumed process logged nothing from step 0 again
        log = (tiny["out"] / "_runner" / "logs" / f"{d.name}.log").read_text()
        assert "resumed" in log and "at step 1000" in log


def test_status_lists_every_run_with_its_steps(tiny):
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--envs",
            "Pendulum-v1",
            "--seeds",
            "1",
            "2",
            "3",
            "--output-dir",
            str(tiny["out"]),
            "--total-timesteps",
            "1500",
            "--status",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.startswith("Pendulum")}
    assert rows["Pendulum-v1__seed1"][1:4] == ["done", "1,500", "1,500"]
    assert rows["Pendulum-v1__seed2"][1:4] == ["done", "1,500", "1,500"]
    assert rows["Pendulum-v1__seed3"][1:3] == ["pending", "0"]


@pytest.fixture(scope="module")
def written_report(tiny, tmp_path_factory):
    refs = tmp_path_factory.mktemp("refs") / "references.csv"
    refs.write_text(
        "env,env_version,label,value,std,steps,metric,source,note\n"
        "Pendulum,v1,same version,-1200,50,1500,test,written by the test,\n"
        "Pendulum,v0,older version,-1300,,1500,test,written by the test,\n"
        "Ant,v5,another env,3000,10,1000000,test,written by the test,\n"
    )
    paths = report.write_report(tiny["out"], tiny["out"].parent / "report", refs)
    return paths, refs


def eval_lines(log: Path) -> dict[int, float]:
    """'step 500: eval return -1503.2 ± 48.8 over 2 episodes' printed by the training script."""
    return {
        int(m.group(1)): float(m.group(2))
        for m in re.finditer(r"step (\d+): eval return (-?[\d.]+) ±", log.read_text())
    }


def test_report_csv_has_one_row_per_seed_and_evaluation(tiny, written_report):
    paths, _ = written_report
    with open(paths["csv"], newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["env", "seed", "step", "mean_return", "std_return"]
    assert sorted((r["seed"], int(r["step"])) for r in rows) == [(s, n) for s in SEEDS for n in (500, 1000, 1500)]
    for seed in SEEDS:
        printed = eval_lines(tiny["out"] / "_runner" / "logs" / f"Pendulum-v1__seed{seed}.log")
        for r in rows:
            if r["seed"] == seed:
                assert r["env"] == "Pendulum-v1"
                assert float(r["mean_return"]) == pytest.approx(printed[int(r["step"])], abs=0.051)
                assert math.isfinite(float(r["std_return"]))


def test_report_names_the_runs_directory_relative_not_absolute(tiny, written_report):
    paths, _ = written_report
    text = paths["markdown"].read_text()
    assert str(tiny["out"]) not in text  # the machine's absolute path would leak into a committed report
    assert f"Runs: `{tiny['out'].name}`;" in text  # outside the current directory: its name alone
    assert report.shown_path(Path("runs/benchmark")) == "runs/benchmark"
    assert report.shown_path(Path.cwd() / "runs" / "benchmark") == str(Path("runs/benchmark"))


def test_report_png_is_a_readable_image(written_report):
    import matplotlib.image as mpimg

    png = written_report[0]["png"]["Pendulum-v1"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


def test_plot_has_seed_lines_mean_band_and_labelled_references(tiny, written_report):
    _, refs = written_report
    runs = report.load_runs(tiny["out"])
    fig = report.plot_env("Pendulum-v1", runs, report.load_references(refs))
    ax = fig.axes[0]
    by_gid: dict[str, list] = {}
    for artist in ax.get_children():
        if artist.get_gid():
            by_gid.setdefault(artist.get_gid(), []).append(artist)
    assert len(by_gid["seed"]) == 2 and len(by_gid["mean"]) == 1 and len(by_gid["band"]) == 1
    mean_line = by_gid["mean"][0]
    assert list(mean_line.get_xdata()) == [500, 1000, 1500]
    finals = [r.evals[-1][1] for r in runs]
    assert mean_line.get_ydata()[-1] == pytest.approx(sum(finals) / 2)
    refs_drawn = {line.get_label(): line for line in by_gid["reference"]}
    assert len(refs_drawn) == 2  # the Ant-v5 row is not drawn on Pendulum
    same = next(line for label, line in refs_drawn.items() if "same version" in label)
    older = next(line for label, line in refs_drawn.items() if "older version" in label)
    assert same.get_linestyle() == "-" and "Pendulum-v1" in same.get_label()
    assert older.get_linestyle() == "--" and "(v0, not v1)" in older.get_label()
    assert "std over seeds" in by_gid["band"][0].get_label()


def test_report_markdown_lists_each_seed_and_the_environment(tiny, written_report):
    text = written_report[0]["markdown"].read_text()
    assert "## Pendulum-v1" in text
    runs = report.load_runs(tiny["out"])
    for r in runs:
        step, mean, std = r.evals[-1]
        row = f"| {r.seed} | 1,500 steps (complete) | {mean:.1f} ± {std:.1f} (1,500) |"
        assert re.search("^" + re.escape(row), text, re.M), text
    finals = [r.evals[-1][1] for r in runs]
    m, s = report.mean_std(finals)
    assert f"{m:.1f} ± {s:.1f}" in text
    assert "torch" in text and "gymnasium" in text and "git commit" in text


def test_ctrl_c_is_forwarded_once_so_every_run_checkpoints(tmp_path):
    out = tmp_path / "runs"
    logs = [out / "_runner" / "logs" / f"Pendulum-v1__seed{s}.log" for s in SEEDS]
    flags = [
        "--learning-starts",
        "1000000",
        "--eval-frequency",
        "1000",
        "--eval-episodes",
        "1",
        "--buffer-size",
        "5000",
    ]
    cmd = runner_command(out, script_flags=flags)
    # its own process group, signalled as a whole below, like a terminal's Ctrl-C: the runs must not
    # get that SIGINT as well as the runner's, or they would quit without a checkpoint (exit 130)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True
    )
    try:
        deadline = time.time() + 120
        while not all(p.exists() and "step 1000: eval" in p.read_text() for p in logs):  # both are training
            assert proc.poll() is None and time.time() < deadline, "the runs did not get going"
            time.sleep(0.2)
        pids = [info["pid"] for info in json.loads((out / "_runner" / "state.json").read_text())["runs"].values()]
        assert len(pids) == 2 and all(os.getpgid(pid) != os.getpgid(proc.pid) for pid in pids)
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, output
    state = json.loads((out / "_runner" / "state.json").read_text())
    for seed, log in zip(SEEDS, logs):
        name = f"Pendulum-v1__seed{seed}"
        info = state["runs"][name]
        assert (info["status"], info["exit_code"]) == ("interrupted", 75)
        step = report.checkpoint_step(out / name)
        assert step is not None and 1000 <= step < 1_000_000
        assert "stopped by SIGINT" in log.read_text()
        assert re.search(rf"{name}\s+interrupted\s+{step:,}\s+1,000,000", output), output
    # the report says how far they got, not that they finished
    text = report.write_report(out, tmp_path / "report", None)["markdown"].read_text()
    for seed in SEEDS:
        step = report.checkpoint_step(out / f"Pendulum-v1__seed{seed}")
        assert f"reached {step:,} of 1,000,000 steps" in text


FAKE_SCRIPT = """
import os, signal, sys
seed = sys.argv[sys.argv.index("--seed") + 1]
with open(os.environ["FAKE_LAUNCHES"], "a") as f:
    f.write(seed + "\\n")
if seed == "4":
    os.kill(os.getpid(), signal.SIGKILL)
code = {"1": 3, "2": 2, "3": 75}[seed]
print(f"error: fake exit {code}", file=sys.stderr)
sys.exit(code)
"""


def test_exit_codes_are_reported_and_diverged_runs_are_not_retried(tmp_path, monkeypatch, capsys):
    handler = signal.getsignal(signal.SIGINT)
    fake = tmp_path / "fake_sac.py"
    fake.write_text(FAKE_SCRIPT)
    launches = tmp_path / "launches.txt"
    monkeypatch.setattr(bench_run, "SCRIPT", fake)
    monkeypatch.setenv("FAKE_LAUNCHES", str(launches))
    out = tmp_path / "runs"
    argv = [
        "--envs",
        "Pendulum-v1",
        "--seeds",
        "1",
        "2",
        "3",
        "4",
        "--jobs",
        "4",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--total-timesteps",
        "100",
    ]

    assert bench_run.main(argv) == 1  # a failure and a divergence
    state = json.loads((out / "_runner" / "state.json").read_text())["runs"]
    status = {name.split("seed")[1]: (info["status"], info["exit_code"]) for name, info in state.items()}
    assert status == {"1": ("diverged", 3), "2": ("failed", 2), "3": ("interrupted", 75), "4": ("killed", -9)}
    assert "fake exit 3" in state["Pendulum-v1__seed1"]["message"]
    printed = capsys.readouterr().out
    assert "[Pendulum-v1__seed1] DIVERGED" in printed and "[Pendulum-v1__seed2] FAILED (exit 2)" in printed

    # the same command again: everything but the diverged run starts again
    assert bench_run.main(argv) == 1
    assert sorted(launches.read_text().split()) == ["1", "2", "2", "3", "3", "4", "4"]  # seed 1 left alone
    assert "[Pendulum-v1__seed1] skipped: diverged" in capsys.readouterr().out

    bench_run.main(argv + ["--retry-failed"])
    assert launches.read_text().split().count("1") == 2
    assert signal.getsignal(signal.SIGINT) is handler  # the runner put Ctrl-C handling back


def test_runner_refuses_flags_it_sets_itself(tmp_path, capsys):
    base = ["--envs", "Pendulum-v1", "--output-dir", str(tmp_path / "runs")]
    assert bench_run.main(base + ["--", "--seed", "3"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert bench_run.main(base + ["--", "--checkpoint-frequency", "0"]) == 2
    assert bench_run.main(base + ["--", "--total-timesteps=5"]) == 2
    assert not (tmp_path / "runs").exists()


def test_settings_are_the_design_notebook_ones_and_script_flags_override_them(tmp_path):
    args, extras = bench_run.parse(
        [
            "--envs",
            "Ant-v5",
            "Humanoid-v5",
            "--seeds",
            "1",
            "--device",
            "cuda:0,cuda:1",
            "--",
            "--q-lr",
            "1e-3",
            "--no-autotune",
        ]
    )
    specs = bench_run.plan(args, json.loads(bench_run.CONFIGS.read_text()), extras)
    commands = {s.env: bench_run.command(s, tmp_path) for s in specs}

    def flag(cmd, name):
        return cmd[cmd.index(name) + 1]

    assert flag(commands["Ant-v5"], "--alpha") == "1.0" and flag(commands["Humanoid-v5"], "--alpha") == "0.1"
    for env, cmd in commands.items():
        assert flag(cmd, "--total-timesteps") == "1000000" and flag(cmd, "--learning-starts") == "25000"
        assert flag(cmd, "--batch-size") == "256" and float(flag(cmd, "--policy-lr")) == 3e-4
        assert float(flag(cmd, "--tau")) == 0.005 and float(flag(cmd, "--gamma")) == 0.99
        assert flag(cmd, "--eval-frequency") == "10000" and flag(cmd, "--eval-episodes") == "10"
        assert flag(cmd, "--q-lr") == "1e-3" and cmd.count("--q-lr") == 1  # overridden, not repeated
        assert "--no-autotune" in cmd and "--autotune" not in cmd
        assert flag(cmd, "--resume") == "auto" and flag(cmd, "--run-name") == f"{env}__seed1"
    assert [flag(commands[e], "--device") for e in ("Ant-v5", "Humanoid-v5")] == ["cuda:0", "cuda:1"]


def test_references_name_a_source_and_version_for_every_number():
    path = BENCH / "references.csv"
    rows = report.load_references(path)
    assert rows
    for row in rows:
        assert re.fullmatch(r"v\d+", row["env_version"]) and row["label"] and row["metric"]
        assert math.isfinite(row["value"]) and int(row["steps"]) > 0
    notebook = {(r["env"], r["env_version"]): (r["value"], r["std"]) for r in rows if r["label"] == "design notebook"}
    assert notebook == {("Ant", "v5"): (3808.6, 903.1), ("Humanoid", "v5"): (4214.8, 1075.4)}
    for env in ("Ant-v5", "Humanoid-v5"):
        drawn = report.references_for(env, rows)
        assert {r["same_version"] for r in drawn} == {True, False}
        assert all(r["same_version"] == (r["env_version"] == "v5") for r in drawn)
        assert all(("not v5" in r["legend"]) != r["same_version"] for r in drawn)


def test_slurm_dry_run_writes_one_array_task_per_run_with_the_local_command(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--envs", "Ant-v5", "Humanoid-v5", "--seeds", "1", "2", "--output-dir", str(out), "--slurm", "--dry-run"]
    argv += ["--partition", "gpu", "--time", "08:00:00", "--gpus-per-task", "1", "--cpus-per-task", "4"]
    assert bench_run.main(argv + ["--max-parallel", "3", "--", "--q-lr", "1e-3"]) == 0
    printed = capsys.readouterr().out
    script = (out / "_slurm" / "sac_array.sh").read_text()
    assert printed.startswith(script) and printed.rstrip().endswith(f"--array=0,1,2,3%3 {out}/_slurm/sac_array.sh")
    directives = re.findall(r"^#SBATCH (\S+)$", script, re.M)
    for d in [
        "--array=0-3%3",
        "--partition=gpu",
        "--time=08:00:00",
        "--gpus-per-task=1",
        "--cpus-per-task=4",
        "--mem=6G",
        "--signal=B:USR1@300",
        "--requeue",
        f"--output={out}/_slurm/logs/slurm-%A_%a.out",
    ]:
        assert d in directives, directives
    args, extras = bench_run.parse(argv + ["--", "--q-lr", "1e-3"])
    specs = bench_run.plan(args, json.loads(bench_run.CONFIGS.read_text()), extras)
    cases = re.findall(r"^(\d+)\) NAME=(\S+); CMD=\((.*)\) ;;$", script, re.M)
    assert {int(i): (n, c) for i, n, c in cases} == {
        i: (s.name, shlex.join(bench_run.command(s, out))) for i, s in enumerate(specs)
    }  # the same command as a local run
    assert not (out / "_runner").exists()  # nothing submitted, nothing recorded


FAKE_RUN = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
open(os.environ["FAKE_READY"], "w").close()
for _ in range(600):
    if got:
        break
    time.sleep(0.05)
time.sleep(1)  # a second SIGTERM, if one comes, arrives in this second
print(f"fake run: {len(got)} SIGTERM", flush=True)
sys.exit(int(os.environ["FAKE_EXIT"]) if got else 0)
"""
FAKE_SCONTROL = """#!/bin/sh
echo "$*" >> "$FAKE_SCONTROL_LOG"
[ "$1" = show ] && echo "JobId=8 ArrayJobId=7 ArrayTaskId=0 JobState=$FAKE_STATE Reason=None"
exit 0
"""


@pytest.mark.parametrize(
    "case, signal_to, state, run_exit, requeued",
    [
        ("time limit near: USR1 to the batch shell", "shell:USR1", "RUNNING", 75, True),
        ("SIGTERM to the batch shell alone", "shell:TERM", "RUNNING", 75, True),
        ("Slurm requeues or preempts: SIGTERM to every process", "group:TERM", "COMPLETING", 75, False),
        ("the run diverges while stopping", "shell:USR1", "RUNNING", 3, False),
    ],
)
def test_slurm_task_passes_exactly_one_sigterm_on_and_requeues_only_itself(
    tmp_path, monkeypatch, case, signal_to, state, run_exit, requeued
):
    """The task body (benchmark/slurm_task.sh) without a cluster: a stand-in run and a stand-in scontrol."""
    (tmp_path / "fake_sac.py").write_text(FAKE_RUN)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scontrol").write_text(FAKE_SCONTROL)
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    monkeypatch.setattr(bench_run, "SCRIPT", tmp_path / "fake_sac.py")
    out = tmp_path / "runs"
    assert (
        bench_run.main(["--envs", "Pendulum-v1", "--seeds", "1", "--output-dir", str(out), "--slurm", "--dry-run"]) == 0
    )
    env = dict(
        os.environ,
        SLURM_ARRAY_JOB_ID="7",
        SLURM_ARRAY_TASK_ID="0",
        SLURM_JOB_ID="8",
        FAKE_STATE=state,
        FAKE_EXIT=str(run_exit),
        FAKE_READY=str(tmp_path / "ready"),
        FAKE_SCONTROL_LOG=str(tmp_path / "calls"),
        PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    )
    task = subprocess.Popen(["bash", str(out / "_slurm" / "sac_array.sh")], env=env, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "ready").exists():
            assert task.poll() is None and time.time() < deadline, "the stand-in run did not start"
            time.sleep(0.05)
        where, name = signal_to.split(":")
        sig = getattr(signal, f"SIG{name}")
        os.killpg(task.pid, sig) if where == "group" else os.kill(task.pid, sig)
        assert task.wait(timeout=60) == run_exit
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
    text = (out / "_slurm" / "logs" / "Pendulum-v1__seed1.log").read_text()
    assert "fake run: 1 SIGTERM" in text, text  # exactly one: a second would stop a real run without its checkpoint
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    assert ("requeue 7_0" in calls) == requeued, calls  # the array task itself, never the whole array
    assert re.search(rf"^\[slurm 7_0 \S+\] exit {run_exit}", text, re.M), text
    assert bench_run.slurm.last_exit(out, "Pendulum-v1__seed1") == run_exit


@pytest.mark.parametrize(
    ("device", "smi", "listed", "jobs"),
    [
        ("auto", "/usr/bin/nvidia-smi", "GPU 0: NVIDIA H200 (UUID: x)\n", 4),
        ("cuda", "/usr/bin/nvidia-smi", "GPU 0: A (UUID: x)\nGPU 1: B (UUID: y)\n", 1),  # several GPUs: unmeasured
        ("cpu", "/usr/bin/nvidia-smi", "GPU 0: NVIDIA H200 (UUID: x)\n", 1),
        ("auto", None, "", 1),
    ],
)
def test_jobs_default_follows_the_gpu_measurement(monkeypatch, device, smi, listed, jobs):
    """--jobs defaults to 4 on one NVIDIA GPU (gpu_check on an H200: 4 runs make 91% of 8's total), else 1."""
    monkeypatch.setattr(bench_run.shutil, "which", lambda name: smi if name == "nvidia-smi" else None)
    monkeypatch.setattr(bench_run.subprocess, "run", lambda *a, **kw: subprocess.CompletedProcess(a, 0, listed, ""))
    args, _ = bench_run.parse(["--device", device])
    assert args.jobs == jobs
    assert bench_run.parse(["--device", device, "--jobs", "2"])[0].jobs == 2
