"""GPU acceptance in one command: does every GPU path of sac_continuous.py work here, and how fast is it?

    python benchmark/perf/gpu_check.py --out gpu-report                      # one NVIDIA GPU, about 5 minutes
    python benchmark/perf/gpu_check.py --out /tmp/check --device cpu --quick  # every part, tiny sizes (CI)

Parts, each in child processes with a time box, so a hang or a crash costs only that part:
  tests       tests/test_fast_path.py (its CUDA-graph tests included)
  resume      Pendulum-v1 on the device stopped at a checkpoint and resumed, against the same run uninterrupted,
              bit for bit (and the uninterrupted run twice: is the device itself deterministic?)
  speed       Humanoid-v5 steps/s after learning starts for each flag set (eager, --compile, --cudagraphs, both),
              the compile/capture time apart; Stable-Baselines3 alternating in the same process for the ratio
  throughput  1, 2, 4, 8 concurrent runs with the fastest flags: total and per-run steps/s, --jobs advice
Writes OUT/gpu_check.md (also printed) and OUT/gpu_check.json. A failing part is reported and the others still
run. Exit code 0 when every part that ran passed, 1 otherwise, 2 with --device cuda and no CUDA.
Results so far: benchmark/results/gpu-check-h200/ and docs/performance.md.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FLAG_SETS = {"eager": [], "compile": ["--compile"], "cudagraphs": ["--cudagraphs"]}
FLAG_SETS["compile+cudagraphs"] = ["--compile", "--cudagraphs"]
PARTS = ("tests", "resume", "speed", "throughput")
QUICK = dict(random=200, warmup=10, steps=30, rounds=1)  # Humanoid-v5 sizes of the speed worker
FULL = dict(random=1000, warmup=100, steps=1000, rounds=2)


def start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    """cmd in its own process group (a time box kills all of it), stdout and stderr together."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    return subprocess.Popen(cmd, start_new_session=True, **kw)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, bool]:
    """(output, timed out): waits up to timeout seconds, then kills the child's process group."""
    try:
        return proc.communicate(timeout=max(timeout, 1))[0], False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0], True


def outcome(proc: subprocess.Popen, timeout: float) -> dict:
    """The JSON a worker prints on its last RESULT line, or {'ok': False, 'error': why}."""
    out, timed_out = finish(proc, timeout)
    found = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if found and not timed_out:
        return {"ok": True, **json.loads(found[-1][7:])}
    why = f"timed out after {timeout:.0f} s" if timed_out else f"exit {proc.returncode}"
    return {"ok": False, "error": f"{why}: " + " | ".join(out.strip().splitlines()[-8:])}


def speed_worker(a: argparse.Namespace) -> None:
    """Our loop (speed.py's Ours) after learning starts, with SB3 alternating when --sb3. With --barrier, timing
    starts once every concurrent worker is warm."""
    import torch

    sys.path.insert(0, str(HERE))
    from speed import SB3, Ours

    torch.set_num_threads(a.threads)
    device, flags = torch.device(a.device), FLAG_SETS[a.flags]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fast = dict(compile="--compile" in flags, cudagraphs="--cudagraphs" in flags)
    ours = Ours("Humanoid-v5", a.random, device, 1, False, **fast)
    ours.run(a.random, learn=False)
    t = time.perf_counter()
    ours.run(a.warmup, learn=True)  # compilation and graph capture happen here
    sync()
    res, sides = {"flags": a.flags, "warmup_s": time.perf_counter() - t}, {"ours": ours}
    if a.sb3:
        try:
            sides["sb3"] = SB3("Humanoid-v5", a.random, device, 1)
            sides["sb3"].run(a.random + a.warmup, learn=False)
        except ImportError:  # benchmark/perf/requirements-bench.txt is not installed (e.g. CI)
            res["sb3_note"], sides = "not installed", {"ours": ours}
    if a.barrier:
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
    res |= {f"{k}_sps": statistics.median(v) for k, v in sps.items()}
    if "sb3_sps" in res:
        res["ratio_vs_sb3"] = res["ours_sps"] / res["sb3_sps"]
    if device.type == "cuda":
        res["max_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(res), flush=True)


def speed_cmd(a: argparse.Namespace, flags: str, threads: int, *extra: str) -> list[str]:
    sizes = [f"--{k}={v}" for k, v in (QUICK if a.quick else FULL).items()]
    cmd = [sys.executable, __file__, "--worker", "--device", a.device, "--flags", flags, f"--threads={threads}"]
    return cmd + sizes + list(extra)


def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_cores": os.cpu_count()}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info |= dict(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        smi = subprocess.run(query, capture_output=True, text=True).stdout if shutil.which(query[0]) else "?"
        info["driver"] = smi.strip()
    return info


def part_tests(a: argparse.Namespace, cuda: bool) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fast_path.py"]
    proc = start(cmd + ["-k", "cuda"] * (a.quick and not cuda))  # on the CPU the suite runs the others anyway
    out, timed_out = finish(proc, 150)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)}
    ok = proc.returncode == 0 and not timed_out
    return {"ok": ok, "counts": counts, "summary": " | ".join(out.strip().splitlines()[-1 if ok else -25 :])}


def mjdata_fields(blob: bytes) -> dict:
    """A pickled MjData's arrays and numbers (a checkpoint's own file), less MuJoCo's wall-clock timers."""
    import pickle

    import mujoco  # noqa: F401  (the pickle names mujoco._structs.MjData)
    import numpy as np

    data = pickle.loads(blob)
    values = {name: getattr(data, name) for name in dir(data) if not name.startswith("_") and name != "timer"}
    arrays = {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in values.items() if isinstance(v, np.ndarray)}
    return arrays | {k: v for k, v in values.items() if isinstance(v, (int, float))}


def compare_trees(a, b, path=""):
    """(number of tensors compared, differing paths, largest absolute difference) of two torch.load'ed checkpoints or
    model files, bit for bit: tensors and floats by their bytes, MjData by its fields, other leaves by ==. Not compared:
    what names where or when the run went (wall-clock episode start, --resume, --run-name, --output-dir)."""
    import struct

    import torch

    if path.endswith(("episode_start_time", "/resume", "/run_name", "/output_dir")):
        return 0, [], 0.0
    if type(a) is not type(b):
        return 0, [f"{path}: {type(a).__name__} vs {type(b).__name__}"], float("inf")
    if isinstance(a, dict):
        out = [compare_trees(a[k], b[k], f"{path}/{k}") if k in a and k in b else (0, [f"{path}/{k}: one side"], 0.0)
               for k in sorted(a.keys() | b.keys(), key=str)]  # fmt: skip
    elif isinstance(a, (list, tuple)) and len(a) == len(b):
        out = [compare_trees(x, y, f"{path}/{i}") for i, (x, y) in enumerate(zip(a, b))]
    elif isinstance(a, torch.Tensor):
        x, y = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
        if x.shape != y.shape or x.dtype != y.dtype:
            return 1, [f"{path}: shape/dtype"], float("inf")
        if x.reshape(-1).view(torch.uint8).equal(y.reshape(-1).view(torch.uint8)):
            return 1, [], 0.0
        return 1, [path], (x.double() - y.double()).abs().max().item() if x.is_floating_point() else float("inf")
    elif isinstance(a, float):
        return 0, ([] if struct.pack("<d", a) == struct.pack("<d", b) else [f"{path}: {a!r} vs {b!r}"]), 0.0
    elif isinstance(a, bytes) and b"MjData" in a[:200]:
        fa, fb = mjdata_fields(a), mjdata_fields(b)
        return 0, [f"{path}.{k}" for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)], 0.0
    else:
        return 0, ([] if a == b else [f"{path}: {a!r} vs {b!r}"]), 0.0
    return sum(o[0] for o in out), [d for o in out for d in o[1]], max((o[2] for o in out), default=0.0)


def part_resume(a: argparse.Namespace, work: Path) -> dict:
    """Pendulum-v1 on the device: A to TOTAL; B to MID, then --resume auto to TOTAL; C = A again. A vs B is the
    exact-resume promise on this device; A vs C says whether the device itself is deterministic."""
    import numpy as np
    import torch

    mid, total = 477, 700
    flags = f"--env-id Pendulum-v1 --device {a.device} --learning-starts 300 --batch-size 64 --buffer-size 400"
    flags += f" --eval-frequency 0 --checkpoint-frequency {mid} --log-frequency 10 --run-name r --resume auto"
    env = {"OMP_NUM_THREADS": "1"}  # CUBLAS_WORKSPACE_CONFIG: the script sets it itself, as for any user

    def run(d: str, steps: int) -> subprocess.Popen:
        cmd = [sys.executable, "sac_continuous.py", *flags.split(), f"--total-timesteps={steps}"]
        return start(cmd + [f"--output-dir={work / d}"], env)

    procs = [run(d, n) for d, n in (("a", total), ("b", mid), ("c", total))]  # at once
    results = [(p, *finish(p, 200)) for p in procs]
    results.append((p := run("b", total), *finish(p, 200)))
    bad = [f"run {i}: exit {p.returncode}: {out[-300:]}" for i, (p, out, t) in enumerate(results) if t or p.returncode]
    if bad:
        return {"ok": False, "error": "; ".join(bad)}
    resumed = "resum" in results[-1][1].lower()  # the second half said it resumed

    def load(d: str) -> tuple[dict, dict, dict]:
        ckpt = max((work / d / "r" / "checkpoints").glob("step_*"))  # the final one, at TOTAL
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        state.pop("best_eval", None)  # B evaluated once more, at MID
        buf = {f.name: np.load(f) for f in sorted((ckpt / "buffer").glob("*.npy"))}
        return torch.load(work / d / "r" / "model.pt", map_location="cpu", weights_only=True), state, buf

    res, ref = {"resumed": resumed}, load("a")
    for label, d in (("resume", "b"), ("rerun", "c")):
        other = load(d)
        (n1, d1, w1), (n2, d2, w2) = compare_trees(ref[0], other[0]), compare_trees(ref[1], other[1])
        buf = [f"buffer/{k}" for k in ref[2] if k not in other[2] or ref[2][k].tobytes() != other[2][k].tobytes()]
        diff = d1 + d2 + buf
        res[label] = dict(identical=not diff, tensors_compared=n1 + n2, differing=diff[:12], max_abs_diff=max(w1, w2))
    return res | {"ok": resumed and res["resume"]["identical"]}


def part_speed(a: argparse.Namespace, cuda: bool) -> dict:
    res = {}
    for name in FLAG_SETS:
        if "cudagraphs" in name and not cuda:
            res[name] = {"ok": False, "skipped": "skipped: no CUDA"}
        elif "compile" in name and a.quick and not cuda:
            res[name] = {"ok": False, "skipped": "skipped: --quick on the CPU (tests/test_fast_path.py covers it)"}
        else:
            sb3 = name in ("eager", "compile+cudagraphs")
            threads = 4 if cuda else 1
            proc = start(speed_cmd(a, name, threads, *["--sb3"] * sb3), {"OMP_NUM_THREADS": str(threads)})
            res[name] = outcome(proc, 120 + 60 * sb3 + 60 * ("compile" in name))
        print(f"speed {name}: {json.dumps(res[name])[:300]}", flush=True)
    return res


def part_throughput(a: argparse.Namespace, speed: dict, work: Path, cuda: bool) -> dict:
    ok = {k: v["ours_sps"] for k, v in speed.items() if v.get("ok")}
    flags = max(ok, key=ok.get) if ok else "eager"
    res = {"flags": flags, "levels": {}}
    for n in [1, 2] if a.quick else [1, 2, 4, 8]:
        barrier = work / f"barrier_{n}"
        barrier.mkdir(parents=True)
        threads = max(1, (os.cpu_count() or 1) // n) if cuda else 1
        cmd = speed_cmd(a, flags, threads, f"--barrier={barrier}", f"--concurrent={n}")
        procs = [start(cmd, {"OMP_NUM_THREADS": str(threads)}) for _ in range(n)]
        t = time.perf_counter()
        runs = [outcome(p, 180 - (time.perf_counter() - t)) for p in procs]
        per = [r["ours_sps"] for r in runs if r["ok"]]
        errors = [r["error"] for r in runs if not r["ok"]][:2]
        res["levels"][n] = {"ok": not errors, "per_run_sps": per, "total_sps": sum(per), "errors": errors}
        if errors:
            break
    done = {n: v["total_sps"] for n, v in res["levels"].items() if v["ok"]}
    if done:  # the fewest runs that reach 90% of the best total: more would only add memory and latency
        res["recommended_jobs"] = min(n for n, v in done.items() if v >= 0.9 * max(done.values()))
    return res | {"ok": bool(done) and all(v["ok"] for v in res["levels"].values())}


def markdown(rep: dict) -> str:
    def f(x, nd=1) -> str:
        return f"{x:,.{nd}f}" if isinstance(x, (int, float)) else str(x)

    lines = [f"# gpu_check: {rep['machine'].get('gpu', 'no GPU')} ({rep['device']}{', --quick' * rep['quick']})", ""]
    lines += [f"Command: `{rep['command']}`  ", f"Commit: {rep['commit']}; total {rep['seconds']:.0f} s.", ""]
    lines += ["## Machine", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rep["machine"].items()]
    lines += ["", "## Correctness", ""]
    if t := rep.get("tests"):
        lines.append(f"- tests/test_fast_path.py: {'PASS' if t['ok'] else 'FAIL'} {t['counts']}; {t['summary']}")
    if r := rep.get("resume"):
        if "error" in r:
            lines.append(f"- resume on {rep['device']}: FAIL: {r['error']}")
        for label, what in (("resume", "stopped at a checkpoint and resumed vs uninterrupted"), ("rerun", "run twice")):
            if d := r.get(label):
                same = "bit-identical" if d["identical"] else f"DIFFERENT, max |diff| {d['max_abs_diff']:.3g}"
                same += f" in {d['differing']}" * (not d["identical"]) + f" ({d['tensors_compared']} tensors, buffer)"
                lines.append(f"- Pendulum-v1 on {rep['device']}, {what}: {same}")
    if s := rep.get("speed"):
        size = QUICK if rep["quick"] else FULL
        lines += ["", "## Speed: Humanoid-v5 steps/s after learning starts", ""]
        lines += [f"{size['random']} random steps, {size['warmup']} warm-up updates (compile and capture are there), "
                  f"then {size['rounds']} x {size['steps']} timed steps, one update each, batch 256; SB3 alternates "
                  "with ours in the same process.", ""]  # fmt: skip
        lines += ["| flags | steps/s | warm-up s | SB3 steps/s | ratio | GPU memory MiB |", "|---|---|---|---|---|---|"]
        for name, v in s.items():
            cells = [f(v.get(k, v.get("sb3_note", ""))) for k in ("ours_sps", "warmup_s", "sb3_sps")]
            cells += [f(v.get("ratio_vs_sb3", ""), 2), f(v.get("max_memory_mib", ""), 0)]
            row = cells if v["ok"] else [v.get("skipped") or "FAIL: " + v.get("error", "")] + [""] * 4
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    if tp := rep.get("throughput"):
        lines += ["", f"## Throughput: concurrent runs with {tp['flags']}", "", "| runs | total steps/s | per run |"]
        lines += ["|---|---|---|"] + [
            f"| {n} | {f(v['total_sps'])} | {', '.join(f(x, 0) for x in v['per_run_sps'])}{' FAIL: ' * (not v['ok'])}"
            f"{'; '.join(v['errors'])} |" for n, v in tp["levels"].items()]  # fmt: skip
        if "recommended_jobs" in tp:
            lines += ["", f"Recommended `benchmark/run.py --jobs {tp['recommended_jobs']}` here (the fewest runs "
                      "within 90% of the best total)."]  # fmt: skip
    lines += ["", "## Verdict", ""] + [f"- {k}: {'ok' if v else 'FAIL'}" for k, v in rep["verdict"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu-check"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every part runs (CI, CPU)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"a comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name, default in dict(flags="eager", threads=1, barrier="", concurrent=1, **FULL).items():
        p.add_argument(f"--{name}", type=type(default), default=default, help=argparse.SUPPRESS)
    p.add_argument("--sb3", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return speed_worker(a) or 0
    import torch

    t0, parts, cuda = time.perf_counter(), [x for x in a.parts.split(",") if x], a.device.startswith("cuda")
    if unknown := set(parts) - set(PARTS):
        p.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    if cuda and not torch.cuda.is_available():
        print(f"error: --device {a.device} but torch sees no CUDA device; use --device cpu --quick", file=sys.stderr)
        return 2
    work = a.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    command = " ".join(["python", "benchmark/perf/gpu_check.py", *sys.argv[1:]])
    rep = {"command": command, "device": a.device, "quick": a.quick, "commit": commit.stdout.strip() or "?"}
    rep["machine"] = machine(a.device)
    for part in parts:  # one at a time, so that no part's timing is disturbed by another
        try:
            rep[part] = {
                "tests": lambda: part_tests(a, cuda),
                "resume": lambda: part_resume(a, work / "resume"),
                "speed": lambda: part_speed(a, cuda),
                "throughput": lambda: part_throughput(a, rep.get("speed", {}), work, cuda),
            }[part]()
        except Exception as e:  # a bug here costs one part, not the report
            rep[part] = {"ok": False, "error": f"gpu_check itself failed: {type(e).__name__}: {e}"}
        print(f"{part}: {json.dumps(rep[part], default=str)[:400]}", flush=True)
    rep["seconds"] = time.perf_counter() - t0
    rep["verdict"] = {k: bool(rep[k].get("ok")) for k in PARTS if k in rep and k != "speed"}
    if "speed" in rep:  # every flag set that ran passed, and one at least ran
        runs = rep["speed"].values()
        rep["verdict"]["speed"] = any(v["ok"] for v in runs) and all(v["ok"] or "skipped" in v for v in runs)
    (a.out / "gpu_check.json").write_text(json.dumps(rep, indent=1, default=str))
    (a.out / "gpu_check.md").write_text(md := markdown(rep))
    shutil.rmtree(work, ignore_errors=True)
    print(md)
    return 0 if all(rep["verdict"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
