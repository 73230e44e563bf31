"""Command line: --help documents every flag; each kind of bad input is refused in one line (exit 2) with nothing
written; the run directory is named at the start; on a terminal, a progress bar. Refusals call main() in-process."""

import contextlib
import errno
import json
import os
import pty
import re
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SCRIPT, error_line, finish, main_in, ok, run_script, start, tree

README = SCRIPT.parent / "README.md"

# a complete, tiny Pendulum-v1 run: each bad case changes one thing in it
FAST = {"--env-id": "Pendulum-v1", "--total-timesteps": 50, "--learning-starts": 10, "--batch-size": 8}
FAST |= {"--buffer-size": 100, "--eval-episodes": 1, "--checkpoint-frequency": 0, "--device": "cpu"}
FAST |= {"--output-dir": "out", "--run-name": "r"}


def flags(**changes) -> list:
    """FAST with changes (name_with_underscores=value; None drops the flag, True adds a switch)."""
    merged = {**FAST, **{"--" + k.replace("_", "-"): v for k, v in changes.items()}}
    return [x for k, v in merged.items() if v is not None for x in ([k] if v is True else [k, v])]


CLEANRL_FLAGS = "env-id total-timesteps seed torch-deterministic capture-video buffer-size gamma tau batch-size"
CLEANRL_FLAGS += " learning-starts policy-lr q-lr policy-frequency target-network-frequency alpha autotune exp-name"
CLEANRL_FLAGS += " track wandb-project-name wandb-entity"
OWN_FLAGS = "device num-envs num-threads eval-frequency eval-episodes checkpoint-frequency resume eval-checkpoint"
OWN_FLAGS += " run-name output-dir log-frequency compile cudagraphs"


def test_help_documents_every_flag(tmp_path):
    res = main_in(tmp_path, "--help")
    assert res.code == 0, res.err
    text = " ".join(res.out.translate(str.maketrans("│╭╮╰╯─", "      ")).split())  # tyro's box, unwrapped
    for flag in (CLEANRL_FLAGS + " " + OWN_FLAGS).split():
        assert f"--{flag} " in text or f"--{flag}," in text, flag
    for words in ("the id of a gymnasium environment", "target smoothing coefficient", "Exit codes"):
        assert words in text, words
    for entry in re.split(r" (?=--[a-z])", text):  # tyro appends each default: a comment must not give another
        assert entry.count("(default:") <= 1, entry


def test_a_valid_run_names_its_directory_first(tmp_path):
    """The baseline of every refusal below: it runs and writes; off a terminal, `run: <dir>` comes first."""
    res = ok(run_script(tmp_path, *flags()))
    assert res.err.splitlines()[0] == "run: out/r", res.err
    assert (tmp_path / "out" / "r" / "model.pt").is_file()


def test_without_a_thread_exact_blas_mode_a_run_says_so_in_one_line(tmp_path, monkeypatch):
    """As on torch without MKL or a CPU without MKL's strict mode: here, a non-strict MKL_CBWR of the user's."""
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    res = ok(main_in(tmp_path, *flags()))
    assert res.err.splitlines()[:2] == [
        "note: no thread-exact BLAS mode here (MKL, AVX2): same bits only at a fixed --num-threads",
        "run: out/r",
    ], res.err


@pytest.fixture(scope="module")
def hopper_model(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("hopper")
    ok(main_in(cwd, *flags(env_id="Hopper-v5")))
    return cwd / "out" / "r" / "model.pt"


def test_eval_checkpoint_takes_the_env_from_the_model_file(tmp_path, hopper_model):
    res = ok(main_in(tmp_path, "--eval-checkpoint", hopper_model, "--eval-episodes", "1"))
    assert res.out.startswith(f"Hopper-v5 {hopper_model}: mean return"), res.out


def test_readme_policy_snippet_loads_a_model_and_acts(tmp_path, monkeypatch, hopper_model):
    """README's lines that load model.pt and act with it, run as they are on a freshly trained model."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    (code,) = [b for b in blocks if "from sac_continuous import Actor" in b]
    (tmp_path / "runs" / "NAME").mkdir(parents=True)
    (tmp_path / "runs" / "NAME" / "model.pt").write_bytes(hopper_model.read_bytes())
    monkeypatch.chdir(tmp_path)
    exec(code, names := {})
    assert names["action"].shape == (3,) and names["env"].action_space.contains(names["action"])


def prepare(root, hopper_model, case: str) -> None:
    (root / "models").mkdir()
    for name in ("models/model.pt", "models/best_model.pt", "hopper.pt"):
        (root / name).write_bytes(hopper_model.read_bytes())
    (root / "file").write_text("a file, not a directory")
    (root / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"format": "sac_continuous/checkpoint/v1", "global_step": 1}, root / "state.pt")
    if case == "existing run directory":
        (root / "out" / "r").mkdir(parents=True)
        (root / "out" / "r" / "model.pt").write_text("precious")


ENVIRONMENT = {"compile without a compiler": ("CXX", "no-such-compiler")}
ENVIRONMENT["unwritable output dir in the container"] = ("SAC_COMMAND", "docker run -v $PWD:/work sac")
ENVIRONMENT["root-owned output dir in the container"] = ENVIRONMENT["unwritable output dir in the container"]
BAD = {  # case: (changes to FAST, what the line must name)
    "unknown env": (dict(env_id="NotAnEnv-v0"), ["NotAnEnv-v0"]),
    "discrete env": (dict(env_id="CartPole-v1"), ["CartPole-v1", "Discrete"]),
    "zero steps": (dict(total_timesteps=0), ["--total-timesteps"]),
    "zero envs": (dict(num_envs=0), ["--num-envs"]),
    "negative learning starts": (dict(learning_starts=-1), ["--learning-starts"]),
    "gamma 0": (dict(gamma=0), ["--gamma"]),
    "tau 2": (dict(tau=2), ["--tau"]),
    "negative seed": (dict(seed=-1), ["--seed", "-1", "2**32"]),
    "seed of 2**33": (dict(seed=2**33), ["--seed", str(2**33)]),
    "buffer larger than memory": (dict(buffer_size=10**11), ["--buffer-size 100000000000", "GiB", "available"]),
    "buffer too small for the envs": (dict(num_envs=4, buffer_size=8, batch_size=4), ["--buffer-size"]),
    "batch larger than buffer": (dict(batch_size=512, buffer_size=256), ["--batch-size", "--buffer-size"]),
    "resume auto without run name": (dict(resume="auto", run_name=None), ["--resume auto", "--run-name"]),
    "resume and eval checkpoint": (dict(resume="auto", eval_checkpoint="hopper.pt"), ["--resume", "--eval-checkpoint"]),
    "resume a missing path": (dict(resume="missing/run"), ["missing/run"]),
    "existing run directory": (dict(), ["out/r", "--resume auto", "--run-name"]),
    "missing eval checkpoint": (dict(eval_checkpoint="missing/model.pt"), ["missing/model.pt"]),
    "eval checkpoint is a directory": (
        dict(eval_checkpoint="models"),
        ["models", "directory", "model.pt", "best_model.pt"],
    ),
    "eval checkpoint of another env": (dict(eval_checkpoint="hopper.pt"), ["hopper.pt", "Hopper-v5", "Pendulum-v1"]),
    "eval checkpoint is garbage": (dict(eval_checkpoint="garbage.pt"), ["garbage.pt"]),
    "eval checkpoint is a checkpoint": (dict(eval_checkpoint="state.pt"), ["state.pt", "sac_continuous.py"]),
    "not a device": (dict(device="tpu9"), ["--device", "tpu9"]),
    "cuda without CUDA": (dict(device="cuda"), ["--device cuda", "CUDA"]),
    "cudagraphs on the cpu": (dict(cudagraphs=True), ["--cudagraphs", "CUDA"]),
    "compile without a compiler": (dict(compile=True), ["--compile", "no-such-compiler"]),
    "unwritable output dir": (dict(output_dir="file/sub"), ["file/sub", "choose a writable --output-dir"]),
    "unwritable output dir in the container": (
        dict(output_dir="file/sub"),
        ["file/sub", ", or run the container as your user: docker run -v $PWD:/work sac"],
    ),
    "root-owned output dir in the container": (
        dict(output_dir="/no-such-dir/runs"),  # "/": root's on every machine
        ["(Permission denied): / is owned by root (did Docker create it?): sudo chown $(id -u):$(id -g) /, or mkdir"],
    ),
}


def denied_under_root(path: Path, *args, mkdir=Path.mkdir, **kwargs):  # a user who is not root, in / (mode 755)
    if str(path).startswith("/no-such-dir"):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return mkdir(path, *args, **kwargs)


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, monkeypatch, hopper_model, case):
    if case == "cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    prepare(tmp_path, hopper_model, case)
    if case in ENVIRONMENT:
        monkeypatch.setenv(*ENVIRONMENT[case])
    if case.startswith("root-owned"):
        monkeypatch.setattr(Path, "mkdir", denied_under_root)
    changes, words = BAD[case]
    before = tree(tmp_path)
    error_line(main_in(tmp_path, *flags(**changes)), *words)
    assert tree(tmp_path) == before


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/PID/maps")
def test_ctrl_c_while_torch_imports_exits_130_in_one_line(tmp_path):
    """SIGINT once torch's library is loaded, amid the seconds its import takes: one line, exit 130, nothing written."""
    proc = start(tmp_path, *flags())
    maps = Path(f"/proc/{proc.pid}/maps")
    while proc.poll() is None and "libtorch" not in maps.read_text():
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    res = finish(proc, timeout=60)
    assert res.code == 130 and res.err == "interrupted\n" and not (tmp_path / "out").exists(), res.err


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_the_image_gives_the_script_readmes_docker_line_for_its_commands(tmp_path, gpu):
    """The image's entrypoint with the Dockerfile's SAC_COMMAND, the script replaced by one that prints it: README's
    CPU line, or its GPU line (--gpus all) where the NVIDIA toolkit put nvidia-smi into the container."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text('#!/bin/sh\necho "$SAC_COMMAND"\n')
    if gpu:
        (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\n")
    for program in (tmp_path / "bin").iterdir():
        program.chmod(0o755)
    dockerfile = (SCRIPT.parent / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/bin/sh", "/app/entrypoint.sh"]' in dockerfile and "docker/entrypoint.sh ./" in dockerfile
    command = re.search(r"SAC_COMMAND='([^']*)'", dockerfile)[1]
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SAC_COMMAND": command}
    res = subprocess.run(["sh", SCRIPT.parent / "docker" / "entrypoint.sh"], env=env, capture_output=True, text=True)
    line = "docker run --rm --gpus all --user" if gpu else "docker run --rm --user"
    assert res.stdout.startswith(line) and f"{res.stdout.strip()} --env-id Humanoid-v5" in README.read_text()


def test_a_bad_pickle_header_is_one_line_in_a_real_process(tmp_path):
    """A pickle PROTO opcode with an unknown protocol: torch also prints a warning, which must not show."""
    (tmp_path / "model.pt").write_bytes(b"\x80\xb3" + bytes(range(256)) * 16)
    error_line(run_script(tmp_path, *flags(eval_checkpoint="model.pt")), "model.pt")


FAKE_TRITON = """import json, os, sys
json.dump({"mujoco_loaded": "mujoco" in sys.modules}, open(os.environ["TRITON_PROBE"], "w"))"""


@pytest.mark.parametrize("mujoco_gl", ["osmesa", "egl"])
def test_triton_is_imported_before_mujoco_under_osmesa(tmp_path, mujoco_gl):
    """OSMesa and torch's triton each carry an LLVM: triton imported after OSMesa segfaults (the CUDA image with
    --capture-video on a CPU). A stand-in triton records whether mujoco was loaded before it."""
    (tmp_path / "fake" / "triton").mkdir(parents=True)
    (tmp_path / "fake" / "triton" / "__init__.py").write_text(FAKE_TRITON)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake"), "TRITON_PROBE": str(tmp_path / "probe.json")}
    res = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, flags(total_timesteps=0))],
        cwd=tmp_path,
        env={**env, "MUJOCO_GL": mujoco_gl},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2  # the import comes first, before any input check
    probe = tmp_path / "probe.json"
    assert json.loads(probe.read_text()) == {"mujoco_loaded": False} if mujoco_gl == "osmesa" else not probe.exists()


SLOW_UPDATES = """
import os, sys, time
import sac_continuous as sac
original = sac.SAC.update
def update(self, batch):  # training runs at about 20 steps per second, the random phase some 100 times faster
    time.sleep(5 if os.path.exists("stall") else 0.05)  # stalled: a step long enough to press Ctrl-C twice in
    return original(self, batch)
sac.SAC.update = update
sys.argv[0] = sac.__file__
sac.main()
"""


def test_progress_bar_on_a_terminal_shows_each_phase_its_own_eta_and_rate_and_restores_the_cursor(tmp_path):
    """Random actions until step 1,000 (a bar of that phase, its ETA), then slow training, checkpointed every 100
    steps, until a double Ctrl-C. The training bar's SPS is the recent rate the checkpoints show (not one since the
    process started), its ETA that of the training rate, no return shown before an episode has ended; the second
    Ctrl-C quits at once (130) and still shows the cursor again."""
    (tmp_path / "slow.py").write_text(SLOW_UPDATES)
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent), "TERM": "xterm", "COLUMNS": "200"}
    slow = dict(total_timesteps=100_000, learning_starts=1000, batch_size=32, buffer_size=2000, output_dir="runs")
    slow = flags(**slow, log_frequency=10, checkpoint_frequency=100)
    proc = subprocess.Popen(
        [sys.executable, "slow.py", *map(str, slow)], cwd=tmp_path, env=env, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks, saved, checkpoints = [], {}, tmp_path / "runs" / "r" / "checkpoints"  # saved: step -> time written

    def read(seconds: float) -> bool:  # what the terminal shows in that time; False once the child closed it
        end = time.time() + seconds
        while time.time() < end:
            try:
                if select.select([leader], [], [], 0.05)[0]:
                    chunks.append(os.read(leader, 65536))
            except OSError:
                return False
        return True

    while max(saved, default=0) < 1200:
        assert read(0.05) and proc.poll() is None, b"".join(chunks)[-3000:]
        with contextlib.suppress(OSError, ValueError):
            name = (checkpoints / "latest").read_text().strip()
            saved.setdefault(int(name[5:]), (checkpoints / name / "state.pt").stat().st_mtime)
    (tmp_path / "stall").touch()
    read(0.5)
    proc.send_signal(signal.SIGINT)
    read(0.5)
    proc.send_signal(signal.SIGINT)
    while read(1):
        pass
    assert proc.wait(timeout=60) == 130
    output = b"".join(chunks)
    assert output.rstrip().endswith(b"\x1b[?25h"), output[-300:]
    screen = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "\n", output.decode(errors="replace"))
    assert "run: runs/r" in screen and "nan" not in screen.lower()
    etas = {}  # total -> [(step, ETA in seconds)] of the frames of that bar
    for m, total, h, mi, sec in re.findall(r"(\d+)/(\d+)\s[^/]*?ETA\s+(\d+):(\d\d):(\d\d)", screen):
        etas.setdefault(int(total), []).append((int(m), int(h) * 3600 + int(mi) * 60 + int(sec)))
    assert etas[1000] and all(eta <= 60 for _, eta in etas[1000]), etas  # the random phase's own, not the run's
    training = etas[100_000]
    assert min(m for m, _ in training) >= 1000, training  # the whole run's bar only once training started
    # training takes at least 0.05 s a step: the ETA at step m is at least (100,000 - m) / 20 s (rounded down)
    assert all(eta >= (100_000 - m) / 20 - 1 for m, eta in training if m > 1010), training
    measured = (1200 - 1100) / (saved[1200] - saved[1100])
    shown = [int(sps) for m, sps in re.findall(r"(\d+)/100000\s+(\d+) SPS", screen) if 1100 <= int(m) <= 1200]
    assert shown and abs(statistics.median(shown) / measured - 1) < 0.2, (measured, shown)


# the script with the load average it reads (its one input besides the flags) replaced, printing its final thread count
THREADS_WRAPPER = """import atexit, os, runpy, sys, torch
os.getloadavg = lambda: (float(os.environ["FAKE_LOAD"]),) * 3
atexit.register(lambda: print("torch threads", torch.get_num_threads(), file=sys.stderr))
runpy.run_path(sys.argv[0], run_name="__main__")"""


THREADS = {"idle: every core": (0, [], {}, os.cpu_count()), "busy: one thread": (50, [], {}, 1)}
THREADS["--num-threads"] = (0, ["--num-threads", "1"], {}, 1)
THREADS["OMP_NUM_THREADS kept"] = (0, [], {"OMP_NUM_THREADS": "1"}, 1)
# a run that just started beside processes that hold all cores but one: the average does not show its own thread yet
THREADS["just started, one core idle"] = ((os.cpu_count() or 1) - 1, [], {}, 1)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every rule gives one thread")
@pytest.mark.parametrize("load,extra,user_env,threads", THREADS.values(), ids=list(THREADS))
def test_thread_count_follows_the_flag_the_environment_or_the_idle_cores(tmp_path, load, extra, user_env, threads):
    (wrapper := tmp_path / "wrapper.py").write_text(THREADS_WRAPPER.replace("sys.argv[0]", repr(str(SCRIPT))))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} | user_env
    res = ok(run_script(tmp_path, *flags(log_frequency=5), *extra, script=wrapper, env=env | {"FAKE_LOAD": str(load)}))
    assert f"torch threads {threads}" in res.err, res.err
