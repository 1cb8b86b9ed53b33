"""Exact ROUGE-L, decided the way rouge-score decides it.

The pool's keep/drop rule must give rouge-score's answers bit for bit, so the tokenizer and the
F-measure float formula are reproduced here rather than approximated (the 0.7 boundary is a
floating-point matter: 2PR/(P+R) is not always equal to 2L/(la+lb)).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rapidfuzz.distance import LCSseq

_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")


def tokenize(text: str) -> list[str]:
    """rouge-score's DefaultTokenizer without a stemmer, step for step."""
    text = _NON_ALPHANUM.sub(" ", text.lower())
    return [tok for tok in _SPACES.split(text) if _VALID_TOKEN.match(tok)]


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


def is_duplicate(max_score: float, threshold: float, keep_at_threshold: bool) -> bool:
    """The two boundary rules.

    The paper keeps a candidate only if every score is < threshold (keep_at_threshold=False);
    the original code drops only when the max is > threshold (keep_at_threshold=True).
    """
    if keep_at_threshold:
        return max_score > threshold
    return max_score >= threshold
