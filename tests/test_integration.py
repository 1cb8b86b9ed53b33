"""End to end on a real local Ray with the embedded model: the CLI, and `ray job submit`."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.seeds import load_seeds
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    """No RAY_* from outside, and this virtualenv first on PATH, as for a user who activated it
    (a job's entrypoint resolves `selfinstruct` through the head's PATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
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


def test_sigint_stops_gracefully_and_keeps_everything(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors", "run", str(ROOT / "pipeline.yaml"), "--out", str(out),
         "--target", "500", "--no-progress"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(_lines(out / "dataset.jsonl")) < 2:
            time.sleep(1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "stopped" and run["stop_reason"] == "interrupted"
    dataset = _lines(out / "dataset.jsonl")
    assert len(dataset) == run["tasks"] >= 2
    assert all(run["checks"].values()), run["checks"]
    assert run["pool"]["outstanding"] == 0  # every admitted task finished or was recorded
    assert len(load_seeds(out / "dataset.jsonl")) == len(dataset)


def test_cli_refuses_a_used_or_unwritable_run_dir(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "dataset.jsonl").write_text('{"id": "x"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "run", str(ROOT / "pipeline.yaml"), "--out", str(used),
         "--target", "1"], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already holds a dataset.jsonl" in proc.stderr
    assert (used / "dataset.jsonl").read_text() == '{"id": "x"}\n'  # nothing lost
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "run", str(ROOT / "pipeline.yaml"), "--out",
         str(blocked / "sub"), "--target", "1"], env=_env(), capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2 and "cannot write the run directory" in proc.stderr


def test_judge_fills_grades_with_the_embedded_model(tmp_path, capsys):
    from actors.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "t", "instruction": "Add two and three.",
                                "instances": [{"input": "", "output": "5"}],
                                "is_classification": False}) + "\n")
    out = tmp_path / "q.jsonl"
    assert main(["sample", str(data), "--n", "1", "--judge", "local", "--config",
                 str(ROOT / "pipeline.yaml"), "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["graded_by"] and "judge_answer" in row
    assert set(row["grades"]) == {"valid_instruction", "input_fits", "output_correct",
                                  "all_fine"}
