"""benchmark/run.py and benchmark/report.py: tiny Pendulum-v1 runs of the real script (CPU, about a minute), and a
stand-in script that records its arguments where only the runner's handling of them is under test."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import report  # benchmark/report.py (pyproject.toml puts benchmark/ on the path)
import run as bench_run  # benchmark/run.py

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmark"

SEEDS = ["1", "2"]
TINY = "--learning-starts 500 --eval-frequency 500 --eval-episodes 2 --batch-size 64 --buffer-size 5000".split()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # set by the user: no --num-threads


def runner_command(out: Path, *options: str, flags=TINY) -> list[str]:
    cmd = [sys.executable, str(BENCH / "run.py"), "--envs", "Pendulum-v1", "--seeds", *SEEDS, "--jobs", "2"]
    return cmd + ["--device", "cpu", "--output-dir", str(out), *options, "--", *flags]


def runner(out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(runner_command(out, *options), capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size) for p in directory.rglob("*")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Three invocations of the same runner command: total 1000, the same again, then total 1500."""
    out = tmp_path_factory.mktemp("bench") / "runs"
    runs = [out / f"Pendulum-v1__seed{s}" for s in SEEDS]
    res = {"out": out, "runs": runs, "first": runner(out, "--total-timesteps", "1000")}
    res["ckpt_first"], res["before"] = [report.checkpoint_step(d) for d in runs], [snapshot(d) for d in runs]
    res["again"] = runner(out, "--total-timesteps", "1000")
    res["after_again"], res["events"] = [snapshot(d) for d in runs], [set(d.glob("events.*")) for d in runs]
    res["extended"] = runner(out, "--total-timesteps", "1500")
    return res


def test_same_command_trains_then_skips_then_a_larger_total_continues(tiny):
    assert tiny["first"].returncode == 0 and tiny["ckpt_first"] == [1000, 1000], tiny["first"].stdout
    again = tiny["again"]
    assert again.returncode == 0 and "started" not in again.stdout, again.stdout + again.stderr
    assert all(f"[{d.name}] skipped: done" in again.stdout for d in tiny["runs"])
    assert tiny["after_again"] == tiny["before"]  # not a file of the runs touched
    ext = tiny["extended"]
    assert ext.returncode == 0, ext.stdout + ext.stderr
    for d, before in zip(tiny["runs"], tiny["events"]):
        assert f"[{d.name}] started from step 1,000" in ext.stdout and report.checkpoint_step(d) == 1500
        (new,) = set(d.glob("events.*")) - before
        acc = report.accumulator(new)
        assert min(e.step for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)) > 1000  # not from 0 again
        log = (tiny["out"] / "_runner" / "logs" / f"{d.name}.log").read_text()
        assert log.count(" exit 0\n") == 2 and "resumed" in log
    cmd = [sys.executable, str(BENCH / "run.py"), "--envs", "Pendulum-v1", "--seeds", "1", "2", "3", "--status"]
    cmd += ["--output-dir", str(tiny["out"]), "--total-timesteps", "1500"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
    rows = {line.split()[0]: line.split()[1:4] for line in res.stdout.splitlines() if line.startswith("Pendulum")}
    assert rows["Pendulum-v1__seed1"] == rows["Pendulum-v1__seed2"] == ["done", "1,500", "1,500"], res.stdout
    assert rows["Pendulum-v1__seed3"][:2] == ["pending", "0"]


def test_report_writes_the_csv_the_plot_and_the_markdown_of_the_runs(tiny, tmp_path):
    refs = tmp_path / "references.csv"
    refs.write_text(
        "env,env_version,label,value,std,steps,metric,source,note\nPendulum,v1,same version,-1200,50,1500,t,test,\n"
        "Pendulum,v0,older version,-1300,,1500,t,test,\nAnt,v5,another env,3000,10,1000000,t,test,\n"
    )
    paths = report.write_report(tiny["out"], tmp_path / "report", refs)
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["env", "seed", "step", "mean_return", "std_return"]
    assert sorted((r["seed"], int(r["step"])) for r in rows) == [(s, n) for s in SEEDS for n in (500, 1000, 1500)]
    for r in rows:  # the numbers the runs printed
        log = (tiny["out"] / "_runner" / "logs" / f"Pendulum-v1__seed{r['seed']}.log").read_text()
        printed = dict(re.findall(r"step (\d+): eval return (-?[\d.]+) ±", log))
        assert float(r["mean_return"]) == pytest.approx(float(printed[r["step"]]), abs=0.051)
    import matplotlib.image as mpimg

    assert mpimg.imread(paths["png"]["Pendulum-v1"]).shape[0] > 200
    runs = report.load_runs(tiny["out"])
    drawn: dict[str, list] = {}
    for artist in report.plot_env("Pendulum-v1", runs, report.load_references(refs)).axes[0].get_children():
        drawn.setdefault(artist.get_gid(), []).append(artist)
    assert len(drawn["seed"]) == 2 and len(drawn["band"]) == 1 and "std over seeds" in drawn["band"][0].get_label()
    (mean,) = drawn["mean"]
    assert list(mean.get_xdata()) == [500, 1000, 1500]
    assert mean.get_ydata()[-1] == pytest.approx(sum(r.evals[-1][1] for r in runs) / 2)
    same, older = "same version, Pendulum-v1: -1200 ± 50 (t)", "(v0, not v1) older version, Pendulum-v0: -1300 (t)"
    assert {line.get_label(): line.get_linestyle() for line in drawn["reference"]} == {same: "-", older: "--"}
    text = paths["markdown"].read_text()
    for r in runs:
        step, mean, std = r.evals[-1]
        assert f"| {r.seed} | 1,500 steps (complete) | {mean:.1f} ± {std:.1f} (1,500) |" in text
    assert "## Pendulum-v1" in text and "git commit" in text and "| cpu |" in text  # the runner's session
    assert "random phase" not in text
    assert str(tiny["out"]) not in text and f"Runs: `{tiny['out'].name}`" in text  # no absolute path of this machine
    assert report.shown_path(Path.cwd() / "runs" / "b") == str(Path("runs/b"))


def test_ctrl_c_is_forwarded_once_so_every_run_checkpoints(tmp_path):
    out, flags = tmp_path / "runs", "--learning-starts 1000000 --eval-frequency 1000 --eval-episodes 1".split()
    logs = [out / "_runner" / "logs" / f"Pendulum-v1__seed{s}.log" for s in SEEDS]
    # its own process group, signalled as a whole like a terminal's Ctrl-C: the runs must not get that SIGINT
    # as well as the runner's, or they would quit without a checkpoint
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    proc = subprocess.Popen(runner_command(out, flags=flags + ["--buffer-size", "5000"]), **kw)
    try:
        deadline = time.time() + 120
        while not all(p.exists() and "step 1000: eval" in p.read_text() for p in logs):  # both are training
            assert proc.poll() is None and time.time() < deadline, "the runs did not get going"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, output
    text = report.write_report(out, tmp_path / "report", None)["markdown"].read_text()
    for seed, log in zip(SEEDS, logs):
        step = report.checkpoint_step(out / f"Pendulum-v1__seed{seed}")
        assert step is not None and 1000 <= step < 1_000_000 and log.read_text().endswith(" exit 75\n")
        assert "stopped by SIGINT" in log.read_text() and f"reached {step:,} of 1,000,000 steps" in text
        assert f"| {seed} | reached {step:,} of 1,000,000 steps; never left the random phase |" in text
        assert re.search(rf"seed{seed}\s+interrupted\s+{step:,}\s+1,000,000", output), output


FAKE_SCRIPT = """
import json, os, signal, sys
seed = sys.argv[sys.argv.index("--seed") + 1]
with open(os.environ["FAKE_LAUNCHES"], "a") as f:
    f.write(json.dumps({"seed": seed, "argv": sys.argv[1:], "group": os.environ.get("WANDB_RUN_GROUP")}) + "\\n")
if seed == "4":
    os.kill(os.getpid(), signal.SIGKILL)
print(f"error: fake exit {seed}", file=sys.stderr)
sys.exit({"1": 3, "2": 2, "3": 75}.get(seed, 0))
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """main(*argv) -> (exit code, the stand-in's launches so far)."""
    (tmp_path / "fake_sac.py").write_text(FAKE_SCRIPT)
    monkeypatch.setattr(bench_run, "SCRIPT", tmp_path / "fake_sac.py")
    monkeypatch.setenv("FAKE_LAUNCHES", str(tmp_path / "launches"))
    base = f"--envs Pendulum-v1 --device cpu --output-dir {tmp_path / 'runs'} --total-timesteps 9".split()

    def main(*argv: str) -> tuple[int, list[dict]]:
        code = bench_run.main(base + list(argv))
        lines = (tmp_path / "launches").read_text().splitlines() if (tmp_path / "launches").exists() else []
        return code, [json.loads(line) for line in lines]

    return main


def test_exit_codes_are_reported_and_diverged_runs_are_not_retried(fake, capsys):
    handler = signal.getsignal(signal.SIGINT)
    grid = ["--seeds", "1", "2", "3", "4", "--jobs", "4"]
    assert fake(*grid)[0] == 1  # a failure and a divergence
    printed = capsys.readouterr().out
    words = ["DIVERGED (exit 3)", "FAILED (exit 2)", "interrupted (exit 75)", "killed (exit -9)"]
    assert all(f"[Pendulum-v1__seed{i + 1}] {w}" in printed for i, w in enumerate(words)), printed
    assert "exit 3: error: fake exit 1" in printed  # the run's own error line
    code, launches = fake(*grid)  # the same command again: everything but the diverged run starts again
    assert code == 1 and sorted(x["seed"] for x in launches) == ["1", "2", "2", "3", "3", "4", "4"]
    assert "[Pendulum-v1__seed1] skipped: diverged" in capsys.readouterr().out
    assert [x["seed"] for x in fake(*grid, "--retry-failed")[1]].count("1") == 2
    assert signal.getsignal(signal.SIGINT) is handler  # the runner put Ctrl-C handling back


def test_track_passes_wandb_flags_and_one_group_to_every_run(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    code, launches = fake("--seeds", "5", "6", "--track", "--wandb-project-name", "P", "--wandb-entity", "E")
    assert code == 75 and len(launches) == 2  # exit 0 without a checkpoint: not done
    for x in launches:
        assert x["group"] == "runs" and "--track --wandb-project-name P --wandb-entity E" in shlex.join(x["argv"])
    assert all("--track" not in x["argv"] and x["group"] is None for x in fake("--seeds", "7")[1][2:])
    fake("--seeds", "5", "--track", "--slurm", "--dry-run")
    script = (tmp_path / "runs" / "_slurm" / "sac_array.sh").read_text()
    assert "\nexport WANDB_RUN_GROUP=runs " in script and "--track --wandb-project-name sac_continuous)" in script


def test_jobs_split_the_cores_into_num_threads_unless_omp_num_threads_is_set(fake, tmp_path, monkeypatch, capsys):
    def threads(*argv: str) -> set:
        capsys.readouterr()
        fake("--seeds", "5", *argv)
        commands = capsys.readouterr().out
        return {m for m in re.findall(r"--num-threads (\d+)", commands)} or ({"none"} if "fake_sac" in commands else {})

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(bench_run.os, "cpu_count", lambda: 8)
    assert threads("--jobs", "2", "--dry-run") == {"4"} and threads("--jobs", "3", "--dry-run") == {"2"}
    assert threads("--jobs", "1", "--dry-run") == {"none"}
    assert threads("--jobs", "2", "--dry-run", "--", "--num-threads", "3") == {"3"}  # the user's wins
    assert threads("--slurm", "--dry-run", "--cpus-per-task", "6") == {"6"}
    assert "#SBATCH --cpus-per-task=6" in (tmp_path / "runs" / "_slurm" / "sac_array.sh").read_text()
    assert threads("--slurm", "--dry-run") == {"none"}
    # one NVIDIA GPU: --jobs defaults to 4 (docs/performance.md); a stand-in nvidia-smi lists it
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: x)'\n")
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert threads("--device", "auto", "--dry-run") == {"2"} and threads("--dry-run") == {"none"}  # (--device cpu)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads("--jobs", "2", "--dry-run") == {"none"}


def test_runner_refuses_flags_it_sets_itself_and_uses_the_notebook_settings(fake, tmp_path, capsys):
    for flags in (["--seed", "3"], ["--checkpoint-frequency", "0"], ["--total-timesteps=5"], ["--track"]):
        assert fake("--", *flags)[0] == 2 and capsys.readouterr().err.startswith("error: --")
    assert not (tmp_path / "runs").exists()
    bench_run.main(["--envs", "Ant-v5", "Humanoid-v5", "--seeds", "1", "--device", "cuda:0,cuda:1", "--dry-run"]
                   + ["--output-dir", str(tmp_path / "o"), "--", "--q-lr", "1e-3", "--no-autotune"])  # fmt: skip
    cmds = {c[c.index("--env-id") + 1]: c for c in map(shlex.split, capsys.readouterr().out.splitlines())}
    flag = lambda env, name: cmds[env][cmds[env].index(name) + 1]  # noqa: E731
    assert flag("Ant-v5", "--alpha") == "1.0" and flag("Humanoid-v5", "--alpha") == "0.1"
    assert [flag(e, "--device") for e in ("Ant-v5", "Humanoid-v5")] == ["cuda:0", "cuda:1"]
    for env, cmd in cmds.items():
        assert flag(env, "--total-timesteps") == "1000000" and flag(env, "--learning-starts") == "25000"
        assert flag(env, "--batch-size") == "256" and flag(env, "--eval-frequency") == "10000"
        assert flag(env, "--q-lr") == "1e-3" and cmd.count("--q-lr") == 1 and "--autotune" not in cmd
        assert flag(env, "--resume") == "auto" and flag(env, "--run-name") == f"{env}__seed1"


def test_a_total_within_the_random_phase_is_warned_about(fake, capsys):
    fake("--seeds", "5", "--dry-run")  # 9 steps, configs.json's 25,000 random ones
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: Pendulum-v1: ") and "never leave the random phase" in line, line
    fake("--seeds", "5", "--dry-run", "--", "--learning-starts", "8")
    assert capsys.readouterr().err == ""


def test_references_name_a_source_and_version_for_every_number():
    rows = report.load_references(BENCH / "references.csv")
    assert all(re.fullmatch(r"v\d+", r["env_version"]) and r["source"] and int(r["steps"]) > 0 for r in rows)
    notebook = {(r["env"], r["env_version"]): (r["value"], r["std"]) for r in rows if r["label"] == "design notebook"}
    assert notebook == {("Ant", "v5"): (3808.6, 903.1), ("Humanoid", "v5"): (4214.8, 1075.4)}
    for drawn in (report.references_for(env, rows) for env in ("Ant-v5", "Humanoid-v5")):
        assert {r["same_version"] for r in drawn} == {True, False}  # a v5 one and others, which say "not v5"
        assert all(("not v5" in r["legend"]) != r["same_version"] for r in drawn)


def test_slurm_dry_run_writes_one_array_task_per_run_with_the_local_command(fake, tmp_path, capsys):
    argv = ["--seeds", "1", "2", "--slurm", "--dry-run", "--partition", "gpu", "--time", "08:00:00"]
    assert fake(*argv, "--gpus-per-task", "1", "--max-parallel", "3", "--", "--q-lr", "1e-3")[0] == 0
    out = tmp_path / "runs"
    script, printed = (out / "_slurm" / "sac_array.sh").read_text(), capsys.readouterr().out
    assert printed.startswith(script) and printed.rstrip().endswith(f"--array=0,1%3 {out}/_slurm/sac_array.sh")
    directives = re.findall(r"^#SBATCH (\S+)$", script, re.M)
    for d in ["--array=0-1%3", "--partition=gpu", "--time=08:00:00", "--gpus-per-task=1", "--mem=6G", "--requeue"]:
        assert d in directives, directives
    assert "--signal=B:USR1@300" in directives and f"--output={out}/_slurm/logs/slurm-%A_%a.out" in directives
    fake("--seeds", "1", "2", "--dry-run", "--", "--q-lr", "1e-3")
    local = capsys.readouterr().out.splitlines()
    assert re.findall(r"^\d\) NAME=\S+; CMD=\((.*)\) ;;$", script, re.M) == local  # the same command as a local run
    assert not (out / "_runner").exists()  # nothing submitted, nothing recorded


FAKE_RUN = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
open(os.environ["FAKE_READY"], "w").close()
while not got and time.sleep(0.05) is None:
    pass
time.sleep(1)  # a second SIGTERM, if one comes, arrives in this second
print(f"fake run: {len(got)} SIGTERM", flush=True)
sys.exit(int(os.environ["FAKE_EXIT"]))
"""
FAKE_SCONTROL = """#!/bin/sh
echo "$*" >> "$FAKE_SCONTROL_LOG"
[ "$1" = show ] && echo "JobId=8 ArrayJobId=7 ArrayTaskId=0 JobState=$FAKE_STATE Reason=None"
exit 0
"""


@pytest.mark.parametrize(  # the time limit near; a SIGTERM to the batch shell alone; Slurm requeues or preempts
    "signal_to, state, run_exit, failed_before, requeued",  # (SIGTERM to every process); the run diverges while
    [("shell:USR1", "RUNNING", 75, 0, True), ("shell:TERM", "RUNNING", 75, 0, True),  # stopping; it fails to write
     ("group:TERM", "COMPLETING", 75, 0, False), ("shell:USR1", "RUNNING", 3, 0, False),  # its checkpoint (74) the
     ("shell:USR1", "RUNNING", 74, 1, True), ("shell:USR1", "RUNNING", 74, 2, False)],  # 2nd and 3rd start in a row
)  # fmt: skip
def test_slurm_task_passes_exactly_one_sigterm_on_and_requeues_only_itself(
    fake, tmp_path, capsys, signal_to, state, run_exit, failed_before, requeued
):
    """The task body (benchmark/slurm_task.sh) without a cluster: a stand-in run and a stand-in scontrol."""
    (tmp_path / "fake_sac.py").write_text(FAKE_RUN)
    (tmp_path / "runs" / "_slurm" / "logs").mkdir(parents=True)  # the task's earlier starts without a new checkpoint
    (tmp_path / "runs" / "_slurm" / "logs" / "Pendulum-v1__seed1.starts").write_text(f"7_0 {failed_before}\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scontrol").write_text(FAKE_SCONTROL)
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    assert fake("--seeds", "1", "--slurm", "--dry-run")[0] == 0
    env = dict(os.environ, SLURM_ARRAY_JOB_ID="7", SLURM_ARRAY_TASK_ID="0", SLURM_JOB_ID="8", FAKE_STATE=state)
    env |= dict(FAKE_EXIT=str(run_exit), FAKE_READY=str(tmp_path / "ready"), FAKE_SCONTROL_LOG=str(tmp_path / "calls"))
    env["PATH"] = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    out = tmp_path / "runs"
    task = subprocess.Popen(["bash", str(out / "_slurm" / "sac_array.sh")], env=env, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "ready").exists():
            assert task.poll() is None and time.time() < deadline, "the stand-in run did not start"
            time.sleep(0.05)
        where, name = signal_to.split(":")
        (os.killpg if where == "group" else os.kill)(task.pid, getattr(signal, f"SIG{name}"))
        assert task.wait(timeout=60) == run_exit
    finally:
        task.poll() is None and os.killpg(task.pid, signal.SIGKILL)
    text = (out / "_slurm" / "logs" / "Pendulum-v1__seed1.log").read_text()
    assert "fake run: 1 SIGTERM" in text, text  # exactly one: a second would stop a real run without its checkpoint
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    assert ("requeue 7_0" in calls) == requeued, calls  # the array task itself, never the whole array
    assert re.search(rf"^\[slurm 7_0 \S+\] exit {run_exit}", text, re.M), text
    bench_run.save_state(out, {"runs": {"Pendulum-v1__seed1": {"slurm": "7_0"}}})  # as if submitted: --status
    capsys.readouterr()
    assert bench_run.main(["--envs", "Pendulum-v1", "--seeds", "1", "--output-dir", str(out), "--status"]) == 0
    word = {75: "interrupted", 3: "diverged", 74: "failed"}[run_exit]
    note = "exit 74, no progress in 3 starts: fake run" if run_exit == 74 and not requeued else ""
    assert re.search(rf"^Pendulum-v1__seed1\s+{word}\s.*Slurm job 7_0; {note}", capsys.readouterr().out, re.M)
