"""`selfinstruct evaluate`: the paper's measure of a tuned model, on any model of the config.

Each model answers the evaluation tasks (by default the paper's 252 user-oriented instructions,
shipped in data/); a judge model rates every answer on the paper's four levels (A: valid and
satisfying, B: acceptable with minor imperfections, C: responds but with significant errors,
D: irrelevant or invalid) and, with --pairwise, compares two models' answers in both orders.

The evaluation directory keeps the run directory's protocol (runlog.py): append-only JSONL,
one atomic commit per batch, a fingerprint that --resume checks, and a resume that asks only
what is not yet answered or graded. The pure parts (prompts, parsing rules, kappa, the summary)
are plain functions; the asking goes through asker.py, imported only when models are asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from actors.config import ApiModel, Decoding, PipelineConfig
from actors.engine.usage import spent_usd, summarize
from actors.method.prompts import Template, load_template
from actors.method.seeds import SeedTask, load_seeds
from actors.rundir.resume import ResumeError, changes
from actors.rundir.runlog import RunFiles, add_counts, read_committed, recover
from actors.tools.export import Example, fill, load_templates, user_text

if TYPE_CHECKING:  # actors.providers.llm imports Ray; the pure parts here do not need it
    from actors.providers.llm import Attempt, Completion

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TASKS = ROOT / "data" / "user_oriented_instructions.jsonl"
PROMPTS = ROOT / "prompts"
FILES = {"answers": "answers.jsonl", "grades": "grades.jsonl", "pairwise": "pairwise.jsonl"}
SUMMARY = "summary.json"
ANSWER_TEMPLATES = PROMPTS / "finetune_templates.yaml"
PROMPT_FILES = (PROMPTS / "judge_grade.chat.txt", PROMPTS / "judge_pairwise.chat.txt",
                ANSWER_TEMPLATES)
GRADES = ("A", "B", "C", "D")
PREFERENCES = ("1", "2", "tie")
JUDGE_RETRIES = 2       # an unparseable judgement is asked again (another seed), then recorded
UNDONE = ("error", "cancelled", "uncached")  # answers that carry no model text
CATEGORY_KEYS = ("motivation_app", "category")
# What may change between an evaluation and its resume without changing what a model says.
FREE_MODEL_KEYS = {"limits", "price", "timeout_s", "max_retries", "fail_after", "api_key_env",
                   "base_url", "replicas", "threads", "cache_mb", "resources", "prompt_cache"}


class EvalError(ValueError):
    pass


# ------------------------------------------------------------------------------------ tasks


def load_tasks(path: str | Path) -> list[SeedTask]:
    """Seed-schema tasks; the paper's evaluation file leaves out is_classification."""
    return load_seeds(path, defaults={"is_classification": False})


def select_tasks(tasks: list[SeedTask], limit: int | None, seed: int) -> list[SeedTask]:
    """`limit` tasks drawn at random (seeded), in file order. A larger limit keeps the smaller
    one's tasks, so an evaluation can grow on --resume."""
    if limit is None or limit >= len(tasks):
        return list(tasks)
    order = list(range(len(tasks)))
    random.Random(seed).shuffle(order)
    return [tasks[i] for i in sorted(order[:limit])]


def category_of(task: SeedTask) -> str | None:
    return next((str(task.extra[k]) for k in CATEGORY_KEYS if task.extra.get(k)), None)


Item = tuple[str, int]  # (task id, instance index)


def items_of(tasks: list[SeedTask]) -> list[Item]:
    """One question per instance: the instruction with that instance's input."""
    return [(t.id, k) for t in tasks for k in range(len(t.instances))]


# ---------------------------------------------------------------------------------- prompts


def answer_prompt(task: SeedTask, k: int, mode: str,
                  templates: dict[str, list[dict[str, str]]] | None = None
                  ) -> str | list[dict[str, str]]:
    """What the evaluated model is asked: in chat, the instruction and the input as one user
    turn (the export's openai-chat and sharegpt form); as a completion, the first
    prompt-completion template of the export."""
    e = Example(task.id, task.instruction, task.instances[k].input, "")
    if mode == "chat":
        return [{"role": "user", "content": user_text(e)}]
    assert templates is not None
    return fill(templates["with_input" if e.input.strip() else "no_input"][0]["prompt"], e)


def _or_none(text: str) -> str:
    return text.strip() or "(none)"


def grade_prompt(template: Template, task: SeedTask, k: int,
                 response: str) -> str | list[dict[str, str]]:
    inst = task.instances[k]
    return template.render(instruction=task.instruction, input=_or_none(inst.input),
                           reference=_or_none(inst.output), response=_or_none(response))


def pairwise_prompt(template: Template, task: SeedTask, k: int, first: str,
                    second: str) -> str | list[dict[str, str]]:
    inst = task.instances[k]
    return template.render(instruction=task.instruction, input=_or_none(inst.input),
                           reference=_or_none(inst.output), first=_or_none(first),
                           second=_or_none(second))


# --------------------------------------------------------------------------- parsing rules


@dataclass(frozen=True)
class Verdict:
    """A judgement read from the judge's text: the value and the rule that found it, or
    None and the problem (never a guess)."""

    value: str | None
    rule: str | None
    reason: str
    problem: str = ""


Rule = tuple[str, Callable[[str], list[str]]]

# "Grade: B", "**Grade:** B", "Rating: B", "RATING-B", "grade = B+"
_GRADE_LINE = re.compile(r"(?m)^[\W_]*(?i:grade|rating)[\W_]*([ABCD])(?![A-Za-z])")
# The answer opens with the letter alone or followed by ':', '.', ')' or '-': "B", "B: ...".
_LEADING_GRADE = re.compile(r"^[\W_]*([ABCD])(?:[\W_]*$|\s*[:.)\-])")
_BETTER_LINE = re.compile(r"(?m)^[\W_]*(?i:better|winner|preferred)[\W_]*(1|2|tie)\b",
                          re.IGNORECASE)
_LEADING_PREFERENCE = re.compile(r"^[\W_]*(?:response\s*)?(1|2|tie)(?:[\W_]*$|\s*[:.)\-])",
                                 re.IGNORECASE)
_REASON = re.compile(r"(?im)^[\W_]*reason[\W_]*[:\-]\s*(.+)$")

GRADE_RULES: list[Rule] = [
    ("grade_line", _GRADE_LINE.findall),
    ("leading_letter", lambda text: _LEADING_GRADE.findall(text.strip())),
]
PREFERENCE_RULES: list[Rule] = [
    ("better_line", lambda text: [v.lower() for v in _BETTER_LINE.findall(text)]),
    ("leading_choice", lambda text: [v.lower() for v in _LEADING_PREFERENCE.findall(
        text.strip())]),
]


def reason_of(text: str) -> str:
    """The judge's 'Reason:' line, else its whole answer (trimmed), for the record."""
    found = _REASON.search(text)
    return (found.group(1) if found else text).strip()[:1000]


def parse_with(rules: Sequence[Rule], text: str, what: str) -> Verdict:
    """The first rule that finds a value decides; values that disagree are a problem."""
    reason = reason_of(text)
    if not text.strip():
        return Verdict(None, None, reason, "the judge's answer is empty")
    for name, find in rules:
        values = list(dict.fromkeys(find(text)))
        if len(values) == 1:
            return Verdict(values[0], name, reason)
        if values:
            return Verdict(None, None, reason,
                           f"conflicting {what}s ({', '.join(values)}) by rule {name}")
    return Verdict(None, None, reason, f"no {what} found by rules "
                   f"{', '.join(n for n, _ in rules)}")


def parse_grade(text: str) -> Verdict:
    """A, B, C or D from 'Grade: X' (rule grade_line), else from an answer that opens with
    the letter alone (leading_letter)."""
    return parse_with(GRADE_RULES, text, "grade")


def parse_preference(text: str) -> Verdict:
    """1, 2 or tie from 'Better: X' (better_line), else from an answer that opens with it."""
    return parse_with(PREFERENCE_RULES, text, "preference")


def combine_orders(first_order: str | None, second_order: str | None) -> str | None:
    """One comparison asked in both orders, from the model shown first in `first_order`'s
    view: each order votes (+1 it won, -1 it lost, 0 tie); the sum decides, so a judge that
    always prefers one position gives a tie. None when either order went unparsed."""
    if first_order is None or second_order is None:
        return None
    vote = {"1": 1, "2": -1, "tie": 0}
    total = vote[first_order] - vote[second_order]
    return "win" if total > 0 else "loss" if total < 0 else "tie"


def cohen_kappa(pairs: Sequence[tuple[str, str]], labels: Sequence[str] = GRADES
                ) -> float | None:
    """Cohen's kappa of two raters' labels; None when chance agreement is total (kappa is
    undefined: both raters used one and the same label throughout) or there are no pairs."""
    n = len(pairs)
    if not n:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[x] * second[x] for x in labels) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


# ---------------------------------------------------------------------------------- records


def usage_delta(kind: str, completions: Iterable[Completion]) -> dict[str, Any]:
    """The usage a batch adds, keyed "kind:model label" like a run's (usage.summarize)."""
    out: dict[str, Any] = {}
    for c in completions:
        add_counts(out.setdefault(f"{kind}:{c.model}", {}), {
            "requests": 1, "errors": int(c.finish_reason == "error"),
            "cache_hits": int(c.cached), "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "cache_read_tokens": c.cache_read_tokens,
            "cache_write_tokens": c.cache_write_tokens, "cost_usd": c.cost_usd,
            "faults": c.faults})
    return out


def completion_fields(c: Completion) -> dict[str, Any]:
    out = {"finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
           "completion_tokens": c.completion_tokens, "latency_s": round(c.latency_s, 4),
           "cost_usd": c.cost_usd, "cached": c.cached, "error": c.error, "faults": c.faults}
    return {k: v for k, v in out.items() if v or k in ("finish_reason", "error")}


def answer_record(task: SeedTask, k: int, model: str, c: Completion) -> dict[str, Any]:
    return {"task_id": task.id, "instance": k, "model": model, "model_label": c.model,
            "instruction": task.instruction, "input": task.instances[k].input,
            "answer": c.text, **completion_fields(c)}


def judged_record(keys: dict[str, Any], judge: str, c: Completion, retried: list[Attempt],
                  verdict: Verdict, value_key: str) -> dict[str, Any]:
    """One judgement: the value and its rule, or null and why (the request's error, or the
    parsing problem); the judge's raw answer and the answers asked again before it."""
    failed = c.finish_reason in UNDONE
    return {**keys, value_key: None if failed else verdict.value,
            "reason": "" if failed else verdict.reason,
            "rule": None if failed else verdict.rule,
            "problem": c.error if failed else verdict.problem,
            "judge": judge, "judge_label": c.model, "judge_answer": c.text,
            "retried": [{"answer": a.completion.text, "problem": a.problem} for a in retried],
            **completion_fields(c)}


def ok(rec: dict[str, Any] | None) -> bool:
    """A record that stands (a request that failed is asked again on --resume)."""
    return rec is not None and not rec.get("error")


def latest(records: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any]
           ) -> dict[Any, dict[str, Any]]:
    """The last record per key: a failed request asked again on --resume supersedes it."""
    out: dict[Any, dict[str, Any]] = {}
    for rec in records:
        out[key(rec)] = rec
    return out


def answer_key(rec: dict[str, Any]) -> tuple[str, int, str]:
    return rec["task_id"], rec["instance"], rec["model"]


def pair_key(rec: dict[str, Any]) -> tuple[str, int, str, str]:
    return rec["task_id"], rec["instance"], rec["first"], rec["second"]


# -------------------------------------------------------------------------------- summary


def grade_table(grades: Iterable[str | None]) -> dict[str, Any]:
    """Counts of A-D and their shares among the parsed grades; unparseable counted apart."""
    values = list(grades)
    counts = {g: sum(v == g for v in values) for g in GRADES}
    parsed = sum(counts.values())
    return {"graded": len(values), "counts": counts, "unparseable": len(values) - parsed,
            "shares": {g: round(counts[g] / parsed, 4) if parsed else None for g in GRADES}}


def pairwise_outcomes(items: list[Item], models: list[str],
                      pairwise: dict[tuple[str, int, str, str], dict[str, Any]]
                      ) -> dict[str, dict[str, Any]]:
    """Per pair of models "a vs b": wins, ties and losses of a, comparisons left unparsed,
    and how many of the decided ones the two orders disagreed on (position bias)."""
    out = {}
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            table = {"win": 0, "tie": 0, "loss": 0, "unparseable": 0, "orders_disagree": 0}
            for tid, k in items:
                ab, ba = pairwise.get((tid, k, a, b)), pairwise.get((tid, k, b, a))
                if not (ok(ab) and ok(ba)):
                    continue
                assert ab is not None and ba is not None
                outcome = combine_orders(ab["preference"], ba["preference"])
                if outcome is None:
                    table["unparseable"] += 1
                    continue
                table[outcome] += 1
                flipped = {"1": "2", "2": "1", "tie": "tie"}[ba["preference"]]
                table["orders_disagree"] += int(ab["preference"] != flipped)
            out[f"{a} vs {b}"] = table
    return out


def agreement(items: list[Item], models: list[str],
              grades: dict[tuple[str, int, str], dict[str, Any]],
              human: dict[tuple[str, int, str], str]) -> dict[str, Any]:
    """The judge against a person's grades, on the answers both graded."""
    pairs = [(grades[(t, k, m)]["grade"], human[(t, k, m)]) for t, k in items for m in models
             if (t, k, m) in human and ok(grades.get((t, k, m)))
             and grades[(t, k, m)]["grade"] is not None]
    kappa = cohen_kappa(pairs)
    return {"n": len(pairs),
            "agreement": round(sum(a == b for a, b in pairs) / len(pairs), 4) if pairs else None,
            "cohen_kappa": None if kappa is None else round(kappa, 4),
            "confusion": {j: {h: sum(1 for a, b in pairs if (a, b) == (j, h)) for h in GRADES}
                          for j in GRADES}}


def summarize_eval(tasks: list[SeedTask], models: list[str],
                   answers: dict[tuple[str, int, str], dict[str, Any]],
                   grades: dict[tuple[str, int, str], dict[str, Any]],
                   pairwise: dict[tuple[str, int, str, str], dict[str, Any]] | None = None,
                   human: dict[tuple[str, int, str], str] | None = None) -> dict[str, Any]:
    """Per model: answers, failed requests, the A-D table overall and per category, and with
    pairwise records its wins, ties and losses; the judge's agreement with a person's grades."""
    items = items_of(tasks)
    category = {t.id: category_of(t) for t in tasks}
    per_model: dict[str, Any] = {}
    for m in models:
        graded = [grades[(t, k, m)] for t, k in items if ok(grades.get((t, k, m)))]
        table = grade_table(g["grade"] for g in graded)
        entry: dict[str, Any] = {
            "answered": sum(ok(answers.get((t, k, m))) for t, k in items),
            "answer_errors": sum(1 for t, k in items if (t, k, m) in answers
                                 and not ok(answers[(t, k, m)])),
            "judge_errors": sum(1 for t, k in items if (t, k, m) in grades
                                and not ok(grades[(t, k, m)])),
            **table,
            "rules": dict(Counter(g["rule"] for g in graded if g["rule"])),
        }
        if any(category.values()):
            by_cat: dict[str, list[str | None]] = {}
            for g in graded:
                by_cat.setdefault(category[g["task_id"]] or "(none)", []).append(g["grade"])
            entry["by_category"] = {c: grade_table(v) for c, v in sorted(by_cat.items())}
        per_model[m] = entry
    out: dict[str, Any] = {"questions": len(items), "models": per_model}
    if pairwise is not None:
        pairs = pairwise_outcomes(items, models, pairwise)
        out["pairwise"] = pairs
        for m in models:
            total = dict.fromkeys(("win", "tie", "loss", "unparseable"), 0)
            for name, t in pairs.items():
                a, _, b = name.partition(" vs ")
                if m in (a, b):
                    won, lost = ("win", "loss") if m == a else ("loss", "win")
                    total["win"] += t[won]
                    total["loss"] += t[lost]
                    total["tie"] += t["tie"]
                    total["unparseable"] += t["unparseable"]
            per_model[m]["pairwise"] = total
    if human is not None:
        out["human_agreement"] = agreement(items, models, grades, human)
    return out


def load_human(path: str | Path) -> dict[tuple[str, int, str], str]:
    """A person's grades: JSONL lines with task_id, instance (default 0), model and grade
    (A-D; null lines are skipped), as in grades.jsonl."""
    out: dict[tuple[str, int, str], str] = {}
    p = Path(path)
    if not p.is_file():
        raise EvalError(f"{p}: human grades file not found")
    for lineno, line in enumerate(p.open(encoding="utf-8"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key = (str(rec["task_id"]), int(rec.get("instance", 0)), str(rec["model"]))
            grade = rec["grade"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise EvalError(f"{p}:{lineno}: expected a JSON object with task_id, model and "
                            f"grade ({type(exc).__name__}: {exc})") from None
        if grade is not None and grade not in GRADES:
            raise EvalError(f"{p}:{lineno}: grade must be one of A, B, C, D or null, got "
                            f"{grade!r}")
        if grade is not None:
            out[key] = grade
    return out


# ---------------------------------------------------------------------- fingerprint, resume


def model_identity(model: Any) -> dict[str, Any]:
    """What decides a model's answers (not where it is served, its limits or its price)."""
    return {k: v for k, v in model.model_dump().items() if k not in FREE_MODEL_KEYS}


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class EvalOptions:
    models: list[str]
    judge: str
    tasks: str = str(DEFAULT_TASKS)
    limit: int | None = None
    seed: int = 0
    pairwise: bool = False
    max_cost: float | None = None
    human: str | None = None
    answer_mode: str = "chat"
    max_tokens: int = 512
    judge_max_tokens: int = 256
    max_in_flight: int = 16
    progress: bool = True

    def answer_decoding(self) -> Decoding:
        return Decoding(mode=self.answer_mode, temperature=0.0, max_tokens=self.max_tokens)

    def judge_decoding(self) -> Decoding:
        return Decoding(mode="chat", temperature=0.0, max_tokens=self.judge_max_tokens)


def eval_fingerprint(cfg: PipelineConfig, opts: EvalOptions) -> dict[str, Any]:
    """What decides the answers and grades; a resume must match it (models may be added)."""
    return {
        "tasks_file": {Path(opts.tasks).name: _sha256(opts.tasks)},
        "seed": opts.seed,
        "prompt_files": {p.name: _sha256(p) for p in PROMPT_FILES},
        "answer": opts.answer_decoding().model_dump(exclude={"model", "max_in_flight_per_actor"}),
        "judge": {"model": model_identity(cfg.models[opts.judge]),
                  **opts.judge_decoding().model_dump(exclude={"model", "max_in_flight_per_actor"})},
        "models": {m: model_identity(cfg.models[m]) for m in opts.models},
    }


def check_eval_resume(out: Path, current: dict[str, Any]) -> dict[str, Any]:
    """The earlier summary, if nothing that decides answers or grades changed (adding a model
    or raising --limit is fine); else an error naming each change."""
    path = out / SUMMARY
    if not path.exists():
        raise ResumeError(f"{out}: no {SUMMARY}, so no evaluation to resume; start without "
                          f"--resume")
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        old = earlier["method"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ResumeError(f"{path}: unreadable or without a 'method' fingerprint ({exc}); "
                          f"start a new evaluation directory") from None
    shared = old.get("models", {}).keys() & current["models"].keys()

    def common(f: dict[str, Any]) -> dict[str, Any]:
        return {**f, "models": {m: f["models"][m] for m in sorted(shared)}}

    diff = changes(common(old), common(current))
    if diff:
        raise ResumeError(f"{out}: cannot resume an evaluation with different settings; "
                          f"changed since it began:\n  " + "\n  ".join(diff)
                          + "\nUndo these changes, or evaluate into a new --out directory")
    return earlier


def check_eval_dir(out: Path, resume: bool) -> None:
    if not resume and ((out / "commits.jsonl").exists() or (out / SUMMARY).exists()):
        raise EvalError(f"{out}: already holds an evaluation; add --resume to go on with it, "
                        f"or choose a new --out directory")


# ---------------------------------------------------------------------------- the driver


@dataclass
class Progress:
    """Where the directory stands: the latest record per answer, grade and comparison."""

    answers: dict[tuple[str, int, str], dict[str, Any]]
    grades: dict[tuple[str, int, str], dict[str, Any]]
    pairwise: dict[tuple[str, int, str, str], dict[str, Any]]
    usage: dict[str, Any]

    @classmethod
    def read(cls, out: Path) -> Progress:
        """Cut the files to their committed prefix (a crash mid-batch) and read them."""
        committed = recover(out, files=FILES)

        def records(name: str) -> Iterable[dict[str, Any]]:
            return read_committed(out, name, committed.lines.get(name, 0), files=FILES)

        return cls(latest(records("answers"), answer_key), latest(records("grades"), answer_key),
                   latest(records("pairwise"), pair_key), committed.usage)


def _batches(todo: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(todo), size):
        yield todo[i:i + size]


class Evaluation:
    """One `evaluate` command: asks what the directory lacks, a batch at a time, each batch
    committed before the next is asked."""

    def __init__(self, opts: EvalOptions, out: Path, tasks: list[SeedTask], state: Progress,
                 log: Any) -> None:
        self.opts, self.log = opts, log
        self.tasks = {t.id: t for t in tasks}
        self.items = items_of(tasks)
        self.state = state
        self.files = RunFiles(out, FILES)
        self.grade_template = load_template(PROMPTS, "judge_grade", "chat")
        self.pair_template = load_template(PROMPTS, "judge_pairwise", "chat")
        self.answer_templates = (load_templates(ANSWER_TEMPLATES)
                                 if opts.answer_mode == "completion" else None)
        self.stop = ""
        self.failure = ""

    def _commit(self, name: str, recs: list[dict[str, Any]], kind: str,
                completions: list[Completion]) -> None:
        if not recs:
            return
        usage = usage_delta(kind, completions)
        self.files.commit({name: recs}, {"usage": usage})
        add_counts(self.state.usage, usage)

    async def _settle(self, asker: Any, completions: list[Completion]) -> bool:
        """After a batch: go on, or stop for the budget or a provider that is down."""
        if any(c.finish_reason == "cancelled" for c in completions):
            self.stop = "max_cost"
        elif down := await asker.provider_down():
            self.stop, self.failure = "failed", down
            self.log.error("provider_down", error=down)
        return not self.stop

    def _request(self, prompt: str | list[dict[str, str]], dec: Decoding) -> Any:
        from actors.providers.llm import make_request

        return make_request(prompt, dec, self.opts.seed)

    def _bar(self, total: int, what: str) -> Any:
        return tqdm(total=total, desc=what, unit="req", disable=not self.opts.progress,
                    file=sys.stderr, dynamic_ncols=True)

    async def answer(self, asker: Any, model: str) -> bool:
        todo = [(t, k) for t, k in self.items if not ok(self.state.answers.get((t, k, model)))]
        if not todo:
            return True
        client = asker.client(model, "answer", self.opts.max_in_flight)
        dec = self.opts.answer_decoding()
        with self._bar(len(todo), f"answers: {model}") as bar:
            for batch in _batches(todo, self.opts.max_in_flight):
                reqs = [self._request(answer_prompt(self.tasks[t], k, dec.mode,
                                                    self.answer_templates), dec)
                        for t, k in batch]
                done = list(await asyncio.gather(*(client.complete(r) for r in reqs)))
                kept = [(item, c) for item, c in zip(batch, done, strict=True)
                        if c.finish_reason != "cancelled"]
                recs = [answer_record(self.tasks[t], k, model, c) for (t, k), c in kept]
                self._commit("answers", recs, "answer", [c for _, c in kept])
                self.state.answers.update((answer_key(r), r) for r in recs)
                bar.update(len(batch))
                if not await self._settle(asker, done):
                    return False
        return True

    async def _judge(self, asker: Any, client: Any, todo: list[Any],
                     prompt: Callable[[Any], Any],
                     parse: Callable[[str], Verdict], record: Callable[..., dict[str, Any]],
                     name: str, kind: str) -> bool:
        """Ask the judge about each item (asked again while unparseable), commit per batch."""
        dec = self.opts.judge_decoding()

        def problem(c: Completion) -> str:
            return "" if c.finish_reason in UNDONE else parse(c.text).problem

        with self._bar(len(todo), f"judge: {kind}") as bar:
            for batch in _batches(todo, self.opts.max_in_flight):
                done = await asyncio.gather(*(client.complete_parsed(
                    self._request(prompt(item), dec), problem) for item in batch))
                kept = [(item, c, retried) for item, (c, retried) in zip(batch, done, strict=True)
                        if c.finish_reason != "cancelled"]
                recs = [record(item, c, retried, parse(c.text)) for item, c, retried in kept]
                paid = [a.completion for _, c, retried in kept for a in retried] + \
                    [c for _, c, _ in kept]
                self._commit(name, recs, kind, paid)
                bar.update(len(batch))
                if not await self._settle(asker, [c for c, _ in done]):
                    return False
        return True

    async def grade(self, asker: Any, client: Any) -> bool:
        todo = [(t, k, m) for m in self.opts.models for t, k in self.items
                if ok(self.state.answers.get((t, k, m)))
                and not ok(self.state.grades.get((t, k, m)))]

        def prompt(item: tuple[str, int, str]) -> Any:
            t, k, m = item
            return grade_prompt(self.grade_template, self.tasks[t], k,
                                self.state.answers[item]["answer"])

        def record(item: tuple[str, int, str], c: Completion, retried: list[Attempt],
                   v: Verdict) -> dict[str, Any]:
            t, k, m = item
            rec = judged_record({"task_id": t, "instance": k, "model": m}, self.opts.judge,
                                c, retried, v, "grade")
            self.state.grades[item] = rec
            return rec

        return await self._judge(asker, client, todo, prompt, parse_grade, record, "grades",
                                 "grade")

    def pair_todo(self) -> list[tuple[str, int, str, str]]:
        models, a = self.opts.models, self.state.answers
        return [(t, k, x, y) for i, m in enumerate(models) for n in models[i + 1:]
                for t, k in self.items
                if ok(a.get((t, k, m))) and ok(a.get((t, k, n)))
                for x, y in ((m, n), (n, m))
                if not ok(self.state.pairwise.get((t, k, x, y)))]

    async def compare(self, asker: Any, client: Any) -> bool:
        def prompt(item: tuple[str, int, str, str]) -> Any:
            t, k, x, y = item
            a = self.state.answers
            return pairwise_prompt(self.pair_template, self.tasks[t], k,
                                   a[(t, k, x)]["answer"], a[(t, k, y)]["answer"])

        def record(item: tuple[str, int, str, str], c: Completion, retried: list[Attempt],
                   v: Verdict) -> dict[str, Any]:
            t, k, x, y = item
            rec = judged_record({"task_id": t, "instance": k, "first": x, "second": y},
                                self.opts.judge, c, retried, v, "preference")
            self.state.pairwise[item] = rec
            return rec

        return await self._judge(asker, client, self.pair_todo(), prompt, parse_preference,
                                 record, "pairwise", "pairwise")

    async def run(self, asker: Any) -> None:
        for model in self.opts.models:
            if not await self.answer(asker, model):
                return
            if model != self.opts.judge:
                asker.release(model)  # the judge (or the next model) may need the cores
        judge = asker.client(self.opts.judge, "judge", self.opts.max_in_flight, JUDGE_RETRIES)
        if not await self.grade(asker, judge):
            return
        if self.opts.pairwise:
            await self.compare(asker, judge)

    def close(self) -> None:
        self.files.close()


def evaluate(cfg: PipelineConfig, opts: EvalOptions, out_dir: str | Path,
             resume: bool = False) -> dict[str, Any]:
    """Answer, grade (and compare), then write summary.json and the report; returns the
    summary. Everything already committed in `out_dir` is kept and not asked again."""
    from actors import logs
    from actors.rundir.prepare import lock_run_dir
    from actors.tools.asker import Asker, model_names

    opts.models = model_names(cfg, opts.models, "--models", "--models")
    model_names(cfg, [opts.judge], "--judge", "--judge")
    if opts.pairwise and len(opts.models) < 2:
        raise EvalError("--pairwise compares models: name at least two in --models")
    tasks = select_tasks(load_tasks(opts.tasks), opts.limit, opts.seed)
    human = load_human(opts.human) if opts.human else None
    method = eval_fingerprint(cfg, opts)
    out = Path(out_dir).resolve()
    check_eval_dir(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(out)  # noqa: F841 - held until this function returns
    earlier = check_eval_resume(out, method) if resume else {}
    state = Progress.read(out)
    log = logs.configure(out / "events.jsonl", console=True)
    started = time.time()
    base = {"status": "running", "out": str(out), "tasks_file": opts.tasks,
            "judge": opts.judge, "models_evaluated": opts.models, "limit": opts.limit,
            "pairwise": opts.pairwise, "resumes": earlier.get("resumes", -1) + 1,
            "method": {**earlier.get("method", {}), **method,
                       "models": {**earlier.get("method", {}).get("models", {}),
                                  **method["models"]}}}
    _write_json(out / SUMMARY, {**base, "started": started})
    log.info("evaluate_start", models=opts.models, judge=opts.judge, tasks=len(tasks))
    names = [*opts.models, opts.judge]
    cache_path = cfg.cache.path or str(out / "cache.sqlite")
    run = Evaluation(opts, out, tasks, state, log)
    asker = Asker(cfg, names, cache_path, opts.max_cost, spent_usd(state.usage))
    try:
        asyncio.run(run.run(asker))
    finally:
        asker.close()
        run.close()
    summary = summarize_eval(tasks, opts.models, state.answers, state.grades,
                             state.pairwise if opts.pairwise else None, human)
    open_work = sum(m["answer_errors"] + m["judge_errors"] for m in summary["models"].values())
    status = {"max_cost": "stopped", "failed": "failed"}.get(
        run.stop, "incomplete" if open_work else "completed")
    prices = {m.label: m.price for m in cfg.models.values() if isinstance(m, ApiModel)}
    summary = {**base, **summary, "status": status, "stop_reason": run.stop or None,
               **({"failure": run.failure} if run.failure else {}),
               "started": started, "wall_s": round(time.time() - started, 3),
               "usage": summarize(state.usage, prices)["totals"],
               "spent_usd": round(spent_usd(state.usage), 6)}
    _write_json(out / SUMMARY, summary)
    summary["report"] = write_eval_report(out / "report", summary)
    log.info("evaluate_end", status=status, wall_s=summary["wall_s"])
    return summary


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a crash leaves the old file or the new one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)


# ----------------------------------------------------------------------------- the report


GRADE_COLOURS = {"A": "#2e7d32", "B": "#9ccc65", "C": "#ffb74d", "D": "#e53935"}


def grades_figure(summary: dict[str, Any], path: Path) -> None:
    """The paper's figure: one bar per model, stacked shares of A, B, C and D."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary["models"])
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(models) + 2), 4.5))
    bottom = [0.0] * len(models)
    for g in GRADES:
        shares = [summary["models"][m]["shares"][g] or 0.0 for m in models]
        ax.bar(models, shares, bottom=bottom, color=GRADE_COLOURS[g], label=g,
               edgecolor="white")
        for x, (b, s) in enumerate(zip(bottom, shares, strict=True)):
            if s >= 0.04:
                ax.text(x, b + s / 2, f"{s:.0%}", ha="center", va="center", fontsize=8)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    ax.set_xticks(range(len(models)), [
        f"{m}\n(n={summary['models'][m]['graded'] - summary['models'][m]['unparseable']}, "
        f"{summary['models'][m]['unparseable']} unparsed)" for m in models], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of graded answers")
    ax.set_title(f"Judge: {summary['judge']}; A valid, B minor errors, C significant errors, "
                 f"D invalid", fontsize=9)
    ax.legend(reversed(ax.get_legend_handles_labels()[0]), reversed(GRADES),
              loc="center left", bbox_to_anchor=(1, 0.5))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def render_eval_html(summary: dict[str, Any], figure: str | None) -> str:
    models = summary["models"]
    parts = [f"<h1>Evaluation: {html.escape(', '.join(models))}</h1>",
             f"<p>{summary['questions']} questions from {html.escape(summary['tasks_file'])}; "
             f"judge {html.escape(summary['judge'])}; status {summary['status']}.</p>"]
    if figure:
        parts.append(f'<img src="{figure}" alt="A/B/C/D shares per model">')
    parts.append(_table(
        ["model", "answered", "graded", "A", "B", "C", "D", "unparseable", "failed requests"],
        [[m, e["answered"], e["graded"],
          *(f"{e['counts'][g]} ({_pct(e['shares'][g])})" for g in GRADES), e["unparseable"],
          e["answer_errors"] + e["judge_errors"]] for m, e in models.items()]))
    if summary.get("pairwise"):
        parts.append("<h2>Pairwise (each comparison asked in both orders)</h2>")
        parts.append(_table(["models", "win", "tie", "loss", "unparseable",
                             "orders disagree"],
                            [[name, *t.values()] for name, t in summary["pairwise"].items()]))
    if summary.get("human_agreement"):
        h = summary["human_agreement"]
        parts.append(f"<h2>Agreement with human grades</h2><p>{h['n']} answers; agreement "
                     f"{_pct(h['agreement'])}; Cohen's kappa {h['cohen_kappa']}</p>")
    cats = sorted({c for e in models.values() for c in e.get("by_category", {})})
    if cats:
        parts.append("<h2>By category (A / B / C / D, unparseable)</h2>")
        parts.append(_table(["category", *models], [
            [c, *(" / ".join(str(t["counts"][g]) for g in GRADES) + f", {t['unparseable']}"
                  if (t := e.get("by_category", {}).get(c)) else "-" for e in models.values())]
            for c in cats]))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>selfinstruct evaluate"
            "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
            "td,th{padding:2px 10px;text-align:left}img{max-width:100%}</style></head><body>"
            + "".join(parts) + "</body></html>")


def write_eval_report(report: Path, summary: dict[str, Any]) -> str:
    """report/grades.png and report/index.html; the figure needs matplotlib (the report
    extra), without which the page has the tables alone."""
    report.mkdir(parents=True, exist_ok=True)
    figure: str | None = "grades.png"
    try:
        grades_figure(summary, report / "grades.png")
    except ImportError:
        figure = None
    (report / "index.html").write_text(render_eval_html(summary, figure), encoding="utf-8")
    return str(report / "index.html")
