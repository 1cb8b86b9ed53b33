"""`selfinstruct report`: the paper's figures as PNGs, an index.html, and a summary table."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from actors.method.seeds import SeedError  # noqa: E402
from actors.tools.analysis import (  # noqa: E402
    Diversity,
    Source,
    histogram,
    lengths,
    load_source,
    load_spacy,
    max_rouge_to,
    read_jsonl,
    seed_instructions,
    spacy_verb_noun,
    summary_stats,
    timeline,
    verb_noun_diversity,
)
from actors.tools.quality import QUESTIONS, grade_percentages  # noqa: E402

STAGES = ["propose", "filter", "dedup", "classify", "task", "instances"]


def ring_chart(div: Diversity, path: Path, title: str) -> None:
    """The paper's nested rings: root verbs inside, their top direct objects outside."""
    fig, ax = plt.subplots(figsize=(9, 9))
    if not div.top:
        ax.text(0.5, 0.5, "no root verbs found", ha="center", va="center")
        ax.axis("off")
    else:
        cmap = plt.get_cmap("tab20")
        inner = [count for _, count, _ in div.top]
        colors = [cmap(i % 20) for i in range(len(inner))]
        ax.pie(inner, radius=0.7, labels=[v for v, _, _ in div.top], labeldistance=0.55,
               colors=colors, wedgeprops={"width": 0.4, "edgecolor": "white"},
               textprops={"fontsize": 8}, startangle=90, counterclock=False)
        outer, labels, outer_colors = [], [], []
        for i, (_, count, nouns) in enumerate(div.top):
            for noun, n in nouns:
                outer.append(n)
                labels.append(noun)
                outer_colors.append((*colors[i][:3], 0.55))
            rest = count - sum(n for _, n in nouns)
            if rest:
                outer.append(rest)
                labels.append("")
                outer_colors.append((1, 1, 1, 0))
        ax.pie(outer, radius=1.0, labels=labels, labeldistance=0.87, colors=outer_colors,
               wedgeprops={"width": 0.3, "edgecolor": "white"}, textprops={"fontsize": 6},
               startangle=90, counterclock=False, rotatelabels=True)
    ax.set_title(f"{title}: top {len(div.top)} root verbs and their top direct objects")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def bar_hist(values: list[float], path: Path, title: str, xlabel: str,
             bins: Any = 20) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=bins, color="#4c72b0", edgecolor="white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def length_plots(lens: dict[str, list[int]], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (name, values) in zip(axes, lens.items(), strict=True):
        ax.hist(values or [0], bins=30, color="#55a868", edgecolor="white")
        ax.set_title(f"{name} length (words)")
        ax.set_xlabel("words")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def funnel_plot(counts: dict[str, Any], path: Path) -> None:
    stages = [s for s in STAGES if s in counts]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(stages) + 1.5))
    ys = range(len(stages))
    ax.barh(ys, [counts[s]["accepted"] for s in stages], color="#55a868", label="accepted")
    left = [counts[s]["accepted"] for s in stages]
    reasons = sorted({r for s in stages for r in counts[s]["reasons"]})
    cmap = plt.get_cmap("tab20")
    for k, reason in enumerate(reasons):
        widths = [counts[s]["reasons"].get(reason, 0) for s in stages]
        ax.barh(ys, widths, left=left, color=cmap(k % 20), label=f"rejected: {reason}")
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(list(ys), stages)
    ax.invert_yaxis()
    ax.set_xlabel("items")
    ax.set_title("Funnel: what each stage accepted and rejected, by reason")
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def share_plot(n_cls: int, n_gen: int, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if n_cls + n_gen:
        ax.pie([n_cls, n_gen], labels=[f"classification ({n_cls})", f"generation ({n_gen})"],
               colors=["#c44e52", "#4c72b0"], autopct="%1.0f%%")
    ax.set_title("Classification versus generation tasks")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def throughput_plot(series: dict[str, list[tuple[float, float]]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    if series["tasks"]:
        ax.plot(*zip(*series["tasks"], strict=True), color="#4c72b0", label="tasks written")
    ax.set_xlabel("seconds since the first record")
    ax.set_ylabel("tasks")
    ax2 = ax.twinx()
    if series["tokens"]:
        ax2.plot(*zip(*series["tokens"], strict=True), color="#dd8452", label="tokens used")
    ax2.set_ylabel("tokens (prompt + completion)")
    ax.set_title("Throughput and usage over the run")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def compute(source: Source, seeds: list[str] | None, parse: Any = None) -> dict[str, Any]:
    """Every number the report shows, as a dict (also written as report/summary.json)."""
    instructions = [t.instruction for t in source.tasks]
    parse = parse or spacy_verb_noun(load_spacy())
    div = verb_noun_diversity(parse(instructions))
    refs = seed_instructions(source, seeds)
    novelty = max_rouge_to(refs, instructions) if refs else []
    lens = lengths(source.tasks)
    n_cls = sum(t.is_classification for t in source.tasks)
    out: dict[str, Any] = {
        "source": source.label,
        "tasks": len(source.tasks),
        "instances": sum(len(t.instances) for t in source.tasks),
        "classification": n_cls,
        "generation": len(source.tasks) - n_cls,
        "diversity": {"parsed": div.parsed, "with_root_verb": div.with_verb,
                      "with_verb_and_object": div.with_verb_noun,
                      "unique_verbs": div.unique_verbs, "unique_verb_object_pairs":
                      div.unique_pairs,
                      "top": [{"verb": v, "count": c, "objects": [list(x) for x in nouns]}
                              for v, c, nouns in div.top]},
        "novelty": {"reference_seeds": len(refs), "max_rouge_l": novelty,
                    "histogram_0.1_bins": histogram(novelty)},
        "lengths": {k: summary_stats(v) for k, v in lens.items()},
    }
    if source.run:
        out["funnel"] = source.run.get("counts", {})
        out["acceptance"] = source.run.get("acceptance", {})
        out["usage"] = source.run.get("usage", {})
        out["timings"] = source.run.get("timings", {})
    if source.run_dir is not None:
        grades = read_jsonl(source.run_dir / "quality_sample.jsonl")
        if grades:
            out["quality"] = grade_percentages(grades)
    out["_div"], out["_lens"] = div, lens
    return out


EXPECTS = "`report` expects a run directory (holding dataset.jsonl) or a seed-schema JSONL file"


def check_source(path: Path) -> None:
    """Refuse what is neither a run directory nor a file before drawing anything, rather than
    an all-zero report of an empty folder."""
    if not path.exists():
        raise SeedError(f"{path}: not found; {EXPECTS}")
    if path.is_dir() and not (path / "dataset.jsonl").is_file():
        raise SeedError(f"{path}: a folder without dataset.jsonl, so not a run directory; "
                        f"{EXPECTS}")


def write_report(path: str | Path, out_dir: str | Path | None = None,
                 seeds: list[str] | None = None, parse: Any = None) -> dict[str, Any]:
    check_source(Path(path))
    source = load_source(path)
    if out_dir is None:
        out_dir = (source.run_dir / "report") if source.run_dir else \
            Path(path).with_suffix("").parent / f"{Path(path).stem}_report"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = compute(source, seeds, parse)
    div, lens = data.pop("_div"), data.pop("_lens")
    figures = [("verb_noun.png", "Diversity: root verbs and their direct objects")]
    ring_chart(div, out / "verb_noun.png", source.label)
    if data["novelty"]["max_rouge_l"]:
        bar_hist(data["novelty"]["max_rouge_l"], out / "rouge_to_seeds.png",
                 "Novelty: each instruction's highest ROUGE-L to the seed tasks",
                 "highest ROUGE-L to a seed", bins=[i / 20 for i in range(21)])
        figures.append(("rouge_to_seeds.png", "Novelty against the seeds"))
    length_plots(lens, out / "lengths.png")
    figures.append(("lengths.png", "Lengths of instructions, inputs and outputs"))
    share_plot(data["classification"], data["generation"], out / "share.png")
    figures.append(("share.png", "Classification versus generation"))
    if data.get("funnel"):
        funnel_plot(data["funnel"], out / "funnel.png")
        figures.append(("funnel.png", "Funnel of rejections by stage and reason"))
    if source.run_dir is not None:
        series = timeline(source.run_dir)
        if series["tasks"] or series["tokens"]:
            throughput_plot(series, out / "throughput.png")
            figures.append(("throughput.png", "Throughput and token usage over the run"))
    (out / "summary.json").write_text(json.dumps(data, indent=2))
    (out / "index.html").write_text(render_html(data, figures))
    data["report_dir"] = str(out)
    data["figures"] = [f for f, _ in figures]
    return data


def summary_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    nov = data["novelty"]["max_rouge_l"]
    rows = [
        ("tasks", str(data["tasks"])),
        ("instances", str(data["instances"])),
        ("classification / generation", f"{data['classification']} / {data['generation']}"),
        ("instructions with a root verb", str(data["diversity"]["with_root_verb"])),
        ("... with verb and direct object", str(data["diversity"]["with_verb_and_object"])),
        ("unique root verbs", str(data["diversity"]["unique_verbs"])),
        ("unique verb-object pairs", str(data["diversity"]["unique_verb_object_pairs"])),
        ("top verbs", ", ".join(f"{t['verb']} ({t['count']})"
                                for t in data["diversity"]["top"][:8]) or "-"),
        ("mean highest ROUGE-L to seeds",
         f"{sum(nov) / len(nov):.3f} (vs {data['novelty']['reference_seeds']} seeds)"
         if nov else "no seeds to compare"),
    ]
    for name, stats in data["lengths"].items():
        rows.append((f"{name} words (mean / median / max)",
                     f"{stats['mean']} / {stats['median']} / {stats['max']}"))
    for stage, rate in (data.get("acceptance") or {}).items():
        rows.append((f"acceptance at {stage}", "-" if rate is None else f"{rate:.1%}"))
    for q, pct in (data.get("quality") or {}).items():
        rows.append((f"quality: {q}", f"{pct:.1%}"))
    return rows


def render_html(data: dict[str, Any], figures: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in summary_rows(data))
    figs = "".join(f'<figure><img src="{f}" alt="{html.escape(c)}"><figcaption>'
                   f"{html.escape(c)}</figcaption></figure>" for f, c in figures)
    quality = ""
    if data.get("quality"):
        quality = "<p>Quality grades use the paper's four questions: " + \
            "; ".join(html.escape(q) for q in QUESTIONS.values()) + "</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>selfinstruct report: "
            f"{html.escape(data['source'])}</title><style>body{{font-family:sans-serif;"
            f"max-width:1100px;margin:2em auto}}th{{text-align:left;padding-right:2em}}"
            f"img{{max-width:100%}}figure{{margin:2em 0}}</style></head><body>"
            f"<h1>{html.escape(data['source'])}</h1><table>{rows}</table>{quality}{figs}"
            f"</body></html>")
