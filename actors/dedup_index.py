"""An incremental ROUGE-L index: greedy deduplication with rouge-score's exact decisions.

Every pool member is a sequence of integer token ids. For a candidate, an inverted index gives
the token-multiset overlap with every member in one vectorised pass; the overlap bounds the LCS,
so 2*overlap/(la+lb) bounds the F-measure from above. Members are scored exactly (C LCS and
rouge-score's float formula) in descending order of that bound, and only while the bound can
still matter: it reaches the neighbour floor, or it could still beat the best score so far.
Pruning therefore never changes a score, a decision or a neighbour.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz.distance import LCSseq

from actors.rouge import f_measure, is_duplicate, tokenize

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
    lcs_computed: int = 0


class RougeIndex:
    """Greedy ROUGE-L deduplication state: members added in order, candidates checked in order."""

    def __init__(
        self,
        threshold: float = 0.7,
        keep_at_threshold: bool = False,
        neighbour_floor: float = 0.5,
        max_neighbours: int = 10,
    ) -> None:
        self.threshold = threshold
        self.keep_at_threshold = keep_at_threshold
        self.neighbour_floor = neighbour_floor
        self.max_neighbours = max_neighbours
        self._vocab: dict[str, int] = {}
        self._ids: list[str] = []
        self._tokens: list[list[int]] = []
        self._lengths = array("i")
        self._post_members: list[array] = []
        self._post_counts: list[array] = []
        self.lcs_computed = 0

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def _encode(self, text: str, grow: bool) -> list[int]:
        out: list[int] = []
        for tok in tokenize(text):
            tid = self._vocab.get(tok)
            if tid is None:
                if not grow:
                    tid = -1 - len(out)  # unseen: matches no member, stays distinct
                else:
                    tid = len(self._vocab)
                    self._vocab[tok] = tid
                    self._post_members.append(array("i"))
                    self._post_counts.append(array("i"))
            out.append(tid)
        return out

    def add(self, item_id: str, text: str) -> None:
        """Add a member unconditionally (seeds, or a resumed pool in acceptance order)."""
        self._add_tokens(item_id, self._encode(text, grow=True))

    def _add_tokens(self, item_id: str, toks: list[int]) -> None:
        member = len(self._ids)
        self._ids.append(item_id)
        self._tokens.append(toks)
        self._lengths.append(len(toks))
        for tid, count in Counter(toks).items():
            self._post_members[tid].append(member)
            self._post_counts[tid].append(count)

    def _overlaps(self, toks: list[int]) -> np.ndarray:
        n = len(self._ids)
        parts_m, parts_w = [], []
        for tid, count in Counter(t for t in toks if t >= 0).items():
            members = np.frombuffer(self._post_members[tid], dtype=np.int32)
            counts = np.frombuffer(self._post_counts[tid], dtype=np.int32)
            parts_m.append(members)
            parts_w.append(np.minimum(counts, count))
        if not parts_m:
            return np.zeros(n, dtype=np.int64)
        return np.bincount(
            np.concatenate(parts_m), weights=np.concatenate(parts_w), minlength=n
        ).astype(np.int64)

    def score(self, text: str) -> Decision:
        """Decide a candidate against the pool without adding it."""
        return self._score_tokens(self._encode(text, grow=False))

    def _score_tokens(self, toks: list[int]) -> Decision:
        la = len(toks)
        n = len(self._ids)
        if n == 0:
            return Decision(keep=True, max_score=0.0)
        if la == 0:
            return Decision(keep=not is_duplicate(0.0, self.threshold, self.keep_at_threshold),
                            max_score=0.0)
        overlap = self._overlaps(toks)
        lengths = np.frombuffer(self._lengths, dtype=np.int32)
        bound = 2.0 * overlap / (la + lengths)
        floor = min(self.neighbour_floor, self.threshold)
        order = np.flatnonzero(overlap > 0)
        order = order[np.argsort(-bound[order], kind="stable")]
        best = 0.0
        found: list[Neighbour] = []
        computed = 0
        for member in order.tolist():
            b = bound[member]
            if b + _SLACK < floor and b + _SLACK < best:
                break
            lcs = int(LCSseq.similarity(toks, self._tokens[member]))
            computed += 1
            f = f_measure(lcs, int(lengths[member]), la)
            best = max(best, f)
            if f >= self.neighbour_floor:
                found.append(Neighbour(self._ids[member], f))
        self.lcs_computed += computed
        found.sort(key=lambda nb: -nb.score)
        return Decision(
            keep=not is_duplicate(best, self.threshold, self.keep_at_threshold),
            max_score=best,
            neighbours=tuple(found[: self.max_neighbours]),
            lcs_computed=computed,
        )

    def check_and_add(self, item_id: str, text: str) -> Decision:
        """Decide a candidate and, if kept, add it to the pool (the greedy pass's step)."""
        decision = self._score_tokens(self._encode(text, grow=False))
        if decision.keep:
            self.add(item_id, text)
        return decision

    def check_batch(self, items: list[tuple[str, str]]) -> list[Decision]:
        """Decide candidates in order; a later one is also compared with earlier kept ones."""
        return [self.check_and_add(item_id, text) for item_id, text in items]
