import json
import math
import random

import numpy as np
import pytest
from rapidfuzz.distance import LCSseq
from rouge_score import rouge_scorer
from rouge_score import tokenize as rs_tokenize

from actors.dedup_index import RougeIndex, _char, f_measures
from actors.rouge import f_measure, is_duplicate, rouge_l, tokenize
from tests.conftest import ALPACA, PAPER_SEEDS, need

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

TRICKY = [
    "", "!!!", "...  ---", "Café naïve résumé", "İstanbul ß straße", "12 3.5 1e9 0x1F",
    "Hello, WORLD!", "tab\tand\nnewline", "emoji 🙂 here", "日本語のテキスト", "a a a a",
    "under_score and-dash", "x" * 50,
]


def test_tokenize_matches_rouge_score():
    for text in TRICKY:
        assert tokenize(text) == rs_tokenize.tokenize(text, None)


def _words(rng, vocab, n):
    return " ".join(rng.choice(vocab) for _ in range(n))


def test_f_measure_equals_rouge_score_on_random_pairs():
    rng = random.Random(1)
    vocab = ["the", "a", "cat", "dog", "Run", "fast!", "über", "42", "x-y", ";", "go"]
    for _ in range(3000):
        a = _words(rng, vocab, rng.randint(0, 14))
        b = _words(rng, vocab, rng.randint(0, 14))
        assert rouge_l(a, b) == SCORER.score(a, b)["rougeL"].fmeasure


@pytest.mark.parametrize("la,lb", [(7, 13), (8, 12), (9, 11), (10, 10)])
def test_boundary_float_formula(la, lb):
    # LCS 7 of lengths summing to 20: 2L/(la+lb) is 0.7, rouge-score's float is not always.
    a = " ".join(f"w{i}" for i in range(la))
    b = " ".join([f"w{i}" for i in range(7)] + [f"z{i}" for i in range(lb - 7)])
    expected = SCORER.score(a, b)["rougeL"].fmeasure
    assert rouge_l(a, b) == expected
    assert f_measure(7, la, lb) == expected
    if (la, lb) == (10, 10):
        assert expected == 0.7
    else:
        assert expected == 0.7000000000000001


def test_boundary_rules():
    assert is_duplicate(0.7, 0.7, keep_at_threshold=False)       # paper: keep only if < 0.7
    assert not is_duplicate(0.7, 0.7, keep_at_threshold=True)    # code: drop only if > 0.7
    assert is_duplicate(0.7000000000000001, 0.7, keep_at_threshold=True)
    assert not is_duplicate(0.6999999999999999, 0.7, keep_at_threshold=False)


def _brute_force(texts, keep_at_threshold, threshold=0.7, pairs=None):
    """rouge-score's greedy pass; `pairs` caches rouge-score's F for (earlier, later) pairs."""
    toks = [rs_tokenize.tokenize(t, None) for t in texts]
    kept, decisions = [], []
    for i in range(len(texts)):
        scores = []
        for k in kept:
            if pairs is not None and (k, i) in pairs:
                scores.append(pairs[(k, i)])
            else:
                f = rouge_scorer._score_lcs(toks[k], toks[i]).fmeasure
                if pairs is not None:
                    pairs[(k, i)] = f
                scores.append(f)
        best = max(scores, default=0.0)
        keep = not (best > threshold if keep_at_threshold else best >= threshold)
        decisions.append((keep, best))
        if keep:
            kept.append(i)
    return decisions


def _boundary_cases():
    """(L, la, lb) whose rouge-score F is 0.7 exactly or one ulp either side of it."""
    targets = {0.7: [], math.nextafter(0.7, 1.0): [], math.nextafter(0.7, 0.0): []}
    for la in range(1, 41):
        for lb in range(1, 41):
            for lcs in range(1, min(la, lb) + 1):
                f = f_measure(lcs, la, lb)
                if f in targets:
                    targets[f].append((lcs, la, lb))
    return targets


def _pair(lcs, la, lb):
    a = " ".join(f"w{i}" for i in range(la))
    b = " ".join([f"w{i}" for i in range(lcs)] + [f"z{i}" for i in range(lb - lcs)])
    return a, b


def test_boundary_cases_exist_and_match_rouge_score():
    cases = _boundary_cases()
    assert all(cases.values()), {k: len(v) for k, v in cases.items()}
    for f, triples in cases.items():
        for lcs, la, lb in triples:
            a, b = _pair(lcs, la, lb)
            assert SCORER.score(a, b)["rougeL"].fmeasure == f == rouge_l(a, b)


@pytest.mark.parametrize("keep_at_threshold", [False, True])
def test_index_decides_boundary_cases_like_rouge_score(keep_at_threshold):
    for f, triples in _boundary_cases().items():
        for lcs, la, lb in triples:
            a, b = _pair(lcs, la, lb)
            idx = RougeIndex(keep_at_threshold=keep_at_threshold)
            idx.add("a", a)
            d = idx.score(b)
            assert d.max_score == f
            assert d.keep is (not is_duplicate(f, 0.7, keep_at_threshold))


def test_100k_pairs_index_path_equals_rouge_score():
    """The index's own pieces (token ids as characters, C LCS, vectorised F) on 100,000 pairs."""
    rng = random.Random(5)
    vocab = ["the", "a", "cat", "Dog", "run", "fast!", "\u00fcber", "na\u00efve", "42", "3.14",
             "x-y", ";", "...", "\u65e5\u672c", "\U0001f642", "ok", "OK", "go", "w1", "w2"]
    idx = RougeIndex(neighbour_floor=0.0)
    pairs = []
    for triples in _boundary_cases().values():  # F exactly 0.7 and one ulp either side
        for lcs, la, lb in triples:
            a, b = _pair(lcs, la, lb)
            pairs += [(a, b), (b, a), (a + " !!! \u00e9t\u00e9", "-- " + b)]
    while len(pairs) < 100_000:
        a = _words(rng, vocab, rng.randint(0, 16))
        b = _words(rng, vocab, rng.randint(0, 16))
        pairs.append((a, b))
    ta = [idx._encode(a) for a, _ in pairs]
    tb = [idx._encode(b) for _, b in pairs]
    lcs = np.array([LCSseq.similarity("".join(map(_char, x)), "".join(map(_char, y)))
                    for x, y in zip(ta, tb, strict=True)])
    la = np.array([len(x) for x in ta])
    lb = np.array([len(y) for y in tb])
    ours = np.where((la == 0) | (lb == 0), 0.0, f_measures(lcs, np.maximum(la, 1), lb))
    theirs = np.array([SCORER.score(a, b)["rougeL"].fmeasure for a, b in pairs])
    assert np.array_equal(ours, theirs)
    assert (theirs == 0.7).sum() > 0 and (theirs == math.nextafter(0.7, 1.0)).sum() > 0


@pytest.fixture(scope="module")
def alpaca_pairs():
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("keep_at_threshold", [False, True])
def test_index_matches_brute_force_on_alpaca_2000(keep_at_threshold, alpaca_pairs):
    with need(ALPACA).open() as fh:
        texts = [json.loads(next(fh))["instruction"] for _ in range(2000)]
    _check_against_brute_force(texts, keep_at_threshold, alpaca_pairs)


def _check_against_brute_force(texts, keep_at_threshold, pairs=None):
    expected = _brute_force(texts, keep_at_threshold, pairs=pairs)
    # Floor 0: every member sharing a token is scored, so every maximum is exact.
    exact = RougeIndex(keep_at_threshold=keep_at_threshold, neighbour_floor=0.0)
    got = [exact.check_and_add(str(i), t) for i, t in enumerate(texts)]  # against the pool
    assert [(d.keep, d.max_score) for d in got] == expected
    assert all(d.max_exact for d in got)
    # The default floor prunes; decisions stay identical, and so does every max >= the floor.
    pruned = RougeIndex(keep_at_threshold=keep_at_threshold)
    items = [(str(i), t) for i, t in enumerate(texts)]
    got, start, sizes = [], 0, [1, 5, 64, 97, 300]  # pool pairs and within-batch pairs mixed
    while start < len(items):
        size = sizes[len(got) % len(sizes)]
        got += pruned.check_batch(items[start:start + size])
        start += size
    assert [d.keep for d in got] == [k for k, _ in expected]
    for d, (_, best) in zip(got, expected, strict=True):
        if best >= 0.5:
            assert d.max_exact and d.max_score == best
        else:
            assert d.max_score <= best < 0.5


@pytest.mark.parametrize("keep_at_threshold", [False, True])
def test_index_matches_brute_force_on_constructed_boundaries(keep_at_threshold):
    base = " ".join(f"w{i}" for i in range(10))
    texts = [base, " ".join([f"w{i}" for i in range(7)] + ["z1", "z2", "z3"]),
             " ".join([f"w{i}" for i in range(7)] + [f"q{i}" for i in range(6)]),
             "", "!!!", "w0 w1", base]
    _check_against_brute_force(texts, keep_at_threshold)


@pytest.mark.parametrize("keep_at_threshold", [False, True])
def test_index_matches_brute_force_on_paper_seeds(keep_at_threshold):
    texts = [json.loads(line)["instruction"] for line in need(PAPER_SEEDS).open()]
    _check_against_brute_force(texts, keep_at_threshold)


def test_snapshot_restores_identical_decisions():
    with need(ALPACA).open() as fh:
        texts = [json.loads(next(fh))["instruction"] for _ in range(600)]
    a = RougeIndex()
    a.check_batch([(str(i), t) for i, t in enumerate(texts[:300])])
    b = RougeIndex.restore(a.snapshot())
    assert b.ids == a.ids and len(b) == len(a)
    da = a.check_batch([(str(i), t) for i, t in enumerate(texts[300:])])
    db = b.check_batch([(str(i), t) for i, t in enumerate(texts[300:])])
    assert da == db
    assert a.memory_bytes() > 0


def test_neighbours_are_exact_sorted_and_capped():
    idx = RougeIndex(neighbour_floor=0.5, max_neighbours=2)
    for i, t in enumerate(["a b c d", "a b c e", "a b x y", "p q r s"]):
        idx.add(str(i), t)
    d = idx.score("a b c d")
    assert [n.id for n in d.neighbours] == ["0", "1"]
    assert d.neighbours[0].score == 1.0
    assert d.neighbours[1].score == SCORER.score("a b c e", "a b c d")["rougeL"].fmeasure
    assert d.max_score == 1.0 and not d.keep
