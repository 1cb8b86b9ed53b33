"""`selfinstruct` (or `python -m actors`): run, validate, dedup, report, repair, sample, export,
evaluate"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Callable
from typing import Any

from actors.config import ConfigError, check_flag, load_config
from actors.method.prompts import TemplateError
from actors.method.seeds import SeedError
from actors.tools.dedup import DedupInputError
from actors.tools.evaluate import DEFAULT_TASKS, EvalError
from actors.tools.export import ExportError


def _cmd_validate(args: argparse.Namespace) -> int:
    from actors.engine.run_inputs import load_all_seeds, load_templates
    from actors.tools.preflight import check_prompts

    cfg = load_config(args.config)
    seeds = load_all_seeds(cfg)
    fits = check_prompts(cfg, load_templates(cfg))
    print(f"{args.config}: valid ({len(seeds)} seed tasks, target {cfg.run.target}, "
          f"{len(cfg.models)} model(s))")
    for fit in fits:
        print(f"  {fit}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from actors.engine.run_inputs import load_templates
    from actors.tools.preflight import check_prompts

    cfg = load_config(args.config)
    check_prompts(cfg, load_templates(cfg))  # before Ray or a model starts
    if args.dry_run:
        return _dry_run(cfg, args)
    from actors.engine.pipeline import run_pipeline
    from actors.engine.raynode import ray_output_apart

    with ray_output_apart():
        summary = run_pipeline(cfg, out_dir=args.out, target=args.target,
                               progress=not args.no_progress, resume=args.resume,
                               max_cost=args.max_cost,
                               resume_command=_resume_command(args, cfg.run.out))
    counts = summary["counts"]
    print(json.dumps({"status": summary["status"], "stop_reason": summary["stop_reason"],
                      "tasks": summary["tasks"], "out": summary["out"],
                      "wall_s": summary["timings"]["wall_s"],
                      "tasks_per_min": summary["timings"]["tasks_per_min"],
                      "acceptance": summary["acceptance"],
                      "rejected": {k: v["reasons"] for k, v in counts.items() if v["reasons"]}},
                     indent=2))
    if summary.get("failure"):
        print(f"error: {summary['failure']}; go on with: {summary['resume']}", file=sys.stderr)
        return 1
    return 0


def _resume_command(args: argparse.Namespace, default_out: str) -> str:
    """The command line that goes on with a run where it stopped, from any folder: the same
    config, run directory, target and budget, and --resume."""
    from pathlib import Path

    from actors.rundir.remote import is_remote

    out = args.out or default_out
    words = ["selfinstruct", "run", str(Path(args.config).resolve()), "--out",
             out if is_remote(out) else str(Path(out).resolve())]
    if args.target is not None:
        words += ["--target", str(args.target)]
    if args.max_cost is not None:
        words += ["--max-cost", str(args.max_cost)]
    return shlex.join([*words, "--resume"])


def _dry_run(cfg: Any, args: argparse.Namespace) -> int:
    from actors.engine.run_inputs import load_all_seeds, load_templates
    from actors.tools.estimate import Rates, estimate, observed_rates, render

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
    import contextlib
    import time
    from collections import deque
    from pathlib import Path

    from actors.files import replaced_on_success
    from actors.method.dedup_index import RougeIndex
    from actors.tools.dedup import DedupStats, check_outputs, greedy_pass, read_jsonl

    check_outputs([args.input, *(args.against or [])],
                  {"--out": args.out, "--rejected": args.rejected})
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

    with contextlib.ExitStack() as stack:
        out = stack.enter_context(replaced_on_success(Path(args.out), DedupInputError))
        rejected = stack.enter_context(replaced_on_success(
            Path(args.rejected), DedupInputError)) if args.rejected else None
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

    from actors.tools.analysis import load_source

    source = load_source(path)
    if not source.tasks:
        where = Path(path) / "dataset.jsonl" if Path(path).is_dir() else path
        raise SeedError(f"{where}: no tasks to use")
    return source.tasks


def _cmd_report(args: argparse.Namespace) -> int:
    from actors.tools.report import summary_rows, write_report

    data = write_report(args.path, args.out, args.seeds)
    width = max(len(k) for k, _ in summary_rows(data))
    print(f"report for {data['source']}")
    for key, value in summary_rows(data):
        print(f"  {key:<{width}}  {value}")
    print(f"written: {data['report_dir']}/index.html ({len(data['figures'])} figures)")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from actors.tools.quality import (
        draw_sample,
        grade_percentages,
        judge_messages,
        judge_rows,
        ungraded,
    )

    rows = draw_sample(_tasks_of(args.path), args.n, args.seed)
    base = Path(args.path)
    out = Path(args.out) if args.out else (base / "quality_sample.jsonl" if base.is_dir()
                                           else base.with_name(base.stem + "_quality.jsonl"))
    failed = 0
    if args.judge:
        # Through the provider interface, the gate and the cache, as the pipeline asks.
        from actors.config import Decoding
        from actors.providers.llm import make_request
        from actors.tools.asker import ask_all, model_names

        cfg = load_config(args.config)
        model_names(cfg, [args.judge], args.config, "--judge")
        dec = Decoding(mode="chat", temperature=0.0, max_tokens=40)
        answers = ask_all(cfg, args.judge, [make_request(judge_messages(r), dec, 0)
                                            for r in rows],
                          cfg.cache.path or str(out.parent / "cache.sqlite"), "quality-judge")
        rows = judge_rows(rows, answers, cfg.models[args.judge].label)
        failed = sum(1 for c in answers if c.error)
    with out.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(json.dumps({"sampled": len(rows), "out": str(out),
                      "grades": grade_percentages(rows) or "fill 'grades' in the file",
                      **({"ungraded": ungraded(rows)} if args.judge else {})},
                     indent=2))
    if failed:
        print(f"error: {failed} judge request(s) failed (see judge_error in {out})",
              file=sys.stderr)
        return 1
    return 0


def _cmd_repair(args: argparse.Namespace) -> int:
    from pathlib import Path

    from actors.rundir.repair import repair

    print(json.dumps(repair(Path(args.path)), indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from actors.tools.export import export

    templates = args.templates or str(Path(__file__).resolve().parent.parent / "prompts" /
                                      "finetune_templates.yaml")
    print(json.dumps(export(_tasks_of(args.path), args.format, args.out, args.val_fraction,
                            args.seed, templates), indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from actors.tools.evaluate import EvalOptions, evaluate

    cfg = load_config(args.config)
    opts = EvalOptions(models=args.models, judge=args.judge, tasks=args.tasks, limit=args.limit,
                       seed=args.seed, pairwise=args.pairwise, max_cost=args.max_cost,
                       human=args.human, answer_mode=args.answer_mode,
                       max_tokens=args.max_tokens, judge_max_tokens=args.judge_max_tokens,
                       max_in_flight=args.max_in_flight, progress=not args.no_progress)
    summary = evaluate(cfg, opts, args.out, args.resume)
    keep = ("answered", "graded", "counts", "shares", "unparseable", "answer_errors",
            "judge_errors", "pairwise")
    print(json.dumps({
        "status": summary["status"], "out": summary["out"], "questions": summary["questions"],
        "models": {m: {k: e[k] for k in keep if k in e} for m, e in summary["models"].items()},
        **({"human_agreement": summary["human_agreement"]} if "human_agreement" in summary
           else {}),
        "spent_usd": summary["spent_usd"], "report": summary["report"]}, indent=2))
    if summary["status"] in ("failed", "incomplete"):
        print(f"error: {summary.get('failure') or 'some requests failed'}; --resume asks "
              f"them again", file=sys.stderr)
        return 1
    return 0


def _config_flag(key: str) -> Callable[[str], Any]:
    """The argparse `type` of a flag that stands for config key `key`: checked by the YAML's
    rule before anything starts, so `--max-cost 0` is refused as `max_cost: 0` is."""
    def parse(text: str) -> Any:
        try:
            return check_flag(key, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


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
    run.add_argument("--max-cost", type=_config_flag("run.max_cost"), metavar="USD",
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

    rpr = sub.add_parser("repair", help="rebuild a run's dataset.jsonl, cut outside the "
                         "program, from its commits")
    rpr.add_argument("path", metavar="RUN_DIR", help="the run directory")
    rpr.set_defaults(func=_cmd_repair)

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

    ev = sub.add_parser("evaluate", help="answer evaluation tasks with models, grade A-D "
                        "with a judge model (the paper's human evaluation)")
    ev.add_argument("config", nargs="?", default="pipeline.yaml")
    ev.add_argument("--models", nargs="+", required=True, metavar="NAME",
                    help="models under 'models' in the config that answer")
    ev.add_argument("--judge", required=True, metavar="NAME", help="the model that grades")
    ev.add_argument("--out", required=True, help="evaluation directory")
    ev.add_argument("--tasks", default=str(DEFAULT_TASKS),
                    help="seed-schema JSONL (default: the paper's 252 user-oriented tasks)")
    ev.add_argument("--limit", type=int, help="this many tasks, drawn at random (--seed)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--pairwise", action="store_true",
                    help="also compare each two models' answers, asked in both orders")
    ev.add_argument("--human", metavar="FILE",
                    help="human grades (JSONL: task_id, instance, model, grade): report the "
                         "judge's agreement (Cohen's kappa)")
    ev.add_argument("--resume", action="store_true",
                    help="go on with the evaluation in --out (same settings)")
    ev.add_argument("--max-cost", type=float, metavar="USD",
                    help="stop gracefully once the directory has spent this much")
    ev.add_argument("--answer-mode", choices=["chat", "completion"], default="chat",
                    help="chat: instruction and input as one user turn; completion: the "
                         "export's first prompt-completion template")
    ev.add_argument("--max-tokens", type=int, default=512, help="per answer")
    ev.add_argument("--judge-max-tokens", type=int, default=256, help="per judgement")
    ev.add_argument("--max-in-flight", type=int, default=16,
                    help="requests in flight (and per committed batch)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "target", None) is not None and args.target < 1:
        print("error: --target must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ConfigError, SeedError, TemplateError, DedupInputError, ExportError,
            EvalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from actors.engine.run_inputs import RunError
        from actors.rundir.resume import ResumeError
        from actors.rundir.runlog import RunDirError

        if isinstance(exc, RunError | ResumeError | RunDirError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
