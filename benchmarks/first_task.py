"""How soon `make run` writes its first task on the embedded model: the time from the command's
start to the first line of dataset.jsonl, and when each stage's first answers were committed.

    .venv/bin/python benchmarks/first_task.py [--runs 3] [--target 5] [--config pipeline.yaml]
                                              [--tree DIR]

Each run is `selfinstruct run CONFIG --out DIR --target N` (what `make run` runs once
installed) on its own local Ray, in a fresh run directory. The timeline comes from the run's
own files: events.jsonl's run_start, and the first commit (commits.jsonl) that holds each
stage's answers, so it is when the pool wrote them, a few milliseconds after the model
answered. "dataset" is the first task's line, seen by polling the file every 20 ms; "done"
is the command's exit at the target. The digest of dataset.jsonl shows whether two runs of the
same config wrote the same tasks. --tree runs another copy of the project (its `actors` first
on PYTHONPATH, in this virtualenv), to compare before and after a change in the same minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.runs import BIN, env  # noqa: E402

STAGES = ("propose", "classify", "instances")
POLL_S = 0.02
ATTEMPTS = 3


def timeline(out: Path, start: float) -> dict[str, float]:
    """Seconds from `start` to run_start and to the first commit of each stage's answers."""
    marks: dict[str, float] = {}
    for line in (out / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "run_start":
            stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            marks["run_start"] = stamp.timestamp() - start
            break
    for line in (out / "commits.jsonl").read_text().splitlines():
        commit = json.loads(line)
        for key in commit.get("usage", {}):
            stage = key.split(":", 1)[0]
            marks.setdefault(stage, commit["time"] - start)
    return marks


def one_run(config: Path, target: int, out: Path, timeout: float, tree: Path
            ) -> dict[str, Any]:
    """One run from a cold start of the code in `tree`: its timeline, its total time, its
    dataset's digest."""
    dataset = out / "dataset.jsonl"
    log = out.with_suffix(".log").open("w")
    start = time.time()
    proc = subprocess.Popen(
        [str(BIN / "selfinstruct"), "run", str(config), "--out", str(out), "--target",
         str(target), "--no-progress"], cwd=tree, env=env(PYTHONPATH=str(tree)),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    first = None
    while proc.poll() is None and time.time() - start < timeout:
        if first is None and dataset.exists() and dataset.stat().st_size:
            first = time.time() - start
        time.sleep(POLL_S)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and the Ray it started
        raise RuntimeError(f"{out}: the run took longer than {timeout:.0f} s; killed")
    done = time.time() - start
    log.close()
    if proc.returncode:
        raise RuntimeError(f"{out}: the run failed ({proc.returncode}); see {log.name}")
    if first is None:  # written in the last commit, between two polls and the exit
        first = done
    return {**timeline(out, start), "dataset": first, "done": done,
            "digest": hashlib.sha256(dataset.read_bytes()).hexdigest()[:12]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each tree")
    ap.add_argument("--target", type=int, default=5)
    ap.add_argument("--config", type=Path, default=ROOT / "pipeline.yaml")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--tree", type=Path, action="append",
                    help="run the actors package of this copy of the project; given more "
                         "than once, the trees take turns (before and after in the same "
                         "minutes); default: this one")
    ap.add_argument("--keep", type=Path, default=None,
                    help="put the run directories here (default: a temporary folder)")
    args = ap.parse_args()
    trees = [t.resolve() for t in args.tree or [ROOT]]
    base = args.keep or Path(tempfile.mkdtemp(prefix="first_task_"))
    base.mkdir(parents=True, exist_ok=True)
    cols = ("run_start", *STAGES, "dataset", "done")
    print("seconds from the command's start; stage columns: first answers committed")
    print(" ".join(f"{c:>9}" for c in cols), "  digest        tree")
    rows: dict[Path, list[dict[str, Any]]] = {t: [] for t in trees}
    for i in range(args.runs):
        for j, tree in enumerate(trees):
            row = None
            for attempt in range(ATTEMPTS):  # a shared machine's Ray can be killed under us
                try:
                    row = one_run(args.config.resolve(), args.target,
                                  base / f"run{i}-{j}-{attempt}", args.timeout, tree)
                    break
                except RuntimeError as exc:
                    print(exc, flush=True)
            if row is None:
                raise SystemExit(f"{ATTEMPTS} runs of {tree} in a row failed")
            rows[tree].append(row)
            print(" ".join(f"{row.get(c, float('nan')):9.1f}" for c in cols), " ",
                  row["digest"], " ", tree, flush=True)
    for tree, done in rows.items():
        print(f"median of {tree}")
        print(" ".join(f"{statistics.median(r.get(c, float('nan')) for r in done):9.1f}"
                       for c in cols))
        print("first task: median {:.1f} s, all {}".format(
            statistics.median(r["dataset"] for r in done),
            ", ".join(f"{r['dataset']:.1f}" for r in done)))
    print(f"run directories in {base}")


if __name__ == "__main__":
    main()
