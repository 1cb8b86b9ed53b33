"""An incremental ROUGE-L index: greedy deduplication with rouge-score's exact decisions.

rouge-score's F for an LCS of length L between token lists of lengths la and lb is, up to float
rounding, 2L/(la+lb). A pair can reach a prune level tau only if L >= tau*(la+lb)/2, so only
if the two token multisets overlap that much, and only if their lengths are within a ratio. The
index uses bounds that never drop such a pair:

- length: 2*min(la, lb)/(la+lb) >= tau;
- prefix filtering (as in PPJoin): with every token occurrence ordered by one fixed global order,
  two multisets sharing t elements share an element within their first |x|-t+1 elements, so a
  member is indexed by its prefix only and a candidate probes with its own prefix;
- position: no match comes before the first prefix match (i, j), so the overlap is at most
  min(la-i, lb-j);
- overlap: the global order puts rare tokens before the 64 most frequent ("common") ones, so
  after (i, j) the rare matches number at most min(rare_a-i, rare_b-j), and the common ones at
  most the common tokens both hold plus the fewer repeated common occurrences (each list's
  common tokens are one 64-bit mask in every posting entry: no member is read to bound it).

The global order is "rarest first": tokens are re-ranked by document frequency at geometric
pool sizes; tokens first seen since then count as rarer than all. Any fixed order is correct.
Postings are sorted by member length, so the lengths that cannot pass are not even read.

The pairs left get an exact LCS (bit-parallel, over token ids) and rouge-score's float formula.
All of that runs in the compiled kernel (actors/method/rouge_kernel.cpp), which scores a batch's
candidates against the pool in parallel threads with the GIL released; Python keeps the
tokenizer and the vocabulary. Pruning is at min(neighbour floor, threshold) less a small slack,
so decisions, neighbours at or above the floor, and the maximum whenever it reaches the floor
are exact. Below the floor the maximum is the best score among the pairs computed (`max_exact`
is then False), unless the floor is 0, where every member sharing a token is scored and the
maximum is always exact.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from _selfinstruct_rouge import Index

from actors.method.rouge import tokenize

# Bounds are compared with a small slack so float rounding can never prune a pair that
# rouge-score's formula would score at or above the line.
_SLACK = 1e-9


@dataclass(frozen=True)
class Neighbour:
    id: str
    score: float


@dataclass(frozen=True)
class Decision:
    keep: bool
    max_score: float
    neighbours: tuple[Neighbour, ...] = field(default_factory=tuple)
    max_exact: bool = True
    lcs_computed: int = 0


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS has one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class RougeIndex:
    """Greedy ROUGE-L deduplication state: members added in order, candidates checked in order.

    `threads` scores a batch's candidates in parallel (default: every usable CPU).
    `brute_force` scores every pair with the same kernel and threads and no pruning: the
    baseline that measures what the pruning saves, and a check on it.
    """

    def __init__(
        self,
        threshold: float = 0.7,
        keep_at_threshold: bool = False,
        neighbour_floor: float = 0.5,
        max_neighbours: int = 10,
        *,
        threads: int | None = None,
        brute_force: bool = False,
    ) -> None:
        self.threshold = threshold
        self.keep_at_threshold = keep_at_threshold
        self.neighbour_floor = neighbour_floor
        self.max_neighbours = max_neighbours
        tau = max(min(neighbour_floor, threshold) - _SLACK, 0.0)
        self._kernel = Index(tau=tau, floor=neighbour_floor, threshold=threshold,
                             keep_at_threshold=keep_at_threshold, max_neighbours=max_neighbours,
                             brute_force=brute_force, threads=threads or usable_cpus())
        self._vocab: dict[str, int] = {}
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def lcs_computed(self) -> int:
        """Exact LCS computations so far (pairs the bounds could not rule out)."""
        return self._kernel.lcs_computed

    def _encode(self, text: str) -> list[int]:
        """Token ids, given in order of first sight (candidates grow the vocabulary too)."""
        vocab = self._vocab
        out = []
        for tok in tokenize(text):
            tid = vocab.get(tok)
            if tid is None:
                tid = vocab[tok] = len(vocab)
            out.append(tid)
        return out

    def add(self, item_id: str, text: str) -> None:
        """Add a member unconditionally (seeds, or a resumed pool in acceptance order)."""
        self._kernel.add(self._encode(text))
        self._ids.append(item_id)

    def check_batch(self, items: list[tuple[str, str]], add: bool = True) -> list[Decision]:
        """Decide candidates in order, as the greedy pass does one at a time.

        The batch is scored against the pool as it stood at the batch's start in one pass;
        then, in order, each candidate is also scored against the batch's earlier kept ones,
        decided, and (with add) added. The decisions equal a one-at-a-time pass. Without add,
        each candidate is decided against the pool alone.
        """
        results = self._kernel.check([self._encode(text) for _, text in items], add)
        if add:
            self._ids.extend(item_id for (item_id, _), r in zip(items, results, strict=True)
                             if r[0])
        ids = self._ids
        return [Decision(keep=keep, max_score=best, max_exact=exact, lcs_computed=lcs,
                         neighbours=tuple(Neighbour(ids[m], score) for m, score in found))
                for keep, best, exact, lcs, found in results]

    def score(self, text: str) -> Decision:
        """Decide a candidate against the pool without adding it."""
        return self.check_batch([("", text)], add=False)[0]

    def memory_bytes(self) -> int:
        """Approximate bytes held by the index (kernel arrays, ids, vocabulary)."""
        total = self._kernel.memory_bytes()
        total += sum(sys.getsizeof(s) for s in self._ids) + sys.getsizeof(self._ids)
        total += sys.getsizeof(self._vocab) + sum(sys.getsizeof(k) for k in self._vocab)
        return total
