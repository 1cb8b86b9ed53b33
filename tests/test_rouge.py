import json
import random

import pytest
from rouge_score import rouge_scorer
from rouge_score import tokenize as rs_tokenize

from actors.dedup_index import RougeIndex
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


def _brute_force(texts, keep_at_threshold, threshold=0.7):
    kept, decisions = [], []
    for t in texts:
        scores = [SCORER.score(k, t)["rougeL"].fmeasure for k in kept]
        best = max(scores, default=0.0)
        keep = not (best > threshold if keep_at_threshold else best >= threshold)
        decisions.append((keep, best))
        if keep:
            kept.append(t)
    return decisions


@pytest.mark.parametrize("keep_at_threshold", [False, True])
def test_index_matches_brute_force_on_constructed_boundaries(keep_at_threshold):
    base = " ".join(f"w{i}" for i in range(10))
    texts = [base, " ".join([f"w{i}" for i in range(7)] + ["z1", "z2", "z3"]),
             " ".join([f"w{i}" for i in range(7)] + [f"q{i}" for i in range(6)]),
             "", "!!!", "w0 w1", base]
    idx = RougeIndex(keep_at_threshold=keep_at_threshold)
    got = [(d.keep, d.max_score) for d in idx.check_batch([(str(i), t)
                                                           for i, t in enumerate(texts)])]
    assert got == _brute_force(texts, keep_at_threshold)


@pytest.mark.parametrize("keep_at_threshold", [False, True])
def test_index_matches_brute_force_on_paper_seeds(keep_at_threshold):
    texts = [json.loads(line)["instruction"] for line in need(PAPER_SEEDS).open()]
    idx = RougeIndex(keep_at_threshold=keep_at_threshold)
    got = [(d.keep, d.max_score) for d in idx.check_batch(list(enumerate(texts)))]
    assert got == _brute_force(texts, keep_at_threshold)


@pytest.mark.parametrize("keep_at_threshold", [False, True])
def test_index_matches_brute_force_on_alpaca_prefix(keep_at_threshold):
    with need(ALPACA).open() as fh:
        texts = [json.loads(next(fh))["instruction"] for _ in range(400)]
    idx = RougeIndex(keep_at_threshold=keep_at_threshold)
    got = [(d.keep, d.max_score) for d in idx.check_batch(list(enumerate(texts)))]
    assert got == _brute_force(texts, keep_at_threshold)


def test_neighbours_are_exact_sorted_and_capped():
    idx = RougeIndex(neighbour_floor=0.5, max_neighbours=2)
    for i, t in enumerate(["a b c d", "a b c e", "a b x y", "p q r s"]):
        idx.add(str(i), t)
    d = idx.score("a b c d")
    assert [n.id for n in d.neighbours] == ["0", "1"]
    assert d.neighbours[0].score == 1.0
    assert d.neighbours[1].score == SCORER.score("a b c e", "a b c d")["rougeL"].fmeasure
    assert d.max_score == 1.0 and not d.keep
