"""End to end on a real local Ray with the embedded model: the CLI, and `ray job submit`."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from actors.seeds import load_seeds
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(extra)
    return env


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()] if path.exists() else []


def check_run_dir(out: Path, target: int) -> dict:
    """What a finished run must satisfy, whatever the model said."""
    run = json.loads((out / "run.json").read_text())
    dataset = _lines(out / "dataset.jsonl")
    rejected = _lines(out / "rejected.jsonl")
    responses = _lines(out / "responses.jsonl")
    assert run["status"] == "completed" and run["stop_reason"] == "target_reached"
    assert len(dataset) == target == run["tasks"]
    assert len(load_seeds(out / "dataset.jsonl")) == target  # seeds the next run as is
    assert all(run["checks"].values()), run["checks"]
    ids = [d["id"] for d in dataset]
    assert len(set(ids)) == len(ids)
    response_ids = {r["id"] for r in responses}
    for task in dataset:
        prov = task["provenance"]
        assert len(prov["shots"]) == 8
        assert prov["propose"]["response_id"] in response_ids
        assert prov["instances"]["response_id"] in response_ids
        assert prov["classify"]["answer"] in ("yes", "no", "unclear")
        assert 0.0 <= prov["rouge"]["max"] < 0.7
        assert task["instances"] and all(i["output"].strip() for i in task["instances"])
    for rec in rejected:
        assert rec["stage"] and rec["rule"] and "reason" in rec
    # The counts in run.json are the files' counts.
    by_stage: dict[str, int] = {}
    for rec in rejected:
        by_stage[rec["stage"]] = by_stage.get(rec["stage"], 0) + 1
    assert by_stage == {k: v["rejected"] for k, v in run["counts"].items() if v["rejected"]}
    assert run["counts"]["task"]["accepted"] == len(dataset)
    assert sum(u["requests"] for u in run["usage"].values()) == len(responses)
    assert run["config"]["dedup"]["threshold"] == 0.7
    assert run["versions"]["ray"]
    return run


def test_cli_run_on_local_ray_with_embedded_model(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "run", str(ROOT / "pipeline.yaml"), "--out", str(out),
         "--target", "3", "--no-progress"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = check_run_dir(out, 3)
    assert json.loads(proc.stdout)["tasks"] == 3
    assert (out / "events.jsonl").read_text().count('"run_end"') == 1
    assert run["timings"]["tasks_per_min"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_against_a_head_on_loopback(tmp_path):
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port, dash = _free_port(), _free_port()
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         "--disable-usage-stats", "--include-dashboard=true"],
        env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-3000:]
    out = tmp_path / "job-run"
    try:
        job = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
             "--working-dir", str(ROOT), "--", "selfinstruct", "run", "pipeline.yaml",
             "--out", str(out), "--target", "2", "--no-progress"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout + job.stderr
        check_run_dir(out, 2)
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True,
                       timeout=120)
