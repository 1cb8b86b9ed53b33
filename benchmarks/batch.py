"""Online against provider batches: the same run, twice, on the fake API.

    .venv/bin/python benchmarks/batch.py [--tasks 1000] [--batch-delay 30] [--latency 0.5]
        [--mix all|instances] [--lag 20]

Both runs use one Anthropic-protocol model priced at $3 / $15 per million tokens. The online
run keeps 32 requests in flight at --latency seconds each; the batch run sends every stage
(--mix all), or only classification and instances (--mix instances: proposals online, so the
loop turns fast), through the Message Batches API, each batch ending --batch-delay seconds
after it is submitted. Prints cost, wall time, batches and batch items per run. The fake
server answers a request the same way online and in a batch, so both runs write the same
dataset and the cost ratio is the batch price alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import fake_server  # noqa: E402


def write_config(path: Path, url: str, delivery: dict[str, str], lag: int,
                 max_requests: int) -> Path:
    data = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
    data["seeds"] = [str(ROOT / s) for s in data["seeds"]]
    data["prompts_dir"] = str(ROOT / data["prompts_dir"])
    data["models"] = {"api": {"provider": "anthropic", "model": "fake", "base_url": url,
                              "api_key_env": "SI_FAKE_KEY",
                              "price": {"input_per_mtok": 3.0, "output_per_mtok": 15.0},
                              "limits": {"max_in_flight": 32}}}
    data["stages"] = {s: {**data.get("stages", {}).get(s, {}), "model": "api", "mode": "chat",
                          "delivery": delivery.get(s, "online"),
                          "max_in_flight_per_actor": 16,
                          "batch": {"max_requests": max_requests, "max_wait_s": 5.0,
                                    "poll_s": 2.0}}
                      for s in ("propose", "classify", "instances")}
    data["stages"]["propose"]["machine_shot_lag"] = lag
    path.write_text(yaml.safe_dump(data))
    return path


def run(cfg: Path, out: Path, tasks: int) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "actors", "run", str(cfg), "--out", str(out),
                           "--target", str(tasks), "--no-progress"], cwd=ROOT,
                          env={**os.environ, "SI_FAKE_KEY": "x"},
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"run failed: {proc.stderr[-3000:]}")
    summary = json.loads((out / "run.json").read_text())
    batches = summary.get("batches", {})
    total = summary["totals"]["all"]
    return {"wall_s": round(wall, 1), "tasks": summary["tasks"],
            "cost_usd": round(total["cost_usd"], 4),
            "saved_usd": round(total.get("batch_saved_usd", 0.0), 4),
            "requests": total["requests"], "batches": batches.get("batches", 0),
            "batch_items": batches.get("items", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--batch-delay", type=float, default=30.0)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--mix", choices=("all", "instances"), default="all")
    ap.add_argument("--lag", type=int, default=20, help="stages.propose.machine_shot_lag")
    ap.add_argument("--max-requests", type=int, default=1000, help="per batch")
    args = ap.parse_args()
    batched = (["propose"] if args.mix == "all" else []) + ["classify", "instances"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, delivery in (("online", {}), ("batch", dict.fromkeys(batched, "batch"))):
            # A server each, so each run's prompt cache starts empty.
            with fake_server(latency=args.latency, batch_delay=args.batch_delay) as srv:
                cfg = write_config(Path(tmp) / f"{name}.yaml", srv.url, delivery, args.lag,
                                   args.max_requests)
                rows[name] = run(cfg, Path(tmp) / name, args.tasks)
    print(f"{args.tasks} tasks, fake API at {args.latency} s a request, batches end "
          f"{args.batch_delay} s after submission, batched stages: {', '.join(batched)}, "
          f"machine_shot_lag {args.lag}")
    print(f"{'run':<8} {'wall s':>8} {'cost USD':>9} {'saved USD':>10} {'requests':>9} "
          f"{'batches':>8} {'items':>7}")
    for name, r in rows.items():
        print(f"{name:<8} {r['wall_s']:>8} {r['cost_usd']:>9} {r['saved_usd']:>10} "
              f"{r['requests']:>9} {r['batches']:>8} {r['batch_items']:>7}")
    print(f"cost ratio batch/online: {rows['batch']['cost_usd'] / rows['online']['cost_usd']:.3f};"
          f" wall ratio: {rows['batch']['wall_s'] / rows['online']['wall_s']:.2f}")


if __name__ == "__main__":
    main()
