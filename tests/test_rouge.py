import json
import math
import random

import pytest
from rouge_score import rouge_scorer
from rouge_score import tokenize as rs_tokenize

from actors.method.dedup_index import RougeIndex
from actors.method.rouge import f_measure, rouge_l, tokenize
from tests.conftest import ALPACA, PAPER_SEEDS, need

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

TRICKY = [
    "", "!!!", "...  ---", "Café naïve résumé", "İstanbul ß straße", "12 3.5 1e9 0x1F",
    "Hello, WORLD!", "tab\tand\nnewline", "emoji 🙂 here", "日本語のテキスト", "a a a a",
    "under_score and-dash", "x" * 50, "\u00a0nbsp\u2003em space\u3000ideographic", "ＡＢＣ full",
    "trailing newline\n", "\x00nul\x0bvt\x1c",
]


def rouge_score_drops(best, keep_at_threshold, threshold=0.7):
    """The two boundary rules: the paper keeps a candidate only if every score is < threshold;
    the original code drops it only when the max is > threshold."""
    return best > threshold if keep_at_threshold else best >= threshold


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
            assert d.keep is not rouge_score_drops(f, keep_at_threshold)


def _scores_by_member(index, members, candidates):
    """Every candidate's score to every member it reports, through the public path."""
    for i, text in enumerate(members):
        index.add(str(i), text)
    decisions = index.check_batch([("", t) for t in candidates], add=False)
    return [{int(n.id): n.score for n in d.neighbours} for d in decisions]


def test_kernel_scores_equal_rouge_score_on_100k_pairs():
    """The compiled kernel (token ids, bit-parallel LCS one and several words wide, the F
    formula) against rouge-score on 100,000 pairs, boundary cases and long texts among them."""
    rng = random.Random(5)
    vocab = ["the", "a", "cat", "Dog", "run", "fast!", "\u00fcber", "na\u00efve", "42", "3.14",
             "x-y", ";", "...", "\u65e5\u672c", "\U0001f642", "ok", "OK", "go", "w1", "w2"]
    members, candidates = [], []
    for triples in _boundary_cases().values():  # F exactly 0.7 and one ulp either side
        for lcs, la, lb in triples[::7]:
            a, b = _pair(lcs, la, lb)
            members.append(a)
            candidates.append(b)
    for n in (63, 64, 65, 127, 128, 129, 200):  # one, two and more 64-bit words
        members.append(_words(rng, vocab, n))
        candidates.append(_words(rng, vocab, n + rng.randint(-3, 3)))
    while len(members) < 320:
        members.append(_words(rng, vocab, rng.randint(0, 16)))
        candidates.append(_words(rng, vocab, rng.randint(0, 16)))
    expected = [{m: SCORER.score(a, b)["rougeL"].fmeasure for m, a in enumerate(members)}
                for b in candidates]
    assert sum(len(e) for e in expected) >= 100_000
    assert any(0.7 in e.values() for e in expected)
    assert any(math.nextafter(0.7, 1.0) in e.values() for e in expected)
    everything = RougeIndex(neighbour_floor=0.0, max_neighbours=10**6, brute_force=True)
    assert _scores_by_member(everything, members, candidates) == expected
    # Floor 0 with pruning: every member sharing a token is scored, and only those.
    sharing = RougeIndex(neighbour_floor=0.0, max_neighbours=10**6)
    assert _scores_by_member(sharing, members, candidates) == [
        {m: f for m, f in e.items() if f > 0} for e in expected]


def _brute_force(texts, keep_at_threshold, floor=0.5, max_neighbours=10, pairs=None):
    """rouge-score's greedy pass: (keep, max, neighbours >= floor as (id, score), best first
    and earlier members first among equals). `pairs` caches F for (earlier, later) pairs."""
    toks = [rs_tokenize.tokenize(t, None) for t in texts]
    kept, decisions = [], []
    for i in range(len(texts)):
        scores = []
        for k in kept:
            if pairs is not None and (k, i) in pairs:
                f = pairs[(k, i)]
            else:
                f = rouge_scorer._score_lcs(toks[k], toks[i]).fmeasure
                if pairs is not None:
                    pairs[(k, i)] = f
            scores.append((f, k))
        best = max((f for f, _ in scores), default=0.0)
        found = sorted(((f, k) for f, k in scores if f >= floor), key=lambda fk: -fk[0])
        keep = not rouge_score_drops(best, keep_at_threshold)
        decisions.append((keep, best, [(str(k), f) for f, k in found[:max_neighbours]]))
        if keep:
            kept.append(i)
    return decisions


def _in_batches(index, items, sizes=(1, 5, 64, 97, 300)):
    """check_batch over batches of mixed sizes: pool pairs and within-batch pairs mixed."""
    got, start = [], 0
    while start < len(items):
        size = sizes[len(got) % len(sizes)]
        got += index.check_batch(items[start:start + size])
        start += size
    return got


def _neighbours(decision):
    return [(n.id, n.score) for n in decision.neighbours]


def _check_against_brute_force(texts, keep_at_threshold, pairs=None):
    expected = _brute_force(texts, keep_at_threshold, pairs=pairs)
    items = [(str(i), t) for i, t in enumerate(texts)]
    # Floor 0: every member sharing a token is scored, so every maximum is exact.
    exact = RougeIndex(keep_at_threshold=keep_at_threshold, neighbour_floor=0.0)
    got = [exact.check_batch([item])[0] for item in items]  # one at a time, against the pool
    assert [(d.keep, d.max_score) for d in got] == [(k, b) for k, b, _ in expected]
    assert all(d.max_exact for d in got)
    # The default floor prunes; decisions, neighbours >= the floor and every max >= the
    # floor stay identical, in batches of mixed sizes and on several threads.
    pruned = RougeIndex(keep_at_threshold=keep_at_threshold, threads=3)
    got = _in_batches(pruned, items)
    assert [d.keep for d in got] == [k for k, _, _ in expected]
    assert [_neighbours(d) for d in got] == [nb for _, _, nb in expected]
    for d, (_, best, _) in zip(got, expected, strict=True):
        if best >= 0.5:
            assert d.max_exact and d.max_score == best
        else:
            assert d.max_score <= best < 0.5


@pytest.fixture(scope="module")
def alpaca_pairs():
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("keep_at_threshold", [False, True])
def test_index_matches_brute_force_on_alpaca_2000(keep_at_threshold, alpaca_pairs):
    with need(ALPACA).open() as fh:
        texts = [json.loads(next(fh))["instruction"] for _ in range(2000)]
    _check_against_brute_force(texts, keep_at_threshold, alpaca_pairs)


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


def _long_texts(words, rng, n):
    """Texts past the entries' one-byte fields: lengths, positions and repeats over 255."""
    out = []
    for _ in range(n):
        base = rng.choice(words).split()
        body = [w for _ in range(rng.randint(20, 60)) for w in rng.choice(words).split()]
        out.append(" ".join(base + body[: rng.randint(250, 600)] + ["the"] * rng.randint(0, 300)))
    return out


@pytest.mark.parametrize("keep_at_threshold", [False, True])
@pytest.mark.parametrize("floor", [0.5, 0.7, 0.3])
def test_pruning_equals_the_same_kernel_without_it(keep_at_threshold, floor):
    """Past two re-rankings of the tokens, with texts too long for the entries' fields: the
    pruned index decides and records exactly what scoring every pair does."""
    with need(ALPACA).open() as fh:
        texts = [json.loads(next(fh))["instruction"] for _ in range(4500)]
    rng = random.Random(7)
    texts[100:100] = _long_texts(texts[:300], rng, 60)
    # Near-duplicates: an instruction with a word dropped, added or swapped.
    for i in range(0, 4000, 40):
        words = texts[i].split()
        j = rng.randrange(len(words))
        texts.insert(i + rng.randint(1, 30), " ".join(words[:j] + ["also"] + words[j + 1:]))
    items = [(str(i), t) for i, t in enumerate(texts)]
    kwargs = {"keep_at_threshold": keep_at_threshold, "neighbour_floor": floor}
    everything = RougeIndex(**kwargs, brute_force=True, threads=2)
    pruned = RougeIndex(**kwargs, threads=3)
    brute = _in_batches(everything, items)
    _assert_same(_in_batches(pruned, items), brute, floor)
    assert len(pruned) == len(everything) < len(items)
    assert sum(len(d.neighbours) for d in brute) > 100
    assert pruned.lcs_computed < everything.lcs_computed / 10
    # Without add, each candidate is decided against the pool alone.
    probes = [(f"p{i}", t) for i, t in enumerate(texts[::9])]
    _assert_same(pruned.check_batch(probes, add=False), everything.check_batch(probes, add=False),
                 floor)
    assert len(pruned) == len(everything)


@pytest.mark.parametrize("length", [30, 100, 254, 255, 256, 300, 600])
def test_a_pair_exactly_at_the_floor_is_found(length):
    """Bounds at their tightest: the candidate's unshared words come first in the global
    order (seen later), so its first match leaves exactly the overlap the floor needs, at
    lengths in and past the entries' one-byte fields."""
    member = [f"a{i}" for i in range(length)]
    for shared in (length // 2, length // 2 + 1, length // 2 - 1):
        candidate = member[:shared] + [f"b{i}" for i in range(length - shared)]
        a, b = " ".join(member), " ".join(candidate)
        f = SCORER.score(a, b)["rougeL"].fmeasure
        idx = RougeIndex(neighbour_floor=0.5)
        idx.add("a", a)
        assert _neighbours(idx.score(b)) == ([("a", f)] if f >= 0.5 else [])


def _assert_same(got, brute, floor):
    """Same decisions and neighbours; the same max wherever it reaches the floor (below it,
    the pruned index's max is the best among the pairs it computed)."""
    assert [(d.keep, _neighbours(d)) for d in got] == [(d.keep, _neighbours(d)) for d in brute]
    for d, b in zip(got, brute, strict=True):
        if b.max_score >= floor:
            assert d.max_exact and d.max_score == b.max_score
        else:
            assert d.max_score <= b.max_score


def test_neighbours_are_exact_sorted_and_capped():
    idx = RougeIndex(neighbour_floor=0.5, max_neighbours=2)
    for i, t in enumerate(["a b c d", "a b c e", "a b x y", "p q r s"]):
        idx.add(str(i), t)
    d = idx.score("a b c d")
    assert [n.id for n in d.neighbours] == ["0", "1"]
    assert d.neighbours[0].score == 1.0
    assert d.neighbours[1].score == SCORER.score("a b c e", "a b c d")["rougeL"].fmeasure
    assert d.max_score == 1.0 and not d.keep
    assert len(idx) == 4 and idx.memory_bytes() > 0
