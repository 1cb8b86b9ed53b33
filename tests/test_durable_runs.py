"""Durability end to end: SIGKILL and resume, SIGINT, a killed actor, replay from the cache."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.runs import (
    check_consistent,
    check_finished,
    config,
    kill_session,
    lines,
    start,
    wait_for,
)

pytestmark = pytest.mark.slow


def newlines(path: Path) -> int:
    """Lines so far in a file being written (a line may be half there)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def test_sigkill_at_random_points_then_resume_loses_and_repeats_nothing(tmp_path):
    cfg, out, target = config(tmp_path), tmp_path / "run", 16
    rng = random.Random(int(os.environ.get("KILL_SEED", "7")))
    kills = []
    for attempt in range(5):
        commits = newlines(out / "commits.jsonl")
        proc = start(cfg, out, target, *(["--resume"] if attempt else []))
        # Once this life has committed something, at a random moment of the batches that
        # follow.
        wait_for(lambda c=commits: newlines(out / "commits.jsonl") > c, 300, proc)
        delay = rng.uniform(0, 4)
        time.sleep(delay)
        assert proc.poll() is None, "finished before it could be killed"
        kills.append((round(delay, 1), newlines(out / "dataset.jsonl")))
        kill_session(proc)
    finish(proc := start(cfg, out, target, "--resume"))
    run = check_finished(out, target)
    assert run["resumes"] == 5
    assert sum(1 for _ in (out / "events.jsonl").open() if '"run_start"' in _) == 6
    # Every accepted instruction ended in the dataset or was rejected with a reason.
    accepted = {a["id"] for a in lines(out / "accepted.jsonl")}
    finished = {d["id"] for d in lines(out / "dataset.jsonl")} | {
        r["item"]["id"] for r in lines(out / "rejected.jsonl") if r["stage"] == "task"}
    assert accepted == finished, (kills, accepted - finished)
    print("kills (seconds after a commit, tasks written):", kills)


def test_sigint_stops_gracefully_keeps_everything_and_resumes(tmp_path):
    cfg, out = config(tmp_path), tmp_path / "run"
    proc = start(cfg, out, 500)
    wait_for(lambda: len(lines(out / "dataset.jsonl")) >= 2, 300, proc)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    finish(proc, timeout=300)
    stop_s = time.time() - sent
    run = check_consistent(out)
    assert run["status"] == "stopped" and run["stop_reason"] == "interrupted"
    assert run["tasks"] >= 2 and stop_s < 90
    # The stopped run goes on from where it was, with a new target: the earliest pending
    # tasks finish, the others stay pending.
    finish(start(cfg, out, run["tasks"] + 1, "--resume"))
    resumed = check_finished(out, run["tasks"] + 1, leftover=True)
    assert resumed["resumes"] == 1


def _actor_pids(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith(f"ray::{name}"):
                pids.append(int(entry))
    return pids


@pytest.mark.parametrize("victim,share", [("Instancer", False), ("Pool", True),
                                          ("Proposer", True)])
def test_a_killed_actor_is_restarted_and_the_run_finishes(tmp_path, victim, share):
    """An instance actor in a process of its own, or the process every stage worker shares
    (`ray::Proposer+Classifier+Instancer`), comes back and the work it held is handed out
    again (a worker's new life's first call to the pool says so); the pool, which is also the
    run directory's writer, comes back (with the gate, where a run has one) and rebuilds
    itself from the files; the run reaches its target."""
    cfg = config(tmp_path, actors={"share_processes": share})
    out, target = tmp_path / "run", 6
    proc = start(cfg, out, target)
    try:
        # Once tasks are being classified, every kind of actor holds work in flight.
        wait_for(lambda: any(r["stage"] == "classify" for r in lines(out / "responses.jsonl")),
                 300, proc)
        wait_for(lambda: _actor_pids(victim), 60, proc)
        (pid,) = _actor_pids(victim)[:1]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: [p for p in _actor_pids(victim) if p != pid], 120, proc)
        finish(proc)
    finally:
        if proc.poll() is None:
            kill_session(proc)
    run = check_finished(out, target)
    if victim != "Pool":
        restarts = run["actor_restarts"]
        assert sum(v for k, v in restarts.items() if k.startswith(victim.lower())) == 1
        assert '"actor_died"' in (out / "events.jsonl").read_text()


def test_replay_from_the_cache_without_a_model_writes_the_same_dataset(tmp_path):
    cache = tmp_path / "cache.sqlite"
    first, replay = tmp_path / "first", tmp_path / "replay"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    finish(start(config(tmp_path / "a", cache={"enabled": True, "path": str(cache)}),
                 first, 5))
    check_finished(first, 5)
    # No model is started at all: any request the cache lacks could not be answered.
    out = finish(start(config(tmp_path / "b", cache={"enabled": True, "path": str(cache),
                                                     "replay_only": True}), replay, 5))
    run = check_finished(replay, 5)
    assert json.loads(out)["tasks"] == 5
    for stage, u in run["usage"].items():
        assert u["cache_hits"] == u["requests"], stage  # not one call reached a model
    for name in ("dataset.jsonl", "accepted.jsonl"):
        assert (replay / name).read_bytes() == (first / name).read_bytes(), name
    # The replay asked nothing the first run did not; what it asked came back the same.
    recorded = {r["id"]: r for r in lines(first / "responses.jsonl")}
    for r in lines(replay / "responses.jsonl"):
        assert recorded[r["id"]] == r
