"""`selfinstruct` (also `python -m actors`): run, validate."""

from __future__ import annotations

import argparse
import json
import sys

from actors.config import ConfigError, load_config
from actors.dedup import DedupInputError
from actors.prompts import TemplateError
from actors.seeds import SeedError


def _cmd_validate(args: argparse.Namespace) -> int:
    from actors.pipeline import load_all_seeds, load_templates

    cfg = load_config(args.config)
    seeds = load_all_seeds(cfg)
    load_templates(cfg)
    print(f"{args.config}: valid ({len(seeds)} seed tasks, target {cfg.run.target}, "
          f"{len(cfg.models)} model(s))")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from actors.pipeline import run_pipeline

    cfg = load_config(args.config)
    summary = run_pipeline(cfg, out_dir=args.out, target=args.target,
                           progress=not args.no_progress)
    counts = summary["counts"]
    print(json.dumps({"status": summary["status"], "stop_reason": summary["stop_reason"],
                      "tasks": summary["tasks"], "out": summary["out"],
                      "wall_s": summary["timings"]["wall_s"],
                      "tasks_per_min": summary["timings"]["tasks_per_min"],
                      "acceptance": summary["acceptance"],
                      "rejected": {k: v["reasons"] for k, v in counts.items() if v["reasons"]}},
                     indent=2))
    if summary.get("failure"):
        print(f"error: {summary['failure']}", file=sys.stderr)
        return 1
    return 0


def _cmd_dedup(args: argparse.Namespace) -> int:
    import time
    from collections import deque

    from actors.dedup import DedupStats, greedy_pass, read_jsonl
    from actors.dedup_index import RougeIndex

    start = time.perf_counter()
    index = RougeIndex(args.threshold, args.keep_at_threshold, args.floor, args.neighbours)
    stats = DedupStats()
    for path in args.against or []:
        for lineno, rec, text in read_jsonl(path, args.field):
            index.add(str(rec.get("id", f"{path}:{lineno}")), text)
            stats.against += 1
    records: deque[dict] = deque()

    def candidates():
        for lineno, rec, text in read_jsonl(args.input, args.field):
            records.append(rec)
            stats.candidates += 1
            yield str(rec.get("id", f"{args.input}:{lineno}")), text

    out = open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    rejected = open(args.rejected, "w", encoding="utf-8") if args.rejected else None  # noqa: SIM115
    try:
        for _, decision in greedy_pass(index, candidates(), args.batch_size):
            rec = records.popleft()
            if decision.keep:
                stats.kept += 1
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            elif rejected:
                rejected.write(json.dumps({
                    "record": rec, "max_rouge_l": decision.max_score,
                    "neighbours": [{"id": n.id, "score": n.score} for n in decision.neighbours],
                }, ensure_ascii=False) + "\n")
    finally:
        out.close()
        if rejected:
            rejected.close()
    wall = time.perf_counter() - start
    rule = "keep if max <= threshold" if args.keep_at_threshold else "keep if max < threshold"
    print(json.dumps({
        "input": args.input, "candidates": stats.candidates, "against": stats.against,
        "kept": stats.kept, "dropped": stats.candidates - stats.kept, "rule": rule,
        "threshold": args.threshold, "wall_s": round(wall, 3),
        "candidates_per_s": round(stats.candidates / max(wall, 1e-9), 1),
        "lcs_computed": index.lcs_computed, "pool_size": len(index),
        "index_mb": round(index.memory_bytes() / 2**20, 1)}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfinstruct", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline until --target tasks are written")
    run.add_argument("config", nargs="?", default="pipeline.yaml")
    run.add_argument("--out", help="run directory (default: run.out in the config)")
    run.add_argument("--target", type=int, help="tasks to write (default: run.target)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run)

    val = sub.add_parser("validate", help="check a pipeline.yaml, its seeds and prompts")
    val.add_argument("config", nargs="?", default="pipeline.yaml")
    val.set_defaults(func=_cmd_validate)

    dd = sub.add_parser("dedup", help="greedy exact ROUGE-L deduplication of a JSONL file")
    dd.add_argument("input", help="JSONL file, one record per line")
    dd.add_argument("--out", required=True, help="where the kept records go (JSONL)")
    dd.add_argument("--field", default="instruction", help="the text field (default instruction)")
    dd.add_argument("--against", action="append", metavar="SEEDS.jsonl",
                    help="pool members added first, never dropped (repeatable)")
    dd.add_argument("--threshold", type=float, default=0.7)
    dd.add_argument("--keep-at-threshold", action="store_true",
                    help="the original code's rule: drop only if the max is > threshold "
                         "(default, the paper's: keep only if every score is < threshold)")
    dd.add_argument("--floor", type=float, default=0.5,
                    help="record neighbours at or above this score (default 0.5)")
    dd.add_argument("--neighbours", type=int, default=10, help="at most this many neighbours")
    dd.add_argument("--rejected", help="also write dropped records with their scores here")
    dd.add_argument("--batch-size", type=int, default=256)
    dd.set_defaults(func=_cmd_dedup)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "target", None) is not None and args.target < 1:
        print("error: --target must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ConfigError, SeedError, TemplateError, DedupInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from actors.pipeline import RunError

        if isinstance(exc, RunError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
