"""A run whose Ray node is lost ends at once with one clear line, run.json saying why and how
to go on, and nothing lost: `--resume` finishes it. The pieces the driver uses to see and end
the loss, without a Ray, first."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.cli import _resume_command, build_parser
from actors.engine.raynode import exit_status, node_processes, running
from tests.conftest import ROOT
from tests.runs import (
    check_consistent,
    check_finished,
    config,
    env,
    kill_session,
    lines,
    session_pids,
    start,
    wait_for,
)
from tests.servers import fake_server


def test_exit_status_names_the_signal():
    assert exit_status(-9) == "killed by SIGKILL"
    assert exit_status(-15) == "killed by SIGTERM"
    assert exit_status(1) == "exit status 1"


def test_node_processes_are_the_raylets_children_and_its_workers_wherever_they_went(tmp_path):
    """A worker keeps RAY_RAYLET_PID when its raylet dies and it gets a new parent; a child of
    the raylet (an agent) is found by its parent."""
    fake_raylet = 4_000_000  # above any pid the kernel hands out
    worker = subprocess.Popen(["sleep", "60"], env={**os.environ,
                                                    "RAY_RAYLET_PID": str(fake_raylet)})
    other = subprocess.Popen(["sleep", "60"], env={**os.environ, "RAY_RAYLET_PID": "12"})
    try:
        assert worker.pid in node_processes(fake_raylet)
        assert other.pid not in node_processes(fake_raylet)
        assert node_processes(os.getpid()) >= {worker.pid, other.pid}  # by parent
        assert running(worker.pid)
    finally:
        for proc in (worker, other):
            proc.kill()
    time.sleep(0.2)  # killed, not yet reaped: a zombie is not running
    assert not running(worker.pid) and worker.pid not in node_processes(os.getpid())
    worker.wait()
    other.wait()
    assert not running(worker.pid)


def test_the_resume_command_holds_the_config_out_target_and_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["run", "my.yaml", "--out", "runs/a", "--target", "40",
                                      "--max-cost", "2.5", "--no-progress"])
    assert shlex.split(_resume_command(args, "ignored")) == [
        "selfinstruct", "run", str(tmp_path / "my.yaml"), "--out", str(tmp_path / "runs/a"),
        "--target", "40", "--max-cost", "2.5", "--resume"]
    plain = build_parser().parse_args(["run"])
    assert shlex.split(_resume_command(plain, "s3://bucket/run")) == [
        "selfinstruct", "run", str(tmp_path / "pipeline.yaml"), "--out", "s3://bucket/run",
        "--resume"]


def test_ray_output_goes_to_the_file_and_ours_to_the_terminal(tmp_path):
    """What is written to descriptors 1 and 2 while a run is on (Ray's C++ logs, the errors Ray
    prints to the driver's stdout) lands in the file; sys.stderr stays on the terminal, and
    both descriptors are given back afterwards."""
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from actors.engine.raynode import ray_output_apart, send_ray_output\n"
        "send_ray_output(Path(sys.argv[1]))  # not asked for: nothing moves\n"
        "os.write(2, b'before\\n')\n"
        "with ray_output_apart():\n"
        "    send_ray_output(Path(sys.argv[1]))\n"
        "    os.write(1, b'ray stdout\\n'); os.write(2, b'ray stderr\\n')\n"
        "    print('ray print'); sys.stdout.flush()\n"
        "    print('ours', file=sys.stderr)\n"
        "print('summary'); os.write(2, b'after\\n')\n")
    log = tmp_path / "ray.log"
    proc = subprocess.run([sys.executable, "-c", script, str(log)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "summary\n"
    assert proc.stderr == "before\nours\nafter\n"
    assert log.read_text() == "ray stdout\nray stderr\nray print\n"


def _fake_api_run(tmp_path: Path, url: str) -> Path:
    model = {"fake": {"provider": "openai_compatible", "model": "fake",
                      "base_url": f"{url}/v1"}}
    stages = {s: {"model": "fake", "max_in_flight_per_actor": 4}
              for s in ("propose", "classify", "instances")}
    return config(tmp_path, models=model, stages=stages, ray={"num_cpus": 4})


def _processes_named(sid: int, name: str) -> list[int]:
    """Processes of a session whose executable is `name` (Ray's raylet, its GCS)."""
    found = []
    for pid in session_pids(sid):
        try:
            exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if exe.rsplit("/", 1)[-1] == name:
            found.append(pid)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["raylet", "gcs_server"])
def test_a_run_that_loses_its_ray_node_ends_at_once_and_resumes(tmp_path, victim):
    """SIGKILL the raylet (or the GCS) of the run's own Ray: the run ends within seconds
    (before: ~20 s and a traceback for the raylet, 60 s and nothing for the GCS) with one line
    on the terminal, and Ray's own output (the raylet's last log lines) in ray.log; run.json
    says failed, why, and the command that goes on; everything committed is there, no Ray
    process of the run is left, and that command finishes the run."""
    target = 30
    with fake_server(latency=0.5) as srv:
        cfg, out = _fake_api_run(tmp_path, srv.url), tmp_path / "run"
        proc = start(cfg, out, target)
        try:
            wait_for(lambda: len(lines(out / "dataset.jsonl")) >= 3, 300, proc)
            (pid,) = _processes_named(proc.pid, victim)
            srv.control(latency=60.0)  # from here the run could not finish in the time allowed
            before = lines(out / "dataset.jsonl")
            os.kill(pid, signal.SIGKILL)
            killed = time.time()
            stdout, stderr = proc.communicate(timeout=120)
            took = time.time() - killed
            wait_for(lambda: not session_pids(proc.pid), 10)  # no Ray process is left
        finally:
            if proc.poll() is None or session_pids(proc.pid):
                kill_session(proc)
        print(f"{victim} killed: exit {proc.returncode} after {took:.1f} s; stderr: {stderr}")
        assert proc.returncode == 1 and took < 15
        (line,) = stderr.splitlines()
        what = "raylet" if victim == "raylet" else "GCS"
        assert line.startswith(f"error: Ray lost this machine's node: its {what} stopped "
                               f"(killed by SIGKILL); ")
        assert json.loads(stdout)["status"] == "failed"
        run = check_consistent(out)
        assert run["status"] == "failed" and run["stop_reason"] == "failed"
        assert f"its {what} stopped" in run["failure"]
        assert line.endswith(f"; go on with: {run['resume']}")
        assert (out / "ray.log").stat().st_size > 0
        assert lines(out / "dataset.jsonl")[:len(before)] == before  # nothing written is lost

        srv.control(latency=0.05)
        command = shlex.split(run["resume"])
        assert command[:2] == ["selfinstruct", "run"] and command[-1] == "--resume"
        resumed = subprocess.run([sys.executable, "-m", "actors", *command[1:], "--no-progress"],
                                 cwd=ROOT.parent, env=env(), capture_output=True, text=True,
                                 timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert check_finished(out, target)["resumes"] == 1
    assert lines(out / "dataset.jsonl")[:len(before)] == before
