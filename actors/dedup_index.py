"""An incremental ROUGE-L index: greedy deduplication with rouge-score's exact decisions.

rouge-score's F for an LCS of length L between token lists of lengths la and lb is, up to float
rounding, 2L/(la+lb). A pair can reach a prune level tau only if L >= tau*(la+lb)/2, so only
if the two token multisets overlap that much, and only if their lengths are within a ratio. The
index uses three bounds that never drop such a pair:

- length: 2*min(la, lb)/(la+lb) >= tau;
- prefix filtering (as in PPJoin): with every token occurrence ordered by one fixed global order,
  two multisets sharing t elements share an element within their first |x|-t+1 elements, so a
  member is indexed by its prefix only and a candidate probes with its own prefix;
- position: no match comes before the first prefix match (i, j), so the overlap is at most
  1 + min(la-1-i, lb-1-j).

The global order is "later-seen token first": token ids are given in order of first sight, so
common words get small ids and come last. Any fixed order is correct; this one is fast.

The pairs left get an exact LCS in C (rapidfuzz, over strings whose characters are token ids)
and rouge-score's float formula, vectorised with numpy in the same evaluation order. Pruning is
at min(neighbour floor, threshold) less a small slack, so decisions, neighbours at or above the
floor, and the maximum whenever it reaches the floor are exact. Below the floor the maximum is
the best score among the pairs computed (`max_exact` is then False), unless the floor is 0, where
every member sharing a token is scored and the maximum is always exact.
"""

from __future__ import annotations

import math
import pickle
import sys
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from actors.rouge import is_duplicate, tokenize

# Bounds are compared with a small slack so float rounding can never prune a pair that
# rouge-score's formula would score at or above the line.
_SLACK = 1e-9
_SURROGATES = 0xD800
_SURROGATE_SPAN = 0x800
_MAX_VOCAB = 0x10FFFF - _SURROGATE_SPAN - 2


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


class _Prepared(NamedTuple):
    """A candidate's token ids, its LCS string and its ordered token occurrences."""

    toks: list[int]
    string: str
    elems: list[tuple[int, int]]


def _char(tid: int) -> str:
    """Token id as one code point (skipping surrogates), so LCS runs on plain strings."""
    code = tid + 1
    return chr(code + _SURROGATE_SPAN if code >= _SURROGATES else code)


def f_measures(lcs: np.ndarray, la: int, lb: np.ndarray) -> np.ndarray:
    """rouge-score's 2*P*R/(P+R), element-wise, in its float evaluation order."""
    lcs = lcs.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = lcs / la
        recall = lcs / lb
        denom = precision + recall
        f = 2 * precision * recall / denom
    return np.where(denom > 0, f, 0.0)


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
        self._tau = max(min(neighbour_floor, threshold) - _SLACK, 0.0)
        self._vocab: dict[str, int] = {}
        self._ids: list[str] = []
        self._strings: list[str] = []
        self._lengths = array("i")
        # Postings: for each token occurrence, the members holding it in their prefix, each as
        # member << 16 | its position there (capped, which only loosens the bound).
        self._postings: dict[tuple[int, int], array] = {}
        self._str_arr = np.empty(1024, dtype=object)
        # The global order of tokens: rarest first. Ranks come from document frequencies at the
        # last re-indexing (done at geometric pool sizes, so amortised linear); tokens first seen
        # since then count as rarer than all, later-seen first.
        self._rank: list[int] = []
        self._next_reindex = 1024
        self._reindexes = 0
        self.lcs_computed = 0

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    # -- encoding --------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        """Token ids, given in order of first sight (candidates grow the vocabulary too, so a
        batch's tokens have ids before any of it is added)."""
        out: list[int] = []
        for tok in tokenize(text):
            tid = self._vocab.get(tok)
            if tid is None:
                if len(self._vocab) >= _MAX_VOCAB:
                    raise OverflowError("ROUGE-L index vocabulary is full (1.1M tokens)")
                tid = self._vocab[tok] = len(self._vocab)
            out.append(tid)
        return out

    def _prepare(self, text: str) -> _Prepared:
        toks = self._encode(text)
        return _Prepared(toks, "".join(map(_char, toks)), self._elements(toks))

    def _required_overlap(self, length: int) -> int:
        """Least overlap a sequence of this length needs with any partner to reach tau."""
        if self._tau <= 0:
            return 1
        return max(1, math.ceil(self._tau * length / (2 - self._tau)))

    def _elements(self, toks: list[int]) -> list[tuple[int, int]]:
        """Token occurrences (id, k-th occurrence), in the global order."""
        seen: dict[int, int] = {}
        elems = []
        for t in toks:
            k = seen.get(t, 0)
            seen[t] = k + 1
            elems.append((t, k))
        rank, ranked = self._rank, len(self._rank)
        elems.sort(key=lambda e: (rank[e[0]] if e[0] < ranked else -1 - e[0], e[1]))
        return elems

    def _reindex(self) -> None:
        """Re-rank tokens by document frequency in the pool and rebuild the postings."""
        members = [[_code_to_tid(ord(ch)) for ch in s] for s in self._strings]
        df = [0] * len(self._vocab)
        for toks in members:
            for t in set(toks):
                df[t] += 1
        order = sorted(range(len(df)), key=lambda t: (df[t], -t))
        rank = [0] * len(df)
        for position, t in enumerate(order):
            rank[t] = position
        self._rank = rank
        self._reindexes += 1
        self._postings = {}
        for member, toks in enumerate(members):
            self._post(member, toks)

    # -- adding ----------------------------------------------------------------------------
    def add(self, item_id: str, text: str) -> None:
        """Add a member unconditionally (seeds, or a resumed pool in acceptance order)."""
        self._add_tokens(item_id, self._encode(text))

    def _add_tokens(self, item_id: str, toks: list[int], string: str | None = None,
                    elems: list[tuple[int, int]] | None = None) -> None:
        member = len(self._ids)
        self._ids.append(item_id)
        string = string if string is not None else "".join(map(_char, toks))
        self._strings.append(string)
        if member >= len(self._str_arr):
            grown = np.empty(2 * len(self._str_arr), dtype=object)
            grown[:member] = self._str_arr[:member]
            self._str_arr = grown
        self._str_arr[member] = string
        self._lengths.append(len(toks))
        if len(self._ids) >= self._next_reindex:
            self._next_reindex *= 4
            self._reindex()
        else:
            self._post(member, toks, elems)

    def _post(self, member: int, toks: list[int],
              elems: list[tuple[int, int]] | None = None) -> None:
        elems = elems if elems is not None else self._elements(toks)
        prefix = len(elems) - self._required_overlap(len(elems)) + 1
        for j, elem in enumerate(elems[:max(prefix, 0)]):
            posting = self._postings.get(elem)
            if posting is None:
                posting = self._postings[elem] = array("q")
            posting.append(member << 16 | min(j, 0xFFFF))

    # -- scoring ---------------------------------------------------------------------------
    def _pool_pairs(self, batch: list[_Prepared]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(candidate, member, F) for every pair the bounds cannot rule out, for a whole batch.

        One vectorised pass for all candidates: the numpy and C calls are paid per batch, not
        per candidate, which is what makes the pool fast.
        """
        cand, where, parts = [], [], []
        for c, (toks, _, elems) in enumerate(batch):
            for i, elem in enumerate(elems[: len(toks) - self._required_overlap(len(toks)) + 1]):
                posting = self._postings.get(elem)
                if posting is not None:
                    cand.append(c)
                    where.append(i)
                    parts.append(np.frombuffer(posting, dtype=np.int64))
        if not parts:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0)
        sizes = [len(p) for p in parts]
        enc = np.concatenate(parts)
        m_all = enc >> 16
        c_all = np.repeat(np.array(cand, dtype=np.int64), sizes)
        i_all = np.repeat(np.array(where, dtype=np.int64), sizes)
        lengths = np.array([len(p.toks) for p in batch], dtype=np.int64)
        la = lengths[c_all]
        lb = np.frombuffer(self._lengths, dtype=np.int32)[m_all]
        # The position bound is exact only at a pair's first match, but every later match of
        # the pair has a smaller bound, so "some entry passes" == "the first match passes":
        # filter entries one by one, then keep one entry per pair.
        overlap = np.minimum(1 + np.minimum(la - 1 - i_all, lb - 1 - (enc & 0xFFFF)),
                             np.minimum(lb, la))
        keep = 2.0 * overlap / (la + lb) >= self._tau
        pairs = np.unique(c_all[keep] << 32 | m_all[keep])
        c_of, m_of = pairs >> 32, pairs & 0xFFFFFFFF
        la = lengths[c_of]
        lb = np.frombuffer(self._lengths, dtype=np.int32)[m_of]
        # One C call per candidate against its surviving members: rapidfuzz then prepares the
        # candidate's bit vectors once (about 3x faster than pairwise calls).
        bounds = np.searchsorted(c_of, np.arange(len(batch) + 1))
        choices = self._str_arr[m_of]
        lcs = np.empty(len(m_of), dtype=np.int32)
        for c, prepared in enumerate(batch):
            lo, hi = bounds[c], bounds[c + 1]
            if hi > lo:
                lcs[lo:hi] = process.cdist([prepared.string], choices[lo:hi],
                                           scorer=LCSseq.similarity, dtype=np.int32)[0]
        self.lcs_computed += len(m_of)
        return c_of, m_of, f_measures(lcs, la, lb)

    def _pool_pairs_split(self, batch: list[_Prepared]) -> tuple[np.ndarray, ...]:
        """_pool_pairs on two halves in two threads (numpy and rapidfuzz release the GIL)."""
        if len(batch) < 32:
            return self._pool_pairs(batch)
        half = len(batch) // 2
        first = _executor().submit(self._pool_pairs, batch[:half])
        c2, m2, f2 = self._pool_pairs(batch[half:])
        c1, m1, f1 = first.result()
        return np.concatenate([c1, c2 + half]), np.concatenate([m1, m2]), np.concatenate([f1, f2])

    def _decide(self, scores: np.ndarray, members: np.ndarray, la: int) -> Decision:
        best = float(scores.max()) if len(scores) else 0.0
        found: tuple[Neighbour, ...] = ()
        if best >= self.neighbour_floor and self.max_neighbours:
            hit = np.flatnonzero(scores >= self.neighbour_floor)
            order = hit[np.argsort(-scores[hit], kind="stable")][: self.max_neighbours]
            found = tuple(Neighbour(self._ids[members[k]], float(scores[k])) for k in order)
        exact = best >= self.neighbour_floor or self._tau <= 0 or la == 0 or not self._ids
        return Decision(keep=not is_duplicate(best, self.threshold, self.keep_at_threshold),
                        max_score=best, neighbours=found, max_exact=exact,
                        lcs_computed=len(scores))

    def check_batch(self, items: list[tuple[str, str]], add: bool = True) -> list[Decision]:
        """Decide candidates in order, as the greedy pass does one at a time.

        The batch is scored against the pool as it stood at the batch's start in one pass;
        then, in order, each candidate is also scored against the batch's earlier kept ones,
        decided, and (with add) added. The decisions equal a one-at-a-time pass.
        """
        batch = [self._prepare(text) for _, text in items]
        reindexes = self._reindexes
        c_of, m_of, f = self._pool_pairs_split(batch)
        bounds = np.searchsorted(c_of, np.arange(len(batch) + 1))
        within = self._within_batch(batch) if add and len(batch) > 1 else None
        kept: list[int] = []  # positions in the batch
        kept_members: list[int] = []
        out = []
        for c, ((item_id, _), (toks, string, elems)) in enumerate(
                zip(items, batch, strict=True)):
            lo, hi = bounds[c], bounds[c + 1]
            scores, members = f[lo:hi], m_of[lo:hi]
            if kept and within is not None:
                # The batch's earlier kept candidates are pool members by now.
                scores = np.concatenate([scores, within[c, kept]])
                members = np.concatenate([members, kept_members])
            decision = self._decide(scores, members, len(toks))
            out.append(decision)
            if decision.keep and add:
                # Elements were ordered by the token ranks of the batch's start; a re-indexing
                # since then re-ranked tokens, so they are ordered again.
                self._add_tokens(item_id, toks, string,
                                 elems if self._reindexes == reindexes else None)
                kept.append(c)
                kept_members.append(len(self._ids) - 1)
        return out

    def _within_batch(self, batch: list[_Prepared]) -> np.ndarray:
        """F between every two candidates of a batch, in one multi-threaded C call: cheaper
        than pruning pairs one candidate at a time for a batch this small."""
        strings = [p.string for p in batch]
        lengths = np.array([len(p.toks) for p in batch], dtype=np.int64)
        lcs = process.cdist(strings, strings, scorer=LCSseq.similarity, dtype=np.int32,
                            workers=-1)
        self.lcs_computed += lcs.size
        return f_measures(lcs, lengths[:, None], lengths[None, :])

    def score(self, text: str) -> Decision:
        """Decide a candidate against the pool without adding it."""
        return self.check_batch([("", text)], add=False)[0]

    def check_and_add(self, item_id: str, text: str) -> Decision:
        """Decide a candidate and, if kept, add it to the pool (the greedy pass's step)."""
        return self.check_batch([(item_id, text)])[0]

    # -- state -----------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Approximate bytes held by the index (strings, ids, postings, vocabulary)."""
        total = sum(sys.getsizeof(s) for s in self._strings)
        total += sum(sys.getsizeof(s) for s in self._ids) + sys.getsizeof(self._ids) * 2
        total += self._lengths.buffer_info()[1] * self._lengths.itemsize
        total += sum(sys.getsizeof(arr) + 64 for arr in self._postings.values())
        total += sys.getsizeof(self._postings) + self._str_arr.nbytes + sys.getsizeof(self._vocab)
        total += sum(sys.getsizeof(k) for k in self._vocab)
        return total

    def snapshot(self) -> bytes:
        """The pool in acceptance order, enough to rebuild identical later decisions."""
        settings = (self.threshold, self.keep_at_threshold, self.neighbour_floor,
                    self.max_neighbours)
        vocab = sorted(self._vocab, key=self._vocab.__getitem__)
        return pickle.dumps({"version": 1, "settings": settings, "vocab": vocab,
                             "ids": self._ids, "strings": self._strings},
                            protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, data: bytes) -> RougeIndex:
        state = pickle.loads(data)
        if state.get("version") != 1:
            raise ValueError("unknown ROUGE-L index snapshot version")
        index = cls(*state["settings"])
        index._vocab = {tok: i for i, tok in enumerate(state["vocab"])}
        for item_id, s in zip(state["ids"], state["strings"], strict=True):
            index._add_tokens(item_id, [_code_to_tid(ord(c)) for c in s])
        return index


_EXECUTOR: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rouge-index")
    return _EXECUTOR


def _code_to_tid(code: int) -> int:
    if code >= _SURROGATES + _SURROGATE_SPAN:
        code -= _SURROGATE_SPAN
    return code - 1
