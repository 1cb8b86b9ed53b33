from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
PAPER_SEEDS = SHARED / "self_instruct" / "seed_tasks.jsonl"
ALPACA = SHARED / "alpaca" / "alpaca_instructions.jsonl"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared reference data is not beside the project)")
    return path
