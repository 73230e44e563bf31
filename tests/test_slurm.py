"""benchmark/run.py --slurm against a real Slurm cluster: `bash .ci/slurm.sh` brings up a one-node one here (root)
and runs this file with SAC_SLURM_CLUSTER=1; without it every test is skipped, with it a silent cluster fails.
Side by side (2-3 minutes on 2 cores): a two-seed array with one task requeued mid-run, a one-task array whose time
limit comes first, an array of a stand-in that fails at every start, and, outside Slurm, an uninterrupted run of the
requeued seed to compare with bit for bit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import report  # benchmark/report.py (pyproject.toml puts benchmark/ on the path)
import run as bench_run  # benchmark/run.py

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmark"

pytestmark = pytest.mark.skipif(
    os.environ.get("SAC_SLURM_CLUSTER") != "1",
    reason="no Slurm cluster: `bash .ci/slurm.sh` (as root) brings one up here and runs these tests against it",
)

TINY = ["--learning-starts", "500", "--eval-frequency", "500", "--eval-episodes", "2", "--batch-size", "256"]
TINY += ["--buffer-size", "10000"]
# one thread in the tasks (sbatch passes the environment on); the reference run here has the script's default thread
# rule, which changes the count with the load: both end bit for bit alike (at batch 256, where thread counts can differ)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DEFAULT_THREADS = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
TOTAL = 4000  # the requeued array (seeds 1, 2) and the reference run of seed 2
TOTAL_LIMITED = 12000  # on 2 cores longer than 80 s, by when the warning has come for sure: cut at least once
DEADLINE = 600  # seconds for everything to finish (about 3 minutes on 2 idle cores)
# a stand-in script that fails at every start: seed 5 exits 74; seed 6 exits 1, after a checkpoint at its first start
STUCK = """
import sys
from pathlib import Path
arg = lambda flag: sys.argv[sys.argv.index(flag) + 1]
checkpoints = Path(arg("--output-dir")) / arg("--run-name") / "checkpoints"
if arg("--seed") == "6" and not checkpoints.exists():
    (checkpoints / "step_000000000500").mkdir(parents=True)
print(f"error: cannot write {checkpoints}: No space left on device (a stand-in)", file=sys.stderr)
sys.exit(74 if arg("--seed") == "5" else 1)
"""


def runner(out: Path, seeds: list[str], total: int, *options: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / "run.py"), "--envs", "Pendulum-v1", "--seeds", *seeds, "--device", "cpu"]
    cmd += ["--output-dir", str(out), "--total-timesteps", str(total), *options, "--", *TINY]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=ENV)


def submit(out: Path, seeds: list[str], total: int, *options: str) -> str:
    res = runner(out, seeds, total, "--slurm", "--mem", "1G", *options)
    assert res.returncode == 0, res.stdout + res.stderr
    return re.search(r"as Slurm job array (\d+)", res.stdout).group(1)


def in_queue(*jobs: str) -> list[str]:
    res = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(jobs)], capture_output=True, text=True)
    return res.stdout.split("\n")[:-1]


def log(out: Path, seed: int) -> str:
    path = out / "_slurm" / "logs" / f"Pendulum-v1__seed{seed}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for(condition, what: str, deadline: float, dump: list[Path]) -> None:
    while not condition():
        if time.time() > deadline:
            logs = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-3000:]}" for p in dump if p.is_file())
            queue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
            pytest.fail(f"timed out waiting for {what}; squeue:\n{queue}\n{logs}")
        time.sleep(1)


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if res.returncode != 0 or not {"idle", "mix"} & set(res.stdout.split()):
        pytest.fail(f"SAC_SLURM_CLUSTER=1 but the cluster does not answer: sinfo says {res.stdout + res.stderr!r}")


@pytest.fixture(scope="module")
def stuck(cluster, tmp_path_factory):
    """Submits an array of the stand-in that fails at every start: (its output dir, when it was submitted)."""
    base = tmp_path_factory.mktemp("stuck")
    (base / "stuck.py").write_text(STUCK)
    argv = ["--envs", "Pendulum-v1", "--seeds", "5", "6", "--output-dir", str(base / "runs"), "--slurm"]
    submitted = time.time()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_run, "SCRIPT", base / "stuck.py")
        assert bench_run.main([*argv, "--mem", "100M"]) == 0
    return base / "runs", submitted


@pytest.fixture(scope="module")
def runs(cluster, stuck, tmp_path_factory):  # (stuck: submitted first, it fails and stops alongside these)
    """Submits both arrays and starts the reference run; requeues seed 2 mid-run; waits for the end."""
    base = tmp_path_factory.mktemp("slurm")
    arr, limited, ref = base / "array", base / "limited", base / "reference"
    t0 = time.time()
    job = submit(arr, ["1", "2"], TOTAL, "--time", "00:10:00")
    # Slurm checks time limits once a minute and sends the warning at the first check less than 70 + 30 s
    # before the limit: here 20 to 80 s into each 2-minute stay, after start-up and well before the limit
    job_limited = submit(limited, ["3"], TOTAL_LIMITED, "--time", "00:02:00", "--signal-before", "70")
    reference = subprocess.Popen(
        [sys.executable, str(BENCH / "run.py"), "--envs", "Pendulum-v1", "--seeds", "2", "--device", "cpu",
         "--output-dir", str(ref), "--total-timesteps", str(TOTAL), "--", *TINY],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DEFAULT_THREADS)  # fmt: skip
    dump = [arr / "_slurm" / "logs" / f"Pendulum-v1__seed{s}.log" for s in (1, 2)]
    dump += [limited / "_slurm" / "logs" / "Pendulum-v1__seed3.log"]
    try:
        deadline = t0 + DEADLINE
        wait_for(lambda: "step 1000: eval" in log(arr, 2), "seed 2 to train past step 1000", deadline, dump)
        res = subprocess.run(["scontrol", "requeue", f"{job}_1"], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        during = runner(arr, ["1", "2"], TOTAL, "--status").stdout  # while the tasks are in the queue
        wait_for(lambda: not in_queue(job, job_limited), "both arrays to finish", deadline, dump)
        out, _ = reference.communicate(timeout=max(10, deadline - time.time()))
        assert reference.returncode == 0, out
    finally:
        subprocess.run(["scancel", job, job_limited], capture_output=True)
        if reference.poll() is None:
            reference.kill()
    print(f"\nthe three runs took {time.time() - t0:.0f} s", file=sys.stderr)
    return {"array": arr, "limited": limited, "reference": ref, "job": job, "status_during": during}


def test_array_runs_every_seed_and_the_report_reads_them(runs):
    arr = runs["array"]
    for seed in (1, 2):
        assert report.checkpoint_step(arr / f"Pendulum-v1__seed{seed}") == TOTAL, log(arr, seed)
        assert re.search(r"^\[slurm \S+ \S+\] exit 0: done$", log(arr, seed), re.M), log(arr, seed)
    during = {line.split()[0]: line for line in runs["status_during"].splitlines() if line.startswith("Pendulum")}
    for seed in (1, 2):  # Slurm's state of the task, as --status showed it mid-run
        row = during[f"Pendulum-v1__seed{seed}"]
        assert (
            row.split()[1] in ("running", "pending", "requeued", "completing")
            and f"Slurm job {runs['job']}_{seed - 1}" in row
        ), runs["status_during"]
    status = runner(arr, ["1", "2"], TOTAL, "--status")
    rows = {line.split()[0]: line.split()[1:4] for line in status.stdout.splitlines() if line.startswith("Pendulum")}
    assert rows == {f"Pendulum-v1__seed{s}": ["done", f"{TOTAL:,}", f"{TOTAL:,}"] for s in (1, 2)}, status.stdout
    paths = report.write_report(arr, arr.parent / "report", None)
    csv_rows = paths["csv"].read_text().splitlines()[1:]
    assert sorted({tuple(r.split(",")[:2]) for r in csv_rows}) == [("Pendulum-v1", "1"), ("Pendulum-v1", "2")]
    assert len(csv_rows) == 2 * TOTAL // 500
    assert f"| 2 | {TOTAL:,} steps (complete) |" in paths["markdown"].read_text()


def test_requeued_task_checkpoints_resumes_and_ends_bit_identical_to_an_uninterrupted_run(runs):
    text = log(runs["array"], 2)
    stopped = re.search(r"stopped by SIGTERM at step (\d+); checkpoint", text)
    assert stopped and 1000 <= int(stopped.group(1)) < TOTAL, text
    assert "Slurm ends the job (state COMPLETING); the run got the SIGTERM as well" in text
    assert "restart 1" in text and f"at step {stopped.group(1)} from step_" in text  # started again, resumed
    assert "requeueing" not in text  # Slurm requeued it; the task did not requeue itself as well
    model = (runs["array"] / "Pendulum-v1__seed2" / "model.pt").read_bytes()
    assert model == (runs["reference"] / "Pendulum-v1__seed2" / "model.pt").read_bytes()
    assert "stopped by" not in log(runs["array"], 1)  # the other task ran through


def test_task_at_its_time_limit_checkpoints_requeues_itself_and_finishes(runs):
    limited = runs["limited"]
    text = log(limited, 3)
    assert "time limit near (SIGUSR1)" in text, f"finished before the warning; raise TOTAL_LIMITED\n{text}"
    assert "scontrol requeue failed" not in text
    step = re.search(r"stopped by SIGTERM at step (\d+)", text).group(1)
    assert "exit 75: requeueing" in text and f"run: {limited / 'Pendulum-v1__seed3'} (resumed at step {step}" in text
    assert report.checkpoint_step(limited / "Pendulum-v1__seed3") == TOTAL_LIMITED
    assert text.rstrip().endswith("exit 0: done")
    slurm_out = "".join(p.read_text() for p in (limited / "_slurm" / "logs").glob("slurm-*.out"))
    assert "DUE TO TIME LIMIT" not in slurm_out  # requeued before the limit every time, never killed at it


def test_resubmitting_the_finished_array_does_no_work(runs):
    arr, job = runs["array"], runs["job"]
    before = {seed: snapshot(arr / f"Pendulum-v1__seed{seed}") for seed in (1, 2)}
    again = runner(arr, ["1", "2"], TOTAL, "--slurm", "--mem", "1G")
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout + again.stderr
    # the array script itself, submitted again as a whole: every task finds its run done
    res = subprocess.run(["sbatch", "--parsable", str(arr / "_slurm" / "sac_array.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    new = res.stdout.strip().split(";")[0]
    assert new != job
    wait_for(lambda: not in_queue(new), "the resubmitted array", time.time() + 120, [])
    for seed in (1, 2):
        tries = re.split(r"(?=^\[slurm \S+ \S+\] Pendulum-v1__seed\d starts)", log(arr, seed), flags=re.M)
        assert "already at step" in tries[-1] and tries[-1].rstrip().endswith("exit 0: done"), tries[-1]
        assert snapshot(arr / f"Pendulum-v1__seed{seed}") == before[seed]


def test_task_that_fails_at_every_start_without_progress_stops_requeueing_and_status_says_so(stuck):
    out, submitted = stuck
    job = report.runner_state(out)["runs"]["Pendulum-v1__seed5"]["slurm"].split("_")[0]
    dump = [out / "_slurm" / "logs" / f"Pendulum-v1__seed{seed}.log" for seed in (5, 6)]
    wait_for(lambda: not in_queue(job), "the failing tasks to leave the queue", submitted + 300, dump)
    status = runner(out, ["5", "6"], TOTAL, "--status").stdout
    for seed, code, starts in ((5, 74, 3), (6, 1, 4)):  # seed 6 progressed at its first start: one start more
        text = log(out, seed)
        assert len(re.findall(r"^\[slurm \S+ \S+\] Pendulum-v1__seed\d starts on", text, re.M)) == starts, text
        assert re.search(rf"\] exit {code}: no progress in 3 starts \(from [^)]+\): not requeued", text), text
        left = datetime.fromisoformat(re.findall(r"^\[slurm \S+ (\S+)\]", text, re.M)[-1]).timestamp() - submitted
        print(f"\nseed {seed}: {starts} starts, out of the queue {left:.0f} s after its submission", file=sys.stderr)
        assert left < 180, text
        row = re.search(rf"^Pendulum-v1__seed{seed}\s+failed\s.*", status, re.M)
        assert row and f"exit {code}, no progress in 3 starts: error: cannot write" in row[0], status
