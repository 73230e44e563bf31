"""--track: Weights & Biases in offline mode (no network here), read back from the offline run's .wandb file."""

import importlib.util
import json
import os
import shutil
import signal
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import SMALL, error_line, finish, latest_ckpt, main_in, ok, run_script, scalars, start

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2", reason="wandb is in requirements-dev.txt")
OFFLINE = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
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


def offline_runs(cwd: Path) -> list[SimpleNamespace]:
    """Each offline W&B run under runs/wandb, oldest first: id, rewind point, config and history rows by step."""
    runs = []
    for path in sorted((cwd / "runs" / "wandb").glob("offline-run-*/run-*.wandb")):
        found = records(path)
        run = next(r.run for r in found if r.HasField("run"))
        rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in found]
        rows, b = {row["_step"]: row for row in rows if "_step" in row}, run.branch_point  # b: where it was rewound
        config = {i.key: json.loads(i.value_json) for i in run.config.update}
        runs.append(SimpleNamespace(id=run.run_id, rewind=(b.run, b.metric, b.value), config=config, rows=rows))
    return runs


def test_every_tensorboard_scalar_reaches_wandb_at_its_step_with_the_config(tmp_path):
    ok(run_script(tmp_path, *TRACK, "--total-timesteps", "400", env=OFFLINE))
    (run,) = offline_runs(tmp_path)
    assert run.id == (tmp_path / "runs" / "r" / "wandb_run_id").read_text()
    assert run.config["env_id"] == "Pendulum-v1" and run.config["batch_size"] == 32 and run.config["track"] is True
    points = scalars(tmp_path / "runs" / "r")
    assert {"charts/episodic_return", "losses/qf_loss", "losses/alpha", "charts/SPS", "eval/mean_return"} <= set(points)
    assert all(run.rows[step][tag] == pytest.approx(v, rel=1e-6) for tag, pts in points.items() for step, v in pts)


def test_a_rerun_continues_the_wandb_run_rewound_to_its_checkpoint(tmp_path):
    """A process that logged past its checkpoint S and died: the rerun rewinds W&B to S, so those points are replaced,
    not repeated. Stopped at S and copied; resumed to S + 200 (the dead one's points); the copy put back, resumed."""
    proc = start(tmp_path, *TRACK, "--total-timesteps", "5000", "--checkpoint-frequency", "0", env=OFFLINE)
    while "step 200: eval" not in proc.err_path.read_text():
        assert proc.poll() is None, proc.err_path.read_text()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc).code == 75
    run_dir, backup = tmp_path / "runs" / "r", tmp_path / "backup"
    stop = int(latest_ckpt(run_dir).name[5:])
    shutil.copytree(run_dir, backup)
    resume = [*TRACK, "--total-timesteps", str(stop + 200), "--resume", "auto"]
    ok(run_script(tmp_path, *resume, env=OFFLINE))
    shutil.rmtree(run_dir)
    backup.rename(run_dir)
    ok(run_script(tmp_path, *resume, env=OFFLINE))
    first, second, third = offline_runs(tmp_path)
    assert first.id == second.id == third.id == (run_dir / "wandb_run_id").read_text()
    assert second.rewind == third.rewind == (first.id, "_step", stop) and max(first.rows) <= stop
    assert min(second.rows) > stop and sorted(third.rows) == sorted(second.rows)  # these would have been repeated
    same = lambda row: {k: v for k, v in row.items() if "/" in k and k != "charts/SPS"}  # noqa: E731
    assert all(same(row) == same(second.rows[step]) for step, row in third.rows.items())  # exact: the same points


def test_track_without_wandb_is_refused_in_one_line(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    assert "pip install wandb" in error_line(main_in(tmp_path, "--track"), "--track")
    assert not any(tmp_path.rglob("*"))  # nothing written
