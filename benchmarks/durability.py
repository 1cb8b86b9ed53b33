"""What durability costs: the writer's commit rate with fsync, and how long a resume takes to
read back a large run directory.

    .venv/bin/python benchmarks/durability.py [--tasks 50000] [--dir /tmp/durability-bench]

It writes a synthetic run of --tasks tasks through the real Writer (propose units of 5
candidates, pool decisions, classify and instance units, in batches as the actors send them),
then times `recover` + `load_state` (what --resume, a restarted pool and a restarted writer do)
and a new Writer on the same directory.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.config import Pipeline  # noqa: E402
from actors.llm import Completion  # noqa: E402
from actors.pipeline import TEMPLATE_STAGES  # noqa: E402
from actors.prompts import Shot, load_template  # noqa: E402
from actors.recovery import load_state  # noqa: E402
from actors.runlog import recover  # noqa: E402
from actors.stages import Stages  # noqa: E402
from actors.writer import Writer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHOTS = [Shot(f"s{i}", f"Seed instruction number {i}.") for i in range(8)]
ANSWER = "Input: 2 + 2\nOutput: 4\n\nInput: 3 + 3\nOutput: 6"


def stages() -> Stages:
    cfg = Pipeline()
    templates = {n: load_template(ROOT / "prompts", n, "completion") for n in TEMPLATE_STAGES}
    return Stages(cfg, templates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--dir", default="/tmp/durability-bench")
    args = ap.parse_args()
    out = Path(args.dir)
    shutil.rmtree(out, ignore_errors=True)
    st = stages()
    w = Writer(str(out), args.tasks, st)
    batches, records, n, k = 0, 0, 0, 0
    start = time.perf_counter()
    while n < args.tasks:
        units = []
        for _ in range(5):  # one proposer step: 5 prompts, 5 instructions each
            text = "\n".join(f"{10 + j}. Write task number {k} part {j} about topic {n + j}."
                             for j in range(5)).removeprefix("10.")
            units.append(st.propose_outcome(k, SHOTS, Completion(text, "stop", "m")).as_dict())
            k += 1
        w.write(units)
        cands = [c for u in units for c in u["candidates"]][:8]
        tasks = [{**c, "id": f"task_{n + i:06d}", "rouge": {"max": 0.1}}
                 for i, c in enumerate(cands)]
        w.write([{"accepted": {"dedup": len(tasks)}, "admitted": tasks}])
        labelled = []
        for t in tasks:
            t2, out_c = st.classify_outcome(t, Completion("No", "stop", "m"))
            labelled.append((t2, out_c.as_dict()))
        w.write([u for _, u in labelled])
        w.write([st.instance_outcome(t2, Completion(ANSWER, "stop", "m")).as_dict()
                 for t2, _ in labelled])
        batches += 4
        records += len(units) + 25 + 2 * len(tasks) + len(tasks) * 2
        n += len(tasks)
    w.close()
    wall = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"wrote {n} tasks in {batches} committed batches: {wall:.1f} s, "
          f"{batches / wall:.0f} batches/s, {n / wall:.0f} tasks/s, {size:.0f} MiB on disk")
    t0 = time.perf_counter()
    state = load_state(out, recover(out))
    t1 = time.perf_counter()
    Writer(str(out), args.tasks, st).close()
    t2 = time.perf_counter()
    print(f"resume reads it back: recover + load_state {t1 - t0:.2f} s "
          f"({len(state.accepted)} accepted, {len(state.dataset_ids)} in the dataset, "
          f"{sum(state.pending().values())} pending); a new Writer {t2 - t1:.2f} s")


if __name__ == "__main__":
    main()
