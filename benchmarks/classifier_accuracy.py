"""Accuracy of the classification-identification prompt against labelled seed tasks.

Runs the embedded model (no Ray) on each form of the prompt and prints accuracy, recall on
classification tasks and on the rest, so a prompt or model change can be judged by numbers.

    python benchmarks/classifier_accuracy.py [SEEDS.jsonl] [--limit N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from actors.config import LocalModel, PipelineConfig
from actors.method.parsing import parse_classification
from actors.method.prompts import load_template
from actors.method.seeds import load_seeds
from actors.providers.llm import make_request  # noqa: E402
from actors.providers.local_model import LocalModelWorker

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT.parent / "shared" / "data" / "self_instruct" / "seed_tasks.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("seeds", nargs="?", default=str(PAPER))
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    tasks = load_seeds(args.seeds)
    if args.limit:
        tasks = tasks[: args.limit]
    worker = LocalModelWorker(LocalModel())
    dec = PipelineConfig().stages.classify
    for mode in ("completion", "chat"):
        tpl = load_template(ROOT / "prompts", "classify", mode)
        tp = fp = tn = fn = 0
        start = time.perf_counter()
        for t in tasks:
            c = worker._run(make_request(tpl.render(instruction=t.instruction), dec, seed=0))
            yes = bool(parse_classification(c.text))
            tp += yes and t.is_classification
            fp += yes and not t.is_classification
            tn += (not yes) and not t.is_classification
            fn += (not yes) and t.is_classification
        n = len(tasks)
        print(f"{mode:10s} n={n} accuracy={(tp + tn) / n:.3f} "
              f"recall_cls={tp / max(tp + fn, 1):.3f} recall_gen={tn / max(tn + fp, 1):.3f} "
              f"said_yes={(tp + fp) / n:.3f} s_per_task={(time.perf_counter() - start) / n:.2f}")


if __name__ == "__main__":
    main()
