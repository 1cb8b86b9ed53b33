"""Exact ROUGE-L of single pairs, computed the way rouge-score computes it.

The pool's keep/drop rule must give rouge-score's answers bit for bit, so the tokenizer and the
F-measure float formula are reproduced rather than approximated (the 0.7 boundary is a
floating-point matter: 2PR/(P+R) is not always equal to 2L/(la+lb)). The index
(actors/method/dedup_index.py) shares this tokenizer; its compiled kernel uses the same formula.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rapidfuzz.distance import LCSseq

_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """rouge-score's DefaultTokenizer without a stemmer.

    rouge-score lowercases, replaces runs of anything but [a-z0-9] with a space, splits on
    whitespace and keeps the tokens matching ^[a-z0-9]+$. After the replacement only [a-z0-9]
    and spaces are left, so str.split() gives the same tokens, faster.
    """
    return _NON_ALPHANUM.sub(" ", text.lower()).split()


def f_measure(lcs: int, len_target: int, len_prediction: int) -> float:
    """rouge-score's rougeL F: 2*P*R/(P+R) in this float evaluation order."""
    if len_target == 0 or len_prediction == 0:
        return 0.0
    precision = lcs / len_prediction
    recall = lcs / len_target
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def lcs_length(a: Sequence[object], b: Sequence[object]) -> int:
    """Length of the longest common subsequence of two token sequences (C speed)."""
    if not a or not b:
        return 0
    return int(LCSseq.similarity(a, b))


def rouge_l(target: str, prediction: str) -> float:
    """ROUGE-L F of two texts, equal to RougeScorer(["rougeL"]).score(target, prediction)."""
    a, b = tokenize(target), tokenize(prediction)
    return f_measure(lcs_length(a, b), len(a), len(b))
