"""Exact greedy ROUGE-L deduplication at scale, each figure beside its target and its baselines
measured in the same run (the machine may be shared: compare within a run).

Baselines: rouge-score's own per-pair cost (pure Python, re-tokenising both texts of every
pair, one thread), and the same compiled kernel without pruning (brute force: every pair, on
pre-tokenised texts, with the same threads). The first ratio mixes kernel, tokenising, pruning
and threads; the second is the pruning's own gain; one line splits the first into its factors
(tokenising once, the kernel on one thread, the threads, the pruning).

Sections, on Alpaca's 52,002 instructions (../shared/data/alpaca):
- the greedy pass at neighbour floor 0.5 (the default: every neighbour >= 0.5 recorded) and
  0.7, under both boundary rules, tokenising included; on one thread; brute force (with a
  check that its decisions and neighbours are the pruned pass's, pair for pair);
- `selfinstruct dedup` with its defaults, end to end (a process of its own: start-up, reading,
  writing included);
- a pool of 100,000 and of 1,000,000 (the latter in a process of its own, so its peak RSS is
  its own): candidates/s with the default settings, batches of 8, 64 and 256.

The pools hold Alpaca's first 40,000 instructions plus synthetic ones: the first half of one
of those instructions (by words) joined to the second half of another, both drawn with
random.Random(1); the candidates are the 12,002 real instructions held out of the pool.

Each timed figure is measured REPEAT times (default 3): the median is judged against the
target, the best is shown beside it.

    python benchmarks/dedup.py [--skip-brute] [--skip-million] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer
from rouge_score import tokenize as rs_tokenize

from actors.method.dedup_index import Decision, RougeIndex, usable_cpus

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / \
    "alpaca_instructions.jsonl"
HELD_OUT = 40_000  # the pools hold instructions before this one; the rest are candidates
GREEDY_TARGET_S = 5.0
CLI_TARGET_S = 5.0
POOL_TARGETS = {100_000: 5_000, 1_000_000: 2_000}  # candidates/s
RSS_TARGET_MB = 2048


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def timed(repeat: int, fn, *args, **kwargs) -> tuple[float, float, Any]:
    """(median, best) seconds of `repeat` calls of fn(*args, **kwargs), and the last result."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def load_alpaca() -> list[str]:
    if not ALPACA.is_file():
        sys.exit(f"{ALPACA} is absent: this benchmark needs the shared reference data")
    with ALPACA.open() as fh:
        return [json.loads(line)["instruction"] for line in fh]


def spliced(texts: list[str], n: int, seed: int) -> list[str]:
    """Instruction-like texts: the first half of one instruction and the second half of
    another (by words), so word order and vocabulary stay realistic."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a, b = rng.choice(texts).split(), rng.choice(texts).split()
        out.append(" ".join(a[: max(1, len(a) // 2)] + b[len(b) // 2:]))
    return out


def rouge_score_costs(texts: list[str], pairs: int = 20_000) -> tuple[float, float]:
    """Seconds per pair on random Alpaca pairs for rouge-score's RougeScorer (tokenising both
    texts every time), and for its LCS and F alone on texts tokenised once."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(0)
    sample = [(rng.choice(texts), rng.choice(texts)) for _ in range(pairs)]
    start = time.perf_counter()
    for a, b in sample:
        scorer.score(a, b)
    per_pair = (time.perf_counter() - start) / pairs
    tokens = [(rs_tokenize.tokenize(a, None), rs_tokenize.tokenize(b, None)) for a, b in sample]
    start = time.perf_counter()
    for a, b in tokens:
        rouge_scorer._score_lcs(a, b)
    return per_pair, (time.perf_counter() - start) / pairs


def greedy(texts: list[str], floor: float, keep_at_threshold: bool = False,
           batch: int = 256, **kwargs) -> tuple[list[Decision], RougeIndex]:
    """The greedy pass in batches, as `selfinstruct dedup` runs it (the index tokenises
    inside check_batch, so timing this times tokenising too)."""
    index = RougeIndex(keep_at_threshold=keep_at_threshold, neighbour_floor=floor, **kwargs)
    items = [(f"alpaca_{i}", t) for i, t in enumerate(texts)]
    decisions = []
    for k in range(0, len(items), batch):
        decisions += index.check_batch(items[k:k + batch])
    return decisions, index


def greedy_pairs(decisions: list[Decision]) -> int:
    """Pairs a greedy pass without pruning compares: each candidate against every member
    kept before it."""
    pairs = kept = 0
    for d in decisions:
        pairs += kept
        kept += d.keep
    return pairs


def same(a: list[Decision], b: list[Decision]) -> bool:
    """Same decisions and the same recorded neighbours (ids and scores, in order)."""
    return [(d.keep, d.neighbours) for d in a] == [(d.keep, d.neighbours) for d in b]


def greedy_section(texts: list[str], costs: tuple[float, float], brute: bool,
                   repeat: int) -> None:
    pair_cost = costs[0]
    pruned: dict[float, tuple[float, list[Decision]]] = {}
    for floor in (0.5, 0.7):
        for rule, kat in (("paper (< 0.7)", False), ("code (<= 0.7)", True)):
            wall, best, (decisions, index) = timed(repeat, greedy, texts, floor, kat)
            pairs = greedy_pairs(decisions)
            line = (f"greedy floor={floor} rule={rule:14s} wall_s={wall:5.2f} (best {best:.2f}) "
                    f"kept={sum(d.keep for d in decisions)} lcs={index.lcs_computed:,} "
                    f"({index.lcs_computed / pairs:.2%} of {pairs:,} pairs) "
                    f"vs rouge-score {pair_cost * pairs / wall:,.0f}x")
            if floor == 0.5:
                line += f"  [target <= {GREEDY_TARGET_S:.0f} s: {verdict(wall <= GREEDY_TARGET_S)}]"
            print(line, flush=True)
            if not kat:
                pruned[floor] = (wall, decisions)
    wall1, best1, (decisions1, _) = timed(repeat, greedy, texts, 0.5, threads=1)
    assert same(decisions1, pruned[0.5][1])
    print(f"greedy floor=0.5 paper rule on 1 thread: wall_s={wall1:.2f} (best {best1:.2f}; "
          f"{wall1 / pruned[0.5][0]:.2f}x the {usable_cpus()}-thread time)", flush=True)
    if brute:
        wall_b, _, (decisions_b, index_b) = timed(1, greedy, texts, 0.5,
                                                 brute_force=True)
        print(f"greedy brute force (same kernel, {usable_cpus()} threads, every pair): "
              f"wall_s={wall_b:.1f} lcs={index_b.lcs_computed:,} "
              f"({index_b.lcs_computed / wall_b / 1e6:.0f}M pairs/s, rouge-score "
              f"{1 / pair_cost:,.0f}/s); pruning's own gain at floor 0.5: "
              f"{wall_b / pruned[0.5][0]:.0f}x, at 0.7: {wall_b / pruned[0.7][0]:.0f}x; "
              f"decisions and neighbours identical: {same(decisions_b, pruned[0.5][1])}",
              flush=True)
        gain_parts(texts[:15_000], costs, wall_b / pruned[0.5][0])


def gain_parts(texts: list[str], costs: tuple[float, float], pruning: float) -> None:
    """The gain over rouge-score, factor by factor: tokenising once, the compiled kernel on
    one thread, the threads, then the pruning (brute-force passes over `texts`, per pair)."""
    per_pair, lcs_only = costs
    one = timed(1, greedy, texts, 0.5, brute_force=True, threads=1)
    many = timed(1, greedy, texts, 0.5, brute_force=True)
    k1, kn = (t[0] / t[2][1].lcs_computed for t in (one, many))
    print(f"the gain over rouge-score, factor by factor (brute force over the first "
          f"{len(texts):,}, per pair, tokenising included): rouge-score {per_pair * 1e6:.1f} us"
          f" -> its LCS on texts tokenised once {lcs_only * 1e6:.1f} us "
          f"({per_pair / lcs_only:.1f}x) -> the C++ kernel on 1 thread {k1 * 1e9:.1f} ns "
          f"({lcs_only / k1:,.0f}x) -> on {usable_cpus()} threads {kn * 1e9:.1f} ns "
          f"({k1 / kn:.2f}x) -> pruning ({pruning:.0f}x, the full pass above): "
          f"{per_pair / kn * pruning:,.0f}x in all", flush=True)


def cli_section(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "actors", "dedup", str(ALPACA),
               "--out", str(Path(tmp) / "kept.jsonl")]
        wall, best, done = timed(repeat, subprocess.run, cmd, check=True, capture_output=True,
                                 text=True)
    summary = json.loads(done.stdout)
    print(f"selfinstruct dedup (defaults) end to end: wall_s={wall:.2f} (best {best:.2f}) "
          f"kept={summary['kept']}  "
          f"[target <= {CLI_TARGET_S:.0f} s: {verdict(wall <= CLI_TARGET_S)}]", flush=True)


def pool_rates(index: RougeIndex, cands: list[str], size: int, repeat: int, pair_cost: float,
               batches: tuple[int, ...] = (8, 64, 256)) -> float:
    """Candidates/s against the pool (without adding), per batch size, and the ratio to
    rouge-score scoring each candidate against every member; returns the last rate."""
    def one_pass(batch: int) -> None:
        for k in range(0, len(cands), batch):
            index.check_batch([(f"c{k + j}", t) for j, t in enumerate(cands[k:k + batch])],
                              add=False)

    for batch in batches:
        lcs_before = index.lcs_computed
        wall, best, _ = timed(repeat, one_pass, batch)
        rate = len(cands) / wall
        line = (f"pool={size:,} floor={index.neighbour_floor} batch={batch}: {rate:,.0f} "
                f"candidates/s (best {len(cands) / best:,.0f}; exact LCS per candidate "
                f"{(index.lcs_computed - lcs_before) / len(cands) / repeat:,.0f}; vs "
                f"rouge-score {rate * pair_cost * size:,.0f}x)")
        if index.neighbour_floor == 0.5 and size in POOL_TARGETS:
            line += (f"  [target >= {POOL_TARGETS[size]:,}/s: "
                     f"{verdict(rate >= POOL_TARGETS[size])}]")
        print(line, flush=True)
    return rate


def build_pool(pool_texts: list[str], **kwargs) -> tuple[RougeIndex, float]:
    index = RougeIndex(**kwargs)
    start = time.perf_counter()
    for i, t in enumerate(pool_texts):
        index.add(f"m{i}", t)
    return index, time.perf_counter() - start


def brute_rate(pool_texts: list[str], cands: list[str], pruned: RougeIndex,
               pruned_rate: float) -> None:
    """Candidates/s scoring every pair with the same kernel and threads (batches of 256), and
    whether its decisions and neighbours are the pruned index's."""
    index, _ = build_pool(pool_texts, brute_force=True)
    items = [(f"c{j}", t) for j, t in enumerate(cands)]
    start = time.perf_counter()
    got = [d for k in range(0, len(items), 256)
           for d in index.check_batch(items[k:k + 256], add=False)]
    rate = len(cands) / (time.perf_counter() - start)
    want = pruned.check_batch(items, add=False)
    print(f"pool={len(index):,} brute force (same kernel, {usable_cpus()} threads): "
          f"{rate:,.1f} candidates/s over {len(cands):,} ({rate * len(index) / 1e6:.0f}M "
          f"pairs/s); pruning's own gain {pruned_rate / rate:,.0f}x; decisions and "
          f"neighbours identical to the pruned index's: {same(got, want)}", flush=True)


def pool_section(texts: list[str], size: int, brute: bool, brute_cands: int,
                 repeat: int, pair_cost: float) -> None:
    pool_texts = texts[:HELD_OUT] + spliced(texts[:HELD_OUT], size - HELD_OUT, seed=1)
    cands = texts[HELD_OUT:]
    index, built = build_pool(pool_texts)
    print(f"pool={size:,}: built in {built:.1f} s, index ~{index.memory_bytes() / 2**20:.0f} MB, "
          f"peak RSS {rss_mb():.0f} MB", flush=True)
    rate = pool_rates(index, cands, size, repeat, pair_cost)
    if brute:
        brute_rate(pool_texts, cands[:brute_cands], index, rate)
    if size == 1_000_000:
        print(f"pool=1,000,000 peak RSS over the whole process {rss_mb():.0f} MB "
              f"[target < {RSS_TARGET_MB} MB: {verdict(rss_mb() < RSS_TARGET_MB)}]",
              flush=True)
    else:
        del index
        index, _ = build_pool(pool_texts, neighbour_floor=0.7)
        pool_rates(index, cands, size, repeat, pair_cost, (256,))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-brute", action="store_true",
                    help="skip the brute-force baselines (about a minute)")
    ap.add_argument("--skip-million", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="timings per figure (median judged)")
    ap.add_argument("--million", type=float, help=argparse.SUPPRESS)  # rouge-score's s/pair
    args = ap.parse_args()
    texts = load_alpaca()
    if args.million:  # the 1,000,000 pool in a process of its own
        pool_section(texts, 1_000_000, not args.skip_brute, 1_000, args.repeat, args.million)
        return
    print(f"{usable_cpus()} usable CPUs (the index's threads), load average "
          f"{os.getloadavg()[0]:.1f}; alpaca instructions: {len(texts):,}", flush=True)
    costs = rouge_score_costs(texts)
    print(f"rouge-score: {costs[0] * 1e6:.1f} us/pair ({1 / costs[0]:,.0f} pairs/s); its LCS "
          f"alone on texts tokenised once {costs[1] * 1e6:.1f} us/pair", flush=True)
    greedy_section(texts, costs, not args.skip_brute, args.repeat)
    cli_section(args.repeat)
    pool_section(texts, 100_000, not args.skip_brute, len(texts) - HELD_OUT, args.repeat,
                 costs[0])
    if not args.skip_million:
        flags = ["--repeat", str(args.repeat)] + (["--skip-brute"] if args.skip_brute else [])
        subprocess.run([sys.executable, __file__, "--million", str(costs[0]), *flags],
                       check=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
