"""A real two-node Ray cluster on this machine: the pipeline as a job, and a node lost mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.runs import BIN, check_finished, env, lines, wait_for

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raylet_pids(resource: str) -> list[int]:
    """The raylet whose node offers `resource` (each `ray start` gives its node one)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "raylet/raylet" in cmd and resource in cmd:
                found.append(int(entry))
    return found


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _actors_by_node(dash: int, renv: dict[str, str]) -> list[dict]:
    """Every actor the cluster has had, with its class, state and node, from the state API."""
    code = ("import json, ray.util.state as s; print(json.dumps([{'cls': a.class_name, "
            "'state': a.state, 'node': a.node_id} for a in s.list_actors("
            f"address='http://127.0.0.1:{dash}', limit=1000, detail=False)]))")
    proc = subprocess.run([str(BIN / "python"), "-c", code], env=renv, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_job_on_two_nodes_survives_losing_the_second(tmp_path):
    renv = env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port, dash = _free_port(), _free_port()
    head = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         '--resources={"head_node": 1}', "--disable-usage-stats"],
        env=renv, capture_output=True, text=True, timeout=180)
    assert head.returncode == 0, head.stderr[-3000:]
    out, target = tmp_path / "run", 8
    try:
        second = subprocess.run(
            [str(BIN / "ray"), "start", f"--address=127.0.0.1:{port}",
             "--node-ip-address=127.0.0.1", "--num-cpus=2", '--resources={"second_node": 1}',
             "--disable-usage-stats"],
            env=renv, capture_output=True, text=True, timeout=180)
        assert second.returncode == 0, second.stderr[-3000:]
        job = subprocess.Popen(
            [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
             "--working-dir", str(ROOT), "--", "selfinstruct", "run", "pipeline.yaml",
             "--out", str(out), "--target", str(target), "--no-progress"],
            cwd=ROOT, env=renv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Both nodes work: proposers, instance actors and model replicas are spread.
        wait_for(lambda: len(lines(out / "accepted.jsonl")) >= 1, 600, job)
        alive = [a for a in _actors_by_node(dash, renv) if a["state"] == "ALIVE"]
        nodes = {a["node"] for a in alive if a["cls"] in (
            "LocalModelWorker", "Instancer", "Proposer", "Proposer+Classifier+Instancer")}
        assert len(nodes) == 2, alive
        (raylet,) = _raylet_pids("second_node")
        lost_node = {a["node"] for a in alive} - {
            a["node"] for a in alive if a["cls"] in ("Pool", "Pool+Gate")}
        # The second node goes away at once: its raylet and every process under it.
        for pid in _descendants(raylet):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        killed_at = len(lines(out / "dataset.jsonl"))
        logs, _ = job.communicate(timeout=900)
        assert job.returncode == 0, logs[-3000:]
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=renv, capture_output=True,
                       timeout=120)
    run = check_finished(out, target)  # nothing lost, nothing twice, counts match the files
    assert killed_at < target
    assert lost_node and run["status"] == "completed"
    print("tasks when the node was lost:", killed_at, "restarts:", run["actor_restarts"])
