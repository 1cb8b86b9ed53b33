"""End to end on a real local Ray with the embedded model: the CLI, and `ray job submit`."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.runs import (
    BIN,
    check_consistent,
    check_finished,
    env,
    lines,
    submit_job,
    wait_for,
    wait_job,
)

pytestmark = pytest.mark.slow


def test_cli_run_on_local_ray_with_embedded_model(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "run", str(ROOT / "pipeline.yaml"), "--out", str(out),
         "--target", "3", "--no-progress"],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = check_finished(out, 3)
    assert json.loads(proc.stdout)["tasks"] == 3
    assert (out / "events.jsonl").read_text().count('"run_end"') == 1
    assert run["timings"]["tasks_per_min"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_against_a_head_on_loopback(tmp_path):
    renv = env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port, dash = _free_port(), _free_port()
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         "--disable-usage-stats", "--include-dashboard=true"],
        env=renv, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-3000:]
    out, stopped = tmp_path / "job-run", tmp_path / "stopped-run"
    try:
        submit_job(dash, renv, "finishes", "selfinstruct", "run", "pipeline.yaml", "--out",
                   str(out), "--target", "2", "--no-progress")
        result = wait_job(dash, renv, "finishes", 900)
        assert result.startswith("SUCCEEDED"), result
        assert '"tasks": 2' in result  # the driver's output streams back
        check_finished(out, 2)
        # `ray job stop` is a graceful stop: partial results complete, resumable.
        submit_job(dash, renv, "stopped", "selfinstruct", "run", "pipeline.yaml", "--out",
                   str(stopped), "--target", "500", "--no-progress")
        wait_for(lambda: len(lines(stopped / "accepted.jsonl")) >= 1, 600)
        subprocess.run([str(BIN / "ray"), "job", "stop", "--address",
                        f"http://127.0.0.1:{dash}", "stopped"], env=renv, capture_output=True,
                       timeout=300)
        result = wait_job(dash, renv, "stopped", 300)
        assert result.startswith("STOPPED"), result
        run = check_consistent(stopped)
        assert run["status"] == "stopped" and run["stop_reason"] == "terminated"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=renv, capture_output=True,
                       timeout=120)


def test_cli_refuses_a_used_or_unwritable_run_dir(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "dataset.jsonl").write_text('{"id": "x"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "run", str(ROOT / "pipeline.yaml"), "--out", str(used),
         "--target", "1"], env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already holds a run; add --resume" in proc.stderr
    assert (used / "dataset.jsonl").read_text() == '{"id": "x"}\n'  # nothing lost
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "run", str(ROOT / "pipeline.yaml"), "--out",
         str(blocked / "sub"), "--target", "1"], env=env(), capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2 and "cannot write the run directory" in proc.stderr
