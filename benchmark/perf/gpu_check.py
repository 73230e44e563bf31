"""GPU acceptance in one command: does every GPU path of sac_continuous.py work here, and how fast is it?

    python benchmark/perf/gpu_check.py --out gpu-report  # one NVIDIA GPU (416 s on an H200 with --budget 420)
    python benchmark/perf/gpu_check.py --out /tmp/check --device cpu --quick  # every part, tiny sizes (CI)

Parts, each in its own subprocess with its own time box, so a hang or a crash costs only that part:
  machine      GPU, driver, CUDA, library versions, CPU cores
  correctness  tests/test_fast_path.py (its CUDA-graph tests included); a Pendulum-v1 run on the device
               stopped at a checkpoint and resumed, against the same run uninterrupted (and run twice)
  speed        Humanoid-v5 steps/s after learning starts: eager, --compile, --cudagraphs, both; the
               compile/capture time apart; Stable-Baselines3 in the same process for the ratio
  throughput   1, 2, 4, 8 concurrent runs with the fastest flags: total and per-run steps/s, --jobs advice
  render       one Humanoid-v5 frame with MUJOCO_GL=egl (osmesa on the CPU); an MP4 if imageio-ffmpeg is there
  learning     Humanoid-v5 with the fastest flags for the time left, next to the CPU curve at the same step
Writes OUT/gpu_check.md (also printed) and OUT/gpu_check.json. Nothing is asserted: a failing part is reported
as such and the others still run. Exit code 0 when every part that ran passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = ROOT / "sac_continuous.py"
FLAG_SETS = {
    "eager": [],
    "compile": ["--compile"],
    "cudagraphs": ["--cudagraphs"],
    "compile+cudagraphs": ["--compile", "--cudagraphs"],
}


# ----------------------------------------------------------------------------------------------------------
# subprocess helpers: every part runs in a child with a time box
# ----------------------------------------------------------------------------------------------------------


def start_child(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """cmd in its own process group (so a time box can kill all of it), stdout and stderr together."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env, start_new_session=True
    )


def finish_child(proc: subprocess.Popen, timeout: float) -> tuple[str, bool]:
    """(output, timed out): waits up to timeout seconds, then kills the child's whole process group."""
    try:
        return proc.communicate(timeout=max(timeout, 1))[0], False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0], True


def run_child(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run cmd with a time box. Returns rc, output, seconds."""
    t = time.perf_counter()
    proc = start_child(cmd, env, cwd)
    out, timed_out = finish_child(proc, timeout)
    return {"rc": proc.returncode, "out": out, "seconds": time.perf_counter() - t, "timed_out": timed_out}


def result_line(out: str) -> dict | None:
    """The JSON a worker prints on its last RESULT line."""
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else None


def tail(text: str, n: int = 6) -> str:
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-n:])


# ----------------------------------------------------------------------------------------------------------
# workers: run in a child process (python gpu_check.py --worker NAME ...)
# ----------------------------------------------------------------------------------------------------------


def speed_worker(a: argparse.Namespace) -> None:
    """Our loop (speed.py's Ours: the script's own functions) after learning starts; optionally SB3 alternating
    with it in this process. With --barrier, timing starts only once every concurrent worker is warm."""
    import torch

    sys.path.insert(0, str(HERE))
    from speed import SB3, Ours

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    flags = FLAG_SETS[a.flags]
    ours = Ours(
        a.env_id,
        a.learning_starts,
        device,
        a.seed,
        False,
        compile="--compile" in flags,
        cudagraphs="--cudagraphs" in flags,
    )
    ours.run(a.learning_starts, learn=False)
    t = time.perf_counter()
    ours.run(a.warmup, learn=True)  # includes compilation and graph capture
    sync()
    warmup_s = time.perf_counter() - t
    sides = {"ours": ours}
    sb3_note = None
    if a.sb3:
        try:
            sides["sb3"] = SB3(a.env_id, a.learning_starts, device, a.seed)
        except ImportError:  # benchmark/perf/requirements-bench.txt is not installed (e.g. CI)
            sb3_note = "not installed"
        else:
            sides["sb3"].run(a.learning_starts, learn=False)
            sides["sb3"].run(a.warmup, learn=True)
    if a.barrier:  # concurrent runs: start timing together
        Path(a.barrier, f"ready_{os.getpid()}").touch()
        deadline = time.time() + 300
        while len(list(Path(a.barrier).glob("ready_*"))) < a.concurrent and time.time() < deadline:
            time.sleep(0.05)
    sps = {k: [] for k in sides}
    for _ in range(a.rounds):
        for name, side in sides.items():
            sync()
            t = time.perf_counter()
            side.run(a.steps, learn=True)
            sync()
            sps[name].append(a.steps / (time.perf_counter() - t))
    res = {
        "flags": a.flags,
        "warmup_s": warmup_s,
        "warmup_updates": a.warmup,
        "sb3_note": sb3_note,
        **{f"{k}_sps": statistics.median(v) for k, v in sps.items()},
        **{f"{k}_sps_rounds": v for k, v in sps.items()},
    }
    if device.type == "cuda":
        res["max_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(res), flush=True)


def render_worker(a: argparse.Namespace) -> None:
    """One Humanoid-v5 frame (mean brightness), saved as PNG; 60 frames as MP4 if imageio-ffmpeg is installed."""
    import gymnasium as gym
    import numpy as np

    env = gym.make("Humanoid-v5", render_mode="rgb_array")
    env.reset(seed=0)
    frames = [env.render()]
    res = {
        "MUJOCO_GL": os.environ.get("MUJOCO_GL"),
        "shape": list(frames[0].shape),
        "mean_brightness": float(frames[0].mean()),
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(Path(a.out) / "humanoid_frame.png", frames[0])
    try:
        import imageio
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        res["mp4"] = "skipped: imageio-ffmpeg is not installed"
    else:
        for _ in range(59):
            env.step(env.action_space.sample())
            frames.append(env.render())
        imageio.mimsave(Path(a.out) / "humanoid.mp4", frames, fps=30)
        res["mp4"] = f"humanoid.mp4, {len(frames)} frames, mean brightness {np.mean(frames):.1f}"
    print("RESULT " + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------------------------------------
# parts
# ----------------------------------------------------------------------------------------------------------


def part_machine(device: str) -> dict:
    import gymnasium
    import mujoco
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
        "cpu_cores": os.cpu_count(),
        "cpu": platform.processor() or "?",
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import stable_baselines3

        info["stable_baselines3"] = stable_baselines3.__version__
    except ImportError:
        info["stable_baselines3"] = "not installed"
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            capability=f"{p.major}.{p.minor}",
        )
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                check=False,
                capture_output=True,
                text=True,
            )
            info["driver"] = q.stdout.strip()
    return info


def part_tests(quick: bool, timeout: float, cuda: bool) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_fast_path.py")]
    if quick and not cuda:  # the CPU tests of this file run in the suite anyway: here only the CUDA ones (skipped)
        cmd += ["-k", "cuda"]
    r = run_child(cmd, timeout, cwd=ROOT)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", r["out"])}
    ok = r["rc"] == 0 and not r["timed_out"]
    return {
        "ok": ok,
        "counts": counts,
        "seconds": r["seconds"],
        "timed_out": r["timed_out"],
        "summary": tail(r["out"], 1) if ok else tail(r["out"], 25),
    }


def compare_trees(a, b, path=""):
    """(number of tensors compared, list of differing paths, largest absolute difference) for two torch.load'ed
    trees; tensors by their bytes, other leaves by ==. Wall-clock leaves are the caller's business."""
    import torch

    if isinstance(a, dict) and isinstance(b, dict):
        n, diffs, worst = 0, [], 0.0
        for k in sorted(a.keys() | b.keys(), key=str):
            if k not in a or k not in b:
                diffs.append(f"{path}/{k}: on one side only")
                continue
            m, d, w = compare_trees(a[k], b[k], f"{path}/{k}")
            n, diffs, worst = n + m, diffs + d, max(worst, w)
        return n, diffs, worst
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        out = [compare_trees(x, y, f"{path}/{i}") for i, (x, y) in enumerate(zip(a, b))]
        return sum(o[0] for o in out), [d for o in out for d in o[1]], max((o[2] for o in out), default=0.0)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        x, y = a.detach().cpu(), b.detach().cpu()
        if x.shape != y.shape or x.dtype != y.dtype:
            return 1, [f"{path}: shape/dtype"], float("inf")
        if x.reshape(-1).view(torch.uint8).equal(y.reshape(-1).view(torch.uint8)):
            return 1, [], 0.0
        worst = (x.double() - y.double()).abs().max().item() if x.is_floating_point() else float("inf")
        return 1, [path], worst
    skip = path.endswith(("episode_start_time", "/resume", "/output_dir", "mjdata"))
    return 0, ([] if skip or a == b else [path]), 0.0


def part_resume(device: str, work: Path, timeout: float) -> dict:
    """Pendulum-v1 on the device: run A to TOTAL; run B to MID, then --resume auto to TOTAL; run C = A again.
    A vs B is the exact-resume promise on this device; A vs C says whether the device itself is deterministic."""
    import numpy as np
    import torch

    ls, mid, total = 300, 477, 700
    flags = [
        "--env-id",
        "Pendulum-v1",
        "--device",
        device,
        "--learning-starts",
        str(ls),
        "--batch-size",
        "64",
        "--buffer-size",
        "400",
        "--eval-frequency",
        "0",
        "--eval-episodes",
        "1",
        "--checkpoint-frequency",
        str(mid),
        "--log-frequency",
        "10",
        "--run-name",
        "r",
    ]
    env = {"OMP_NUM_THREADS": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}

    def cmd(d: str, steps: int) -> list[str]:
        return [
            sys.executable,
            str(SCRIPT),
            *flags,
            "--total-timesteps",
            str(steps),
            "--output-dir",
            str(work / d),
            "--resume",
            "auto",
        ]

    t = time.perf_counter()
    procs = [start_child(cmd(d, n), env) for d, n in (("a", total), ("b", mid), ("c", total))]
    outs = []
    for p in procs:
        out, timed_out = finish_child(p, timeout - (time.perf_counter() - t))
        outs.append((out, "timeout" if timed_out else p.returncode))
    second = run_child(cmd("b", total), max(1, timeout - (time.perf_counter() - t)), env=env)
    outs.append((second["out"], "timeout" if second["timed_out"] else second["rc"]))
    bad = [f"run {i}: exit {rc}: {tail(o)}" for i, (o, rc) in enumerate(outs) if rc != 0]
    if bad:
        return {"ok": False, "error": "; ".join(bad), "seconds": time.perf_counter() - t}
    resumed = "resumed" in outs[3][0]

    def load(d: str) -> tuple[dict, dict, dict]:
        run = work / d / "r"
        ckpt = max((run / "checkpoints").glob("step_*"))  # the final one, at TOTAL
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        state.pop("best_eval", None)  # B evaluated once more, at MID, so its best may differ
        buf = {p.name: np.load(p) for p in sorted((ckpt / "buffer").glob("*.npy"))}
        return torch.load(run / "model.pt", map_location="cpu", weights_only=True), state, buf

    (ma, sa, ba), (mb, sb, bb), (mc, sc, bc) = load("a"), load("b"), load("c")
    res = {"ok": True, "resumed": resumed, "seconds": time.perf_counter() - t}
    for label, (m2, s2, b2) in (("resume", (mb, sb, bb)), ("rerun", (mc, sc, bc))):
        n1, d1, w1 = compare_trees(ma, m2)
        n2, d2, w2 = compare_trees(sa, s2)
        buf_diff = [k for k in ba if k not in b2 or ba[k].tobytes() != b2[k].tobytes()]
        res[label] = {
            "identical": not (d1 or d2 or buf_diff),
            "tensors_compared": n1 + n2,
            "differing": (d1 + d2 + [f"buffer/{k}" for k in buf_diff])[:12],
            "max_abs_diff": max(w1, w2),
        }
    res["ok"] = resumed and res["resume"]["identical"]
    return res


def speed_cmd(
    device: str, flags: str, q: dict, threads: int, sb3: bool = False, barrier: str = "", concurrent: int = 1
) -> list[str]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "speed",
        "--device",
        device,
        "--flags",
        flags,
        "--env-id",
        "Humanoid-v5",
        "--learning-starts",
        str(q["random"]),
        "--warmup",
        str(q["warmup"]),
        "--steps",
        str(q["steps"]),
        "--rounds",
        str(q["rounds"]),
        "--threads",
        str(threads),
    ]
    if sb3:
        cmd.append("--sb3")
    if barrier:
        cmd += ["--barrier", barrier, "--concurrent", str(concurrent)]
    return cmd


def part_speed(device: str, q: dict, box, cuda: bool, quick: bool) -> dict:
    res = {}
    for name in FLAG_SETS:
        sb3 = name in ("eager", "compile+cudagraphs") or (not cuda and name == "eager")
        timeout_each = box(60 + 60 * sb3 + 40 * ("compile" in name))
        if "cudagraphs" in name and not cuda:
            res[name] = {"ok": False, "skipped": "skipped: no CUDA"}
            continue
        if "compile" in name and quick and not cuda:
            res[name] = {"ok": False, "skipped": "skipped: --quick on the CPU (tests/test_fast_path.py covers it)"}
            continue
        r = run_child(
            speed_cmd(device, name, q, threads=4 if cuda else 1, sb3=sb3),
            timeout_each,
            env={"OMP_NUM_THREADS": "4" if cuda else "1"},
        )
        out = result_line(r["out"])
        if out is None:
            why = f"timed out after {timeout_each:.0f} s" if r["timed_out"] else f"exit {r['rc']}"
            res[name] = {"ok": False, "error": f"{why}: {tail(r['out'], 12)}", "seconds": r["seconds"]}
        else:
            res[name] = {"ok": True, **out, "seconds": r["seconds"]}
            if "sb3_sps" in out:
                res[name]["ratio_vs_sb3"] = out["ours_sps"] / out["sb3_sps"]
    return res


def best_flags(speed: dict) -> str:
    ok = {k: v["ours_sps"] for k, v in speed.items() if v.get("ok")}
    return max(ok, key=ok.get) if ok else "eager"


def part_throughput(
    device: str,
    flags: str,
    q: dict,
    levels: list[int],
    timeout_each: float,
    work: Path,
    cuda: bool,
    single_sps: float | None,
) -> dict:
    cores = os.cpu_count() or 1
    res = {"flags": flags, "levels": {}}
    for n in levels:
        if n == 1 and single_sps:  # the speed part's run with these flags
            res["levels"][1] = {
                "runs": 1,
                "ok": True,
                "per_run_sps": [single_sps],
                "total_sps": single_sps,
                "errors": [],
                "seconds": 0.0,
                "note": "from the speed part",
            }
            continue
        barrier = work / f"barrier_{n}"
        barrier.mkdir(parents=True, exist_ok=True)
        threads = max(1, cores // n) if cuda else 1
        t = time.perf_counter()
        cmd = speed_cmd(device, flags, q, threads, barrier=str(barrier), concurrent=n)
        procs = [start_child(cmd, {"OMP_NUM_THREADS": str(threads)}) for _ in range(n)]
        per_run, errors = [], []
        for p in procs:
            out, timed_out = finish_child(p, timeout_each - (time.perf_counter() - t))
            if timed_out:
                errors.append(f"timed out after {timeout_each:.0f} s")
                continue
            r = result_line(out)
            if r is None:
                errors.append(f"exit {p.returncode}: {tail(out)}")
            else:
                per_run.append(r["ours_sps"])
        res["levels"][n] = {
            "runs": n,
            "ok": not errors,
            "per_run_sps": per_run,
            "total_sps": sum(per_run),
            "errors": errors[:2],
            "seconds": time.perf_counter() - t,
        }
        if errors:
            break
    done = {n: v["total_sps"] for n, v in res["levels"].items() if v["ok"]}
    if done:
        best = max(done.values())
        # the fewest runs that reach 90% of the best total: more would only add memory and latency
        res["recommended_jobs"] = min(n for n, v in done.items() if v >= 0.9 * best)
    res["ok"] = bool(done) and all(v["ok"] for v in res["levels"].values())
    return res


def part_render(device: str, out: Path, timeout: float, cuda: bool) -> dict:
    gl = "egl" if cuda else "osmesa"
    r = run_child(
        [sys.executable, str(Path(__file__).resolve()), "--worker", "render", "--out", str(out)],
        timeout,
        env={"MUJOCO_GL": gl, "PYOPENGL_PLATFORM": gl},
    )
    res = result_line(r["out"])
    if res is None:
        why = f"timed out after {timeout:.0f} s" if r["timed_out"] else f"exit {r['rc']}"
        return {"ok": False, "MUJOCO_GL": gl, "error": f"{why}: {tail(r['out'], 10)}", "seconds": r["seconds"]}
    return {"ok": res["mean_brightness"] > 5, **res, "seconds": r["seconds"]}


def cpu_curve_at(step: int) -> tuple[int, float] | None:
    path = ROOT / "benchmark" / "results" / "cpu-partial" / "eval_returns.csv"
    try:
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if r["env"] == "Humanoid-v5" and int(r["step"]) <= step]
    except OSError:
        return None
    return (int(rows[-1]["step"]), float(rows[-1]["mean_return"])) if rows else None


def part_learning(device: str, flags: str, seconds: float, work: Path, q: dict) -> dict:
    """Humanoid-v5 with the benchmark's settings and the fastest flags for `seconds`, then SIGTERM (the script
    checkpoints and exits 75); eval returns from its TensorBoard events."""
    cfg = json.loads((ROOT / "benchmark" / "configs.json").read_text())
    settings = {**cfg["common"], **cfg["envs"]["Humanoid-v5"]}
    settings.update(
        {
            "checkpoint-frequency": 0,
            "total-timesteps": q["total"],
            "eval-episodes": q["eval_episodes"],
            "eval-frequency": q["eval_frequency"],
            "learning-starts": q["learning_starts"],
            "buffer-size": q["buffer_size"],
        }
    )
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--env-id",
        "Humanoid-v5",
        "--device",
        device,
        "--run-name",
        "learn",
        "--output-dir",
        str(work),
        *FLAG_SETS[flags],
    ]
    for k, v in settings.items():
        cmd += [f"--{k}" if v is not False else f"--no-{k}"] if isinstance(v, bool) else [f"--{k}", str(v)]
    t = time.perf_counter()
    proc = start_child(cmd, {"OMP_NUM_THREADS": "4"})
    try:
        out = proc.communicate(timeout=seconds)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script checkpoints and exits 75
        out = finish_child(proc, 90)[0]
    res = {
        "flags": flags,
        "settings": " ".join(cmd[2:]),
        "seconds": time.perf_counter() - t,
        "exit": proc.returncode,
        "stopped": proc.returncode == 75,
    }
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(work / "learn"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    evals = [(e.step, e.value) for e in acc.Scalars("eval/mean_return")] if "eval/mean_return" in tags else []
    sps = [e.value for e in acc.Scalars("charts/SPS")] if "charts/SPS" in tags else []
    steps = [e.step for t_ in tags for e in acc.Scalars(t_)]
    res.update(evals=evals, last_step=max(steps, default=0), last_sps=sps[-1] if sps else None)
    if evals:
        res["cpu_curve"] = cpu_curve_at(evals[-1][0])
    res["ok"] = proc.returncode in (0, 75) and bool(evals)
    if not res["ok"]:
        res["error"] = tail(out, 12)
    return res


# ----------------------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------------------


def fmt(x, nd=1) -> str:
    return f"{x:,.{nd}f}" if isinstance(x, (int, float)) else str(x)


def markdown(rep: dict) -> str:
    m = rep["machine"]
    lines = [
        f"# gpu_check: {m.get('gpu', 'no GPU')} ({rep['device']}{', --quick' if rep['quick'] else ''})",
        "",
        f"Command: `{rep['command']}`  ",
        f"Commit: {rep['commit']}; total {rep['seconds']:.0f} s.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in m.items()]
    t = rep.get("tests")
    lines += ["", "## Correctness", ""]
    if t:
        lines.append(
            f"- tests/test_fast_path.py: {'PASS' if t['ok'] else 'FAIL'} {t['counts']} in "
            f"{t['seconds']:.0f} s{'' if t['ok'] else ': ' + t['summary']}"
        )
    r = rep.get("resume")
    if r:
        if "error" in r:
            lines.append(f"- resume on {rep['device']}: FAIL: {r['error']}")
        else:
            for label, what in (
                ("resume", "stopped at a checkpoint and resumed vs uninterrupted"),
                ("rerun", "the uninterrupted run twice"),
            ):
                d = r[label]
                lines.append(
                    f"- Pendulum-v1 on {rep['device']}, {what}: "
                    + (
                        "bit-identical"
                        if d["identical"]
                        else f"DIFFERENT, max |diff| {d['max_abs_diff']:.3g} in {d['differing']}"
                    )
                    + f" ({d['tensors_compared']} tensors and the buffer)"
                )
            if not r["resumed"]:
                lines.append("- FAIL: the second half did not say it resumed")
    s = rep.get("speed")
    if s:
        lines += [
            "",
            "## Speed: Humanoid-v5 steps/s after learning starts",
            "",
            (
                f"{rep['sizes']['random']} random steps, {rep['sizes']['warmup']} warm-up updates (compile and "
                f"capture happen there), then {rep['sizes']['rounds']} x {rep['sizes']['steps']} timed steps, one "
                "update each, batch 256; SB3 alternates with ours in the same process."
            ),
            "",
            "| flags | steps/s | warm-up s | SB3 steps/s | ratio | GPU memory MiB |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in s.items():
            if v.get("ok"):
                lines.append(
                    f"| {name} | {fmt(v['ours_sps'])} | {fmt(v['warmup_s'])} "
                    f"| {fmt(v.get('sb3_sps', v.get('sb3_note') or ''))} "
                    f"| {fmt(v.get('ratio_vs_sb3', ''), 2)} | {fmt(v.get('max_memory_mib', ''), 0)} |"
                )
            else:
                lines.append(f"| {name} | {v.get('skipped') or 'FAIL: ' + v.get('error', '')} | | | | |")
    tp = rep.get("throughput")
    if tp:
        lines += [
            "",
            f"## Throughput: concurrent runs with {tp['flags']}",
            "",
            "| runs | total steps/s | per run |",
            "|---|---|---|",
        ]
        for n, v in tp["levels"].items():
            per = ", ".join(fmt(x, 0) for x in v["per_run_sps"])
            lines.append(f"| {n} | {fmt(v['total_sps'])} | {per}{'' if v['ok'] else ' FAIL: ' + str(v['errors'])} |")
        if "recommended_jobs" in tp:
            lines += [
                "",
                (
                    f"Recommended `benchmark/run.py --jobs {tp['recommended_jobs']}` on this machine (the fewest "
                    "runs within 90% of the best total)."
                ),
            ]
    rd = rep.get("render")
    if rd:
        lines += ["", "## Rendering", ""]
        if "error" in rd:
            lines.append(f"- MUJOCO_GL={rd['MUJOCO_GL']}: FAIL: {rd['error']}")
        else:
            lines.append(
                f"- MUJOCO_GL={rd['MUJOCO_GL']}: frame {rd['shape']}, mean brightness "
                f"{rd['mean_brightness']:.1f} ({'non-black' if rd['ok'] else 'BLACK'}); MP4: {rd['mp4']}"
            )
    lr = rep.get("learning")
    if lr:
        lines += [
            "",
            f"## Learning smoke: Humanoid-v5, {lr['flags']}, {lr['seconds']:.0f} s",
            "",
            (
                f"`sac_continuous.py {lr['settings']}`, {'stopped by SIGTERM, ' if lr['stopped'] else ''}"
                f"exit {lr['exit']}; step {lr['last_step']:,}, last SPS {fmt(lr['last_sps'], 0)}."
            ),
            "",
        ]
        if lr["evals"]:
            lines.append("Eval returns: " + ", ".join(f"{s:,}: {v:.1f}" for s, v in lr["evals"]))
            if lr.get("cpu_curve"):
                cs, cv = lr["cpu_curve"]
                lines.append(f"\nCPU curve (benchmark/results/cpu-partial, seed 1) at step {cs:,}: {cv:.1f}")
        if not lr["ok"]:
            lines.append(f"FAIL: {lr.get('error', 'no evaluation logged')}")
    lines += ["", "## Verdict", ""] + [f"- {k}: {'ok' if v else 'FAIL'}" for k, v in rep["verdict"].items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------

PARTS = ("tests", "resume", "render", "speed", "throughput", "learning")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu-check"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every part runs (CI, CPU)")
    p.add_argument("--budget", type=float, default=470, help="seconds for the whole check (default 470)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--levels", default="1,2,4,8", help="concurrent runs to measure")
    p.add_argument("--learning-seconds", type=float, default=None, help="learning smoke (default 150; --quick 25)")
    p.add_argument("--worker", choices=("speed", "render"), help=argparse.SUPPRESS)
    for name, kind, default in (
        ("env-id", str, "Humanoid-v5"),
        ("flags", str, "eager"),
        ("learning-starts", int, 1000),
        ("warmup", int, 100),
        ("steps", int, 1000),
        ("rounds", int, 2),
        ("threads", int, 1),
        ("seed", int, 1),
        ("barrier", str, ""),
        ("concurrent", int, 1),
    ):
        p.add_argument(f"--{name}", type=kind, default=default, help=argparse.SUPPRESS)
    p.add_argument("--sb3", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker == "speed":
        speed_worker(a)
        return 0
    if a.worker == "render":
        render_worker(a)
        return 0

    import torch

    t0 = time.perf_counter()
    parts = [x for x in a.parts.split(",") if x]
    if unknown := set(parts) - set(PARTS):
        p.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(f"error: --device {a.device} but torch sees no CUDA device; use --device cpu --quick", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    if a.quick:
        q = {
            "random": 200,
            "warmup": 10,
            "steps": 30,
            "rounds": 1,
            "learning_starts": 50,
            "eval_frequency": 60,
            "total": 120,
            "eval_episodes": 1,
            "buffer_size": 5000,
        }
        levels = [1, 2]
    else:
        q = {
            "random": 1000,
            "warmup": 100,
            "steps": 1000,
            "rounds": 2,
            "learning_starts": 25000,
            "total": 1000000,
            "eval_frequency": 10000,
            "eval_episodes": 5,
            "buffer_size": 1000000,
        }
        levels = [int(x) for x in a.levels.split(",")]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], check=False, capture_output=True, text=True
    )
    rep = {
        "command": " ".join(["python", "benchmark/perf/gpu_check.py", *sys.argv[1:]]),
        "device": a.device,
        "quick": a.quick,
        "commit": commit.stdout.strip() or "?",
        "sizes": q,
        "machine": part_machine(a.device),
    }
    budget = a.budget
    if a.learning_seconds is None:
        a.learning_seconds = 90 if a.quick else 150  # --quick: a short run that ends by itself

    def left() -> float:
        return budget - (time.perf_counter() - t0)

    def box(share: float, floor: float = 20) -> float:
        return max(floor, min(share, left() - 5))

    def guarded(part, *args) -> dict:  # a bug in this file costs one part, not the report
        try:
            return part(*args)
        except Exception as e:  # noqa: BLE001
            return {"ok": False, "error": f"gpu_check itself failed: {type(e).__name__}: {e}"}

    # phase 1, nothing timed: the learning smoke beside the correctness checks and the frame
    learn_flags = "cudagraphs" if cuda else "eager"
    jobs = {
        "tests": (part_tests, a.quick, box(150 if cuda else 120), cuda),
        "resume": (part_resume, a.device, work / "resume", box(100)),
        "render": (part_render, a.device, a.out, box(120), cuda),
        "learning": (part_learning, a.device, learn_flags, a.learning_seconds, work / "learn", q),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {k: pool.submit(guarded, *job) for k, job in jobs.items() if k in parts}
        for k, f in futures.items():
            rep[k] = f.result()
            print(f"{k}: {json.dumps(rep[k], default=str)[:400]}", flush=True)
    # phase 2: speed, one run at a time; phase 3: concurrent runs with the fastest flags
    if "speed" in parts:
        rep["speed"] = guarded(part_speed, a.device, q, box, cuda, a.quick)
        for k, v in rep["speed"].items():
            print(
                f"speed {k}: "
                + (
                    f"{v['ours_sps']:.1f} steps/s, warm-up {v['warmup_s']:.1f} s"
                    if v.get("ok")
                    else v.get("skipped") or v.get("error", "")[:300]
                ),
                flush=True,
            )
    if "throughput" in parts:
        best = best_flags(rep.get("speed", {}))
        single = rep.get("speed", {}).get(best, {})
        rep["throughput"] = guarded(
            part_throughput, a.device, best, q, levels, box(70 if cuda else 60), work, cuda, single.get("ours_sps")
        )
        print(f"throughput: {json.dumps(rep['throughput'])[:400]}", flush=True)
    rep["seconds"] = time.perf_counter() - t0
    rep["verdict"] = {
        k: bool(rep[k].get("ok")) if k != "speed" else any(v.get("ok") for v in rep[k].values())
        for k in PARTS
        if k in rep
    }
    if "speed" in rep:
        rep["verdict"]["speed: every flag set that ran"] = all(
            v.get("ok") or "skipped" in v for v in rep["speed"].values()
        )
    (a.out / "gpu_check.json").write_text(json.dumps(rep, indent=1, default=str))
    md = markdown(rep)
    (a.out / "gpu_check.md").write_text(md)
    shutil.rmtree(work, ignore_errors=True)
    print(md)
    return 0 if all(rep["verdict"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
