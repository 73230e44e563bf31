"""--track: Weights & Biases in offline mode (no network here), read back from the offline run's .wandb file."""

import importlib.util
import json
import os
import signal
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import SMALL, error_line, finish, latest_ckpt, main_in, ok, run_script, scalars, start

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2", reason="wandb is in requirements-dev.txt")
OFFLINE = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
OFFLINE = {k: v for k, v in OFFLINE.items() if k not in ("WANDB_API_KEY", "WANDB_DIR")}
TRACK = [*SMALL, "--track", "--log-frequency", "25", "--eval-frequency", "200", "--checkpoint-frequency", "200"]


def records(path: Path) -> list:
    """A .wandb file's records: a LevelDB-style log (7-byte header; 32 KiB blocks of crc, length, type, chunk)."""
    data, out, chunk, pos = path.read_bytes(), [], b"", 7
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # too little room left in the block for a header: padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk, pos = chunk + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            out.append(pb.Record.FromString(chunk))
            chunk = b""
    return out


def offline_runs(wandb_dir: Path) -> list[SimpleNamespace]:
    """Each offline W&B run under wandb_dir, oldest first: id, resume flag, rewind point, config, history by step."""
    runs = []
    for path in sorted(wandb_dir.glob("offline-run-*/run-*.wandb")):
        found = records(path)
        run = next(r.run for r in found if r.HasField("run"))
        rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in found]
        rows, b = {row["_step"]: row for row in rows if "_step" in row}, run.branch_point  # b: where it was rewound
        config = {i.key: json.loads(i.value_json) for i in run.config.update}
        rewind = (b.run, b.metric, b.value)
        runs.append(SimpleNamespace(id=run.run_id, resume=run.resume, rewind=rewind, config=config, rows=rows))
    return runs


def test_every_tensorboard_scalar_reaches_wandb_at_its_step_with_the_config(tmp_path):
    ok(run_script(tmp_path, *TRACK, "--total-timesteps", "400", env=OFFLINE))
    (run,) = offline_runs(tmp_path / "runs" / "wandb")
    assert run.id == (tmp_path / "runs" / "r" / "wandb_run_id").read_text()
    assert run.config["env_id"] == "Pendulum-v1" and run.config["batch_size"] == 32 and run.config["track"] is True
    points = scalars(tmp_path / "runs" / "r")
    assert {"charts/episodic_return", "losses/qf_loss", "losses/alpha", "charts/SPS", "eval/mean_return"} <= set(points)
    assert all(run.rows[step][tag] == pytest.approx(v, rel=1e-6) for tag, pts in points.items() for step, v in pts)


# An online W&B that holds the steps below STARTING_STEP: a resumed run's starting_step is its last step + 1
HOLDS_STEPS = """import os, sys, wandb
wandb.Run.starting_step = property(lambda run: int(os.environ["STARTING_STEP"]))
import sac_continuous as sac
sys.argv[0] = sac.__file__
sac.main()
"""


def test_a_resumed_run_continues_the_same_wandb_run_without_resending_its_steps(tmp_path):
    """Stopped at its checkpoint S (exit 75) and resumed to S + 200: the same run id, resumed (resume="allow") with no
    rewind; the steps that W&B says it holds (below S + 100) are not sent again; the last evaluation is there."""
    proc = start(tmp_path, *TRACK, "--total-timesteps", "5000", "--checkpoint-frequency", "0", env=OFFLINE)
    while "step 200: eval" not in proc.err_path.read_text():
        assert proc.poll() is None, proc.err_path.read_text()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc).code == 75
    run_dir = tmp_path / "runs" / "r"
    stop = int(latest_ckpt(run_dir).name[5:])
    (tmp_path / "holds.py").write_text(HOLDS_STEPS)
    resume = [*TRACK, "--total-timesteps", str(stop + 200), "--resume", "auto"]
    ok(run_script(tmp_path, *resume, env=OFFLINE | {"STARTING_STEP": str(stop + 100)}, script=tmp_path / "holds.py"))
    first, second = offline_runs(tmp_path / "runs" / "wandb")
    assert first.id == second.id == (run_dir / "wandb_run_id").read_text()
    assert second.resume is True and second.rewind == ("", "", 0) and max(first.rows) <= stop
    assert min(second.rows) >= stop + 100 and "eval/mean_return" in second.rows[stop + 200]
    points = scalars(run_dir)  # TensorBoard: every point of the resumed run
    assert all(
        second.rows[s][tag] == pytest.approx(v) for tag, pts in points.items() for s, v in pts if s >= stop + 100
    )


def test_an_unreachable_wandb_server_costs_one_line_and_wandb_goes_on_offline(tmp_path):
    """Online W&B with the connection refused: one line on stderr, the run trains to the end, TensorBoard is complete
    and an offline W&B run with the id in wandb_run_id holds its points, in $WANDB_DIR."""
    env = OFFLINE | {"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_INIT_TIMEOUT": "3"}
    env |= {"WANDB_API_KEY": "k" * 40, "WANDB_DIR": str(tmp_path / "w")}  # port 9: discard, closed here
    res = ok(run_script(tmp_path, *TRACK, "--total-timesteps", "300", env=env))
    warnings = [line for line in res.err.splitlines() if "W&B" in line]
    assert len(warnings) == 1 and "W&B init failed" in warnings[0] and "wandb sync " in warnings[0], res.err
    assert "Traceback" not in res.err and "done: 300 steps" in res.err
    (run,) = offline_runs(tmp_path / "w" / "wandb")
    points = scalars(tmp_path / "runs" / "r")
    assert max(s for pts in points.values() for s, _ in pts) == 300 and run.id in warnings[0]
    assert run.id == (tmp_path / "runs" / "r" / "wandb_run_id").read_text()
    assert all(run.rows[step][tag] == pytest.approx(v) for tag, pts in points.items() for step, v in pts)


LOG_FAILS_AT_150 = """import sys, wandb
log = wandb.Run.log
def fail_once(run, data, step=None, **kwargs):
    if step == 150 and not hasattr(wandb, "failed"):
        wandb.failed = True
        raise wandb.Error("HTTP 429: quota exceeded")
    return log(run, data, step=step, **kwargs)
wandb.Run.log = fail_once
import sac_continuous as sac
sys.argv[0] = sac.__file__
sac.main()
"""


def test_a_failing_wandb_log_costs_one_line_and_wandb_goes_on_offline_with_the_same_run_id(tmp_path):
    (tmp_path / "fail.py").write_text(LOG_FAILS_AT_150)
    res = ok(run_script(tmp_path, *TRACK, "--total-timesteps", "300", env=OFFLINE, script=tmp_path / "fail.py"))
    warnings = [line for line in res.err.splitlines() if "W&B" in line]
    before, after = offline_runs(tmp_path / "runs" / "wandb")
    assert len(warnings) == 1 and "W&B log failed (HTTP 429: quota exceeded)" in warnings[0], res.err
    second = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))[-1]
    assert warnings[0].endswith(f"send it later with: wandb sync runs/wandb/{second.name}"), warnings[0]
    assert before.id == after.id and max(before.rows) < 150 <= min(after.rows) and 300 in after.rows


CTRL_C_IN_WANDB_INIT = """import sys, wandb
def init(**kwargs):
    raise KeyboardInterrupt
wandb.init = init
import sac_continuous as sac
sys.argv[0] = sac.__file__
sac.main()
"""


def test_failed_starts_leave_nothing_that_blocks_the_same_command(tmp_path):
    """No API key online (an empty HOME: no ~/.netrc, no W&B settings), or a malformed one: exit 2, one line, nothing
    written. Ctrl-C while W&B starts: exit 130. Then the same command, offline, runs."""
    env = OFFLINE | {"WANDB_MODE": "online", "HOME": str(tmp_path / "home"), "NETRC": str(tmp_path / "none")}
    flags = [*TRACK, "--total-timesteps", "100", "--eval-frequency", "0"]
    line = error_line(run_script(tmp_path, *flags, env=env), "wandb login", "WANDB_API_KEY", "WANDB_MODE=offline")
    assert "no W&B API key" in line and not (tmp_path / "runs").exists()
    error_line(run_script(tmp_path, *flags, env=env | {"WANDB_API_KEY": "abc"}), "WANDB_API_KEY invalid")  # malformed
    (tmp_path / "ctrl_c.py").write_text(CTRL_C_IN_WANDB_INIT)
    assert run_script(tmp_path, *flags, env=OFFLINE, script=tmp_path / "ctrl_c.py").code == 130
    ok(run_script(tmp_path, *flags, env=env | {"WANDB_MODE": "offline"}))


def test_track_without_wandb_is_refused_in_one_line(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    assert "pip install wandb" in error_line(main_in(tmp_path, "--track"), "--track")
    assert not any(tmp_path.rglob("*"))  # nothing written
