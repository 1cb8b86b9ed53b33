"""`selfinstruct` (also `python -m actors`): run, validate, dedup, report, sample, export."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from actors.config import ConfigError, load_config
from actors.dedup import DedupInputError
from actors.export import ExportError
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
    if args.dry_run:
        return _dry_run(cfg, args)
    summary = run_pipeline(cfg, out_dir=args.out, target=args.target,
                           progress=not args.no_progress, resume=args.resume,
                           max_cost=args.max_cost)
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


def _dry_run(cfg: Any, args: argparse.Namespace) -> int:
    from actors.estimate import Rates, estimate, observed_rates, render
    from actors.pipeline import load_all_seeds, load_templates

    rates = observed_rates(args.rates_from) if args.rates_from else Rates()
    if args.latency:
        rates = dataclasses.replace(rates, latency_s=args.latency)
    est = estimate(cfg, args.target or cfg.run.target, load_templates(cfg), load_all_seeds(cfg),
                   rates)
    print(render(est))
    print(json.dumps(est, indent=2))
    budget = args.max_cost or cfg.run.max_cost
    if budget is not None and est["cost_usd"] > budget:
        print(f"note: the estimate is over the budget of ${budget}; the run would stop there",
              file=sys.stderr)
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


def _tasks_of(path: str) -> list:
    from pathlib import Path

    from actors.analysis import load_source

    source = load_source(path)
    if not source.tasks:
        where = Path(path) / "dataset.jsonl" if Path(path).is_dir() else path
        raise SeedError(f"{where}: no tasks to use")
    return source.tasks


def _cmd_report(args: argparse.Namespace) -> int:
    from actors.report import summary_rows, write_report

    data = write_report(args.path, args.out, args.seeds)
    width = max(len(k) for k, _ in summary_rows(data))
    print(f"report for {data['source']}")
    for key, value in summary_rows(data):
        print(f"  {key:<{width}}  {value}")
    print(f"written: {data['report_dir']}/index.html ({len(data['figures'])} figures)")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from actors.quality import draw_sample, grade_percentages, judge_rows

    rows = draw_sample(_tasks_of(args.path), args.n, args.seed)
    if args.judge:
        from actors.llm import LocalModelWorker, make_request

        cfg = load_config(args.config)
        if args.judge not in cfg.models:
            raise ConfigError(f"{args.config}: --judge {args.judge!r} is not under 'models'")
        worker = LocalModelWorker(cfg.models[args.judge])
        dec = cfg.stages.classify.model_copy(update={"max_tokens": 40, "mode": "chat"})
        rows = judge_rows(rows, lambda msgs: worker._run(make_request(msgs, dec, 0)).text,
                          cfg.models[args.judge].name)
    base = Path(args.path)
    out = Path(args.out) if args.out else (base / "quality_sample.jsonl" if base.is_dir()
                                           else base.with_name(base.stem + "_quality.jsonl"))
    with out.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(json.dumps({"sampled": len(rows), "out": str(out),
                      "grades": grade_percentages(rows) or "fill 'grades' in the file"},
                     indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from actors.export import export

    templates = args.templates or str(Path(__file__).resolve().parent.parent / "prompts" /
                                      "finetune_templates.yaml")
    print(json.dumps(export(_tasks_of(args.path), args.format, args.out, args.val_fraction,
                            args.seed, templates), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfinstruct", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline until --target tasks are written")
    run.add_argument("config", nargs="?", default="pipeline.yaml")
    run.add_argument("--out", help="run directory (default: run.out in the config)")
    run.add_argument("--target", type=int, help="tasks to write (default: run.target)")
    run.add_argument("--resume", action="store_true",
                     help="go on with the run in --out where it stopped (same method config)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--max-cost", type=float, metavar="USD",
                     help="stop gracefully once the run has spent this much (run.max_cost)")
    run.add_argument("--dry-run", action="store_true",
                     help="estimate requests, tokens, cost and time for the target; send nothing")
    run.add_argument("--rates-from", metavar="RUN_DIR",
                     help="with --dry-run: use the funnel and token figures of an earlier run")
    run.add_argument("--latency", type=float, metavar="S",
                     help="with --dry-run: seconds per request for the time estimate")
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

    rep = sub.add_parser("report", help="the paper's analyses as PNGs and an index.html")
    rep.add_argument("path", help="a run directory, or any seed-schema JSONL file")
    rep.add_argument("--out", help="folder for the report (default RUN_DIR/report)")
    rep.add_argument("--seeds", action="append",
                     help="seed file(s) for novelty (default: the run's seeds)")
    rep.set_defaults(func=_cmd_report)

    smp = sub.add_parser("sample", help="draw the paper's quality sample to grade")
    smp.add_argument("path", help="a run directory, or any seed-schema JSONL file")
    smp.add_argument("--n", type=int, default=200)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--out", help="default RUN_DIR/quality_sample.jsonl")
    smp.add_argument("--judge", help="a model named under 'models' in --config fills grades")
    smp.add_argument("--config", default="pipeline.yaml")
    smp.set_defaults(func=_cmd_sample)

    exp = sub.add_parser("export", help="fine-tuning files from a run or a seed file")
    exp.add_argument("path", help="a run directory, or any seed-schema JSONL file")
    exp.add_argument("--format", required=True,
                     choices=["alpaca", "openai-chat", "sharegpt", "prompt-completion", "hf"])
    exp.add_argument("--out", required=True, help="output folder")
    exp.add_argument("--val-fraction", type=float, default=0.05)
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--templates", help="prompt-completion templates (YAML)")
    exp.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "target", None) is not None and args.target < 1:
        print("error: --target must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ConfigError, SeedError, TemplateError, DedupInputError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from actors.pipeline import RunError
        from actors.resume import ResumeError
        from actors.runlog import RunDirError

        if isinstance(exc, RunError | ResumeError | RunDirError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
