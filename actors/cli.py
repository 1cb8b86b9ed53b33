"""`selfinstruct` (also `python -m actors`): run, validate."""

from __future__ import annotations

import argparse
import json
import sys

from actors.config import ConfigError, load_config
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "target", None) is not None and args.target < 1:
        print("error: --target must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ConfigError, SeedError, TemplateError) as exc:
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
