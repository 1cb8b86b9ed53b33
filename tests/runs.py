"""Helpers for the end-to-end tests: the environment, starting and killing runs, and what any
run directory must satisfy whatever the model said."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from actors.method.seeds import load_seeds
from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def env(**extra: str) -> dict[str, str]:
    """No RAY_* from outside, and this virtualenv first on PATH, as for a user who activated it
    (a job's entrypoint resolves `selfinstruct` through the head's PATH)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    out.update(extra)
    return out


def lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file (one being written may end in half a line)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.open() if line.endswith("\n")]


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` laid over it, mappings merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def config(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    """pipeline.yaml with some sections changed, written where its paths still resolve."""
    data = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
    data["seeds"] = [str(ROOT / s) for s in data["seeds"]]
    data["prompts_dir"] = str(ROOT / data["prompts_dir"])
    data = merged(data, sections)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start(cfg: Path, out: Path, target: int, *extra: str, **environ: str) -> subprocess.Popen:
    """The CLI in its own session, so a test can kill it together with its whole Ray."""
    return subprocess.Popen(
        [sys.executable, "-m", "actors", "run", str(cfg), "--out", str(out), "--target",
         str(target), "--no-progress", *extra],
        cwd=out.parent, env=env(**environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)


def session_pids(sid: int) -> list[int]:
    """Live processes of a session (a zombie is dead already, waiting to be reaped)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if os.getsid(int(entry)) == sid and stat.rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry))
            except (OSError, IndexError):
                pass
    return pids


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every Ray process it started (GCS, raylet, workers)."""
    sid = proc.pid
    deadline = time.time() + 60
    while (pids := session_pids(sid)) and time.time() < deadline:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    proc.wait(timeout=30)
    assert not session_pids(sid), "processes of the killed run are still alive"


def wait_for(predicate: Any, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run exited early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError("timed out waiting")


def check_consistent(out: Path) -> dict[str, Any]:
    """What any stopped or finished run directory satisfies: the counts in run.json are the
    files' counts, nothing appears twice, and every accepted instruction is in the dataset,
    rejected with a reason, or pending for --resume."""
    run = json.loads((out / "run.json").read_text())
    dataset = lines(out / "dataset.jsonl")
    rejected = lines(out / "rejected.jsonl")
    responses = lines(out / "responses.jsonl")
    accepted = lines(out / "accepted.jsonl")
    candidates = lines(out / "candidates.jsonl")
    assert all(run["checks"].values()), run["checks"]
    for records in (dataset, rejected, responses, accepted, candidates):
        keys = [r.get("id") or r["cid"] for r in records]
        assert len(set(keys)) == len(keys), "a record appears twice"
    for records in (dataset, accepted):
        texts = [r["instruction"] for r in records]
        assert len(set(texts)) == len(texts), "an instruction appears twice"
    assert len(dataset) == run["tasks"]
    if dataset:
        assert len(load_seeds(out / "dataset.jsonl")) == len(dataset)  # seeds the next run
    counts = run["counts"]
    by_stage: dict[str, int] = {}
    for rec in rejected:
        assert rec["stage"] and rec["rule"] and rec["reason"]
        by_stage[rec["stage"]] = by_stage.get(rec["stage"], 0) + 1
    assert by_stage == {k: v["rejected"] for k, v in counts.items() if v["rejected"]}
    assert counts.get("task", {}).get("accepted", 0) == len(dataset)
    assert counts.get("dedup", {}).get("accepted", 0) == len(accepted)
    assert counts.get("filter", {}).get("accepted", 0) == len(candidates)
    assert sum(u["requests"] for u in run["usage"].values()) == len(responses)
    failed = {r["item"]["id"] for r in rejected if r["stage"] == "task"}
    done = {d["id"] for d in dataset}
    open_tasks = [a["id"] for a in accepted if a["id"] not in done | failed]
    assert len(open_tasks) == run["pending"]["unclassified"] + run["pending"]["classified"]
    response_ids = {r["id"] for r in responses}
    for task in dataset:
        prov = task["provenance"]
        assert len(prov["shots"]) == 8
        assert prov["propose"]["response_id"] in response_ids
        assert prov["instances"]["response_id"] in response_ids
        assert prov["classify"]["answer"] in ("yes", "no", "unclear")
        assert 0.0 <= prov["rouge"]["max"] < 0.7
        assert task["instances"] and all(i["output"].strip() for i in task["instances"])
    assert run["config"]["dedup"]["threshold"] == 0.7 and run["versions"]["ray"]
    return run


def check_finished(out: Path, target: int, leftover: bool = False) -> dict[str, Any]:
    """A run that reached its target; admission control leaves no admitted task behind,
    unless it was resumed with a target below the work already admitted (`leftover`)."""
    run = check_consistent(out)
    assert run["status"] == "completed" and run["stop_reason"] == "target_reached"
    assert run["tasks"] == target
    if not leftover:
        assert run["pending"]["unclassified"] == run["pending"]["classified"] == 0
    return run


def submit_job(dash: int, renv: dict[str, str], submission_id: str, *entrypoint: str) -> None:
    """`ray job submit --no-wait` with cluster/runtime_env.yaml (the working tree, a minute to
    stop), again while a just-started head has no job agent yet."""
    deadline = time.time() + 120
    while True:
        proc = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
             "--submission-id", submission_id, "--no-wait", "--runtime-env",
             str(ROOT / "cluster" / "runtime_env.yaml"), "--", *entrypoint],
            cwd=ROOT, env=renv, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            return
        if "No available agent" not in proc.stderr + proc.stdout or time.time() > deadline:
            raise AssertionError((proc.stdout + proc.stderr)[-3000:])
        time.sleep(3)


def job_status(dash: int, renv: dict[str, str], submission_id: str) -> str:
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "status", "--address", f"http://127.0.0.1:{dash}",
         submission_id], env=renv, capture_output=True, text=True, timeout=120)
    # A finished job prints "Job 'x' succeeded"; a running one "Status for job 'x': RUNNING".
    text = proc.stdout + proc.stderr
    found = re.search(r"Status for job '[^']+': (\w+)", text) or re.search(
        r"Job '[^']+' (?:was )?(succeeded|failed|stopped)", text)
    return found.group(1).upper() if found else "UNKNOWN"


def wait_job(dash: int, renv: dict[str, str], submission_id: str, timeout: float) -> str:
    """Poll until the job ends; its final status and its driver's log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = job_status(dash, renv, submission_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            logs = subprocess.run(
                [str(BIN / "ray"), "job", "logs", "--address", f"http://127.0.0.1:{dash}",
                 submission_id], env=renv, capture_output=True, text=True, timeout=120)
            return status + "\n" + logs.stdout[-5000:]
        time.sleep(2)
    raise AssertionError(f"job {submission_id} still running after {timeout} s")
