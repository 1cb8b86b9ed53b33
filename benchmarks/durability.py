"""What durability costs: the pool's commit rate with fsync, and how long a resume takes to
read back a large run directory.

    .venv/bin/python benchmarks/durability.py [--tasks 50000] [--dir /tmp/durability-bench]

It drives a synthetic run of --tasks tasks through the real ledger and writer, as the pool
does (5 prompts of 5 candidates each, then their classifications and instances, one commit per
exchange), then times `recover` + `load_state` (what --resume and a restarted pool do) and a
new ledger on the same directory. Instructions are random word strings, so ROUGE-L keeps them.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.config import PipelineConfig  # noqa: E402
from actors.engine.ledger import Ledger  # noqa: E402
from actors.engine.run_inputs import TEMPLATE_STAGES  # noqa: E402
from actors.method.prompts import Shot, load_template  # noqa: E402
from actors.method.stages import StageLogic  # noqa: E402
from actors.providers.llm import Completion  # noqa: E402
from actors.rundir.recovery import load_state  # noqa: E402
from actors.rundir.runlog import recover  # noqa: E402
from actors.rundir.writer import Writer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHOTS = [Shot(f"s{i}", f"Seed instruction number {i}.") for i in range(8)]
ANSWER = "Input: 2 + 2\nOutput: 4\n\nInput: 3 + 3\nOutput: 6"


def stages() -> StageLogic:
    cfg = PipelineConfig()
    templates = {n: load_template(ROOT / "prompts", n, "completion") for n in TEMPLATE_STAGES}
    return StageLogic(cfg, templates)


def open_run(out: Path, tasks: int, st: StageLogic) -> tuple[Writer, Ledger]:
    """The writer and the ledger a pool would hold on this directory."""
    w = Writer(str(out))
    seeds = [{"id": "seed_0", "instruction": "Translate the sentence into French."}]
    ledger = Ledger(st.cfg, seeds, tasks, load_state(out, w.committed), st)
    w.commit(ledger.drain())
    return w, ledger


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--dir", default="/tmp/durability-bench")
    args = ap.parse_args()
    out = Path(args.dir)
    shutil.rmtree(out, ignore_errors=True)
    st = stages()
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    w, ledger = open_run(out, args.tasks, st)
    batches = 0
    start = time.perf_counter()
    while ledger.tasks < args.tasks:
        prompts = ledger.sample("p", 5)
        if not prompts:
            break
        units = []
        for k, _ in prompts:  # one proposer batch: 5 prompts, 5 instructions each
            text = "\n".join(f"{10 + j}. Describe " + " ".join(rng.sample(words, 12)) + "."
                             for j in range(5)).removeprefix("10.")
            units.append(st.propose_outcome(k, SHOTS, Completion(text, "stop", "m")).as_dict())
        ledger.proposed("p", units)
        w.commit(ledger.drain())
        tasks = ledger.take("c", "classify", 64)
        ledger.classified("c", [(t2, u.as_dict()) for t2, u in (
            st.classify_outcome(t, Completion("No", "stop", "m")) for t in tasks)])
        w.commit(ledger.drain())
        tasks = ledger.take("i", "instances", 64)
        ledger.finished("i", [(t["id"], st.instance_outcome(
            t, Completion(ANSWER, "stop", "m")).as_dict()) for t in tasks])
        w.commit(ledger.drain())
        batches += 3
    w.commit(ledger.close())
    w.close()
    wall = time.perf_counter() - start
    n = ledger.tasks
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"wrote {n} tasks in {batches} committed batches: {wall:.1f} s, "
          f"{batches / wall:.0f} batches/s, {n / wall:.0f} tasks/s, {size:.0f} MiB on disk")
    t0 = time.perf_counter()
    state = load_state(out, recover(out))
    t1 = time.perf_counter()
    w, _ = open_run(out, args.tasks, st)
    w.close()
    t2 = time.perf_counter()
    print(f"resume reads it back: recover + load_state {t1 - t0:.2f} s "
          f"({len(state.accepted)} accepted, {len(state.dataset_ids)} in the dataset, "
          f"{sum(state.pending().values())} pending); a new pool's ledger and writer "
          f"{t2 - t1:.2f} s")


if __name__ == "__main__":
    main()
