"""Exact greedy ROUGE-L deduplication at scale, against rouge-score's own per-pair cost.

Prints, on all of Alpaca's 52,002 instructions (../shared/data/alpaca): the greedy pass's wall
time (tokenizing included), kept counts under both boundary rules, exact LCS computations and
memory, at the default neighbour floor (0.5) and with the floor at the threshold (decisions and
neighbours >= 0.7 only); rouge-score's measured cost per pair and the ratio; the index's
candidates per second against a pool of 100,000; and its memory at 1,000,000 instructions.

    python benchmarks/dedup.py [--skip-million]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

from rouge_score import rouge_scorer

from actors.dedup_index import RougeIndex

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / \
    "alpaca_instructions.jsonl"
BRUTE_FORCE_COMPARISONS = 1_335_000_000  # a greedy pass over 52,002 compares ~1.335e9 pairs


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rouge_score_pair_cost(texts: list[str], pairs: int = 20_000) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(0)
    sample = [(rng.choice(texts), rng.choice(texts)) for _ in range(pairs)]
    start = time.perf_counter()
    for a, b in sample:
        scorer.score(a, b)
    return (time.perf_counter() - start) / pairs


def greedy(texts: list[str], keep_at_threshold: bool, floor: float, batch: int = 256):
    index = RougeIndex(keep_at_threshold=keep_at_threshold, neighbour_floor=floor)
    items = [(f"alpaca_{i}", t) for i, t in enumerate(texts)]
    start = time.perf_counter()
    kept = 0
    for k in range(0, len(items), batch):
        kept += sum(d.keep for d in index.check_batch(items[k:k + batch]))
    return time.perf_counter() - start, kept, index


def spliced(texts: list[str], n: int, seed: int) -> list[str]:
    """Distinct instruction-like texts: the first half of one Alpaca instruction and the
    second half of another, so word order and vocabulary stay realistic."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a, b = rng.choice(texts).split(), rng.choice(texts).split()
        out.append(" ".join(a[: max(1, len(a) // 2)] + b[len(b) // 2:]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-million", action="store_true")
    args = ap.parse_args()
    if not ALPACA.is_file():
        sys.exit(f"{ALPACA} is absent: this benchmark needs the shared reference data")
    texts = [json.loads(line)["instruction"] for line in ALPACA.open()]
    print(f"alpaca instructions: {len(texts)}")
    pair_cost = rouge_score_pair_cost(texts)
    brute_s = pair_cost * BRUTE_FORCE_COMPARISONS
    print(f"rouge-score: {pair_cost * 1e6:.1f} us/pair ({1 / pair_cost:,.0f} pairs/s); "
          f"a brute-force greedy pass would take {brute_s / 3600:.1f} h")

    for floor in (0.5, 0.7):
        for rule, kat in (("paper (< 0.7)", False), ("code (<= 0.7)", True)):
            wall, kept, index = greedy(texts, kat, floor)
            print(f"greedy floor={floor} rule={rule:14s} wall_s={wall:6.2f} kept={kept} "
                  f"lcs={index.lcs_computed:,} index_mb={index.memory_bytes() / 2**20:.0f} "
                  f"speedup_vs_rouge_score={brute_s / wall:,.0f}x "
                  f"lcs_per_brute_pair={index.lcs_computed / BRUTE_FORCE_COMPARISONS:.4f}")
    print(f"peak rss so far: {rss_mb():.0f} MB")

    # The pool: 40,000 real instructions and 60,000 spliced ones; the candidates: the 12,002
    # real instructions held out of it, decided in batches as the pool actor receives them.
    pool_texts = texts[:40_000] + spliced(texts[:40_000], 60_000, seed=1)
    cands = texts[40_000:]
    for floor in (0.5, 0.7):
        index = RougeIndex(neighbour_floor=floor)
        for i, t in enumerate(pool_texts):
            index.add(f"m{i}", t)
        for batch in (8, 64, 256):
            lcs_before = index.lcs_computed
            start = time.perf_counter()
            for k in range(0, len(cands), batch):
                index.check_batch([(f"c{k + j}", t) for j, t in enumerate(cands[k:k + batch])],
                                  add=False)
            wall = time.perf_counter() - start
            print(f"pool=100,000 floor={floor} batch={batch}: "
                  f"{len(cands) / wall:,.0f} candidates/s "
                  f"(exact LCS per candidate {(index.lcs_computed - lcs_before) / len(cands):.0f})")

    if not args.skip_million:
        del index
        base = rss_mb()
        index = RougeIndex()
        start = time.perf_counter()
        for i, t in enumerate(texts + spliced(texts, 1_000_000 - len(texts), seed=4)):
            index.add(f"task_{i:07d}", t)
        print(f"pool of {len(index):,}: built in {time.perf_counter() - start:.0f} s, "
              f"index ~{index.memory_bytes() / 2**20:.0f} MB, peak rss {rss_mb():.0f} MB "
              f"(was {base:.0f} MB before)")


if __name__ == "__main__":
    main()
