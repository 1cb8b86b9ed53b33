"""`selfinstruct report`: the paper's figures as PNGs, an index.html with a summary table and a
data viewer of every task and rejection, and summary.json."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from actors.engine.summary import STAGE_ORDER, acceptance  # noqa: E402
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
    seed_tasks,
    spacy_verb_noun,
    summary_stats,
    timeline,
    verb_noun_diversity,
)
from actors.tools.quality import QUESTIONS, grade_percentages  # noqa: E402
from actors.tools.viewer import hash_link, viewer_css, viewer_data, viewer_section  # noqa: E402

DPI = 110
Link = tuple[Patch, str, str]  # a drawn shape, where a click on it goes, its tooltip


@dataclass
class Shown:
    """A figure on the page: its PNG, caption, the links laid over it (an SVG) and a list
    beside it."""

    file: str
    caption: str
    overlay: str = ""
    aside: str = ""


def save_linked(fig: Figure, path: Path, links: list[Link]) -> str:
    """Save the figure cropped as bbox_inches="tight" would, and return an SVG to lay over
    the PNG with one link per shape. The SVG's units are the figure's inches, so it lines up
    at any size the page scales the image to."""
    fig.canvas.draw()  # lays out the axes (a pie's equal aspect) the way savefig will
    bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)
    fig.savefig(path, dpi=DPI, bbox_inches=bbox)
    shapes = []
    for patch, href, title in links:
        for poly in patch.get_path().to_polygons(patch.get_transform()):
            points = " ".join(f"{x / fig.dpi:.3f},{-y / fig.dpi:.3f}" for x, y in poly)
            shapes.append(f'<a href="{href}"><title>{html.escape(title)}</title>'
                          f'<polygon points="{points}"/></a>')
    plt.close(fig)
    return (f'<svg viewBox="{bbox.x0:.3f} {-bbox.y1:.3f} {bbox.width:.3f} {bbox.height:.3f}" '
            f'preserveAspectRatio="none">{"".join(shapes)}</svg>')


def ring_chart(div: Diversity, path: Path, title: str) -> str:
    """The paper's nested rings: root verbs inside, their top direct objects outside; a click
    on a verb (or a verb's object) opens the task table filtered to it."""
    fig, ax = plt.subplots(figsize=(9, 9))
    links: list[Link] = []
    if not div.top:
        ax.text(0.5, 0.5, "no root verbs found", ha="center", va="center")
        ax.axis("off")
    else:
        cmap = plt.get_cmap("tab20")
        inner = [count for _, count, _ in div.top]
        colors = [cmap(i % 20) for i in range(len(inner))]
        wedges, _ = ax.pie(inner, radius=0.7, labels=[v for v, _, _ in div.top],
                           labeldistance=0.55, colors=colors,
                           wedgeprops={"width": 0.4, "edgecolor": "white"},
                           textprops={"fontsize": 8}, startangle=90, counterclock=False)
        links += [(w, hash_link("tasks", verb=v), f"{v}: {c} tasks")
                  for w, (v, c, _) in zip(wedges, div.top, strict=True)]
        outer, labels, outer_colors, targets = [], [], [], []
        for i, (verb, count, nouns) in enumerate(div.top):
            for noun, n in nouns:
                outer.append(n)
                labels.append(noun)
                outer_colors.append((*colors[i][:3], 0.55))
                targets.append((verb, noun, n))
            rest = count - sum(n for _, n in nouns)
            if rest:
                outer.append(rest)
                labels.append("")
                outer_colors.append((1, 1, 1, 0))
                targets.append(None)
        wedges, _ = ax.pie(outer, radius=1.0, labels=labels, labeldistance=0.87,
                           colors=outer_colors, wedgeprops={"width": 0.3, "edgecolor": "white"},
                           textprops={"fontsize": 6}, startangle=90, counterclock=False,
                           rotatelabels=True)
        links += [(w, hash_link("tasks", verb=t[0], noun=t[1]), f"{t[0]} {t[1]}: {t[2]} tasks")
                  for w, t in zip(wedges, targets, strict=True) if t]
    ax.set_title(f"{title}: top {len(div.top)} root verbs and their top direct objects")
    return save_linked(fig, path, links)


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


def funnel_plot(counts: dict[str, Any], path: Path) -> str:
    """Each stage's accepted and rejected items, by rule; a click on a rejected bar opens the
    rejection table filtered to that stage and rule."""
    stages = [s for s in STAGE_ORDER if s in counts]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(stages) + 1.5))
    ys = range(len(stages))
    ax.barh(ys, [counts[s]["accepted"] for s in stages], color="#55a868", label="accepted")
    left = [counts[s]["accepted"] for s in stages]
    reasons = sorted({r for s in stages for r in counts[s]["reasons"]})
    cmap = plt.get_cmap("tab20")
    links: list[Link] = []
    for k, reason in enumerate(reasons):
        widths = [counts[s]["reasons"].get(reason, 0) for s in stages]
        bars = ax.barh(ys, widths, left=left, color=cmap(k % 20), label=f"rejected: {reason}")
        links += [(bar, hash_link("rejections", stage=stage, rule=reason),
                   f"{stage}: {n} rejected by {reason}")
                  for bar, stage, n in zip(bars, stages, widths, strict=True) if n]
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(list(ys), stages)
    ax.invert_yaxis()
    ax.set_xlabel("items")
    ax.set_title("Funnel: what each stage accepted and rejected, by reason")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # off the bars
    return save_linked(fig, path, links)


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
    pairs = parse(instructions)
    div = verb_noun_diversity(pairs)
    seed_list = seed_tasks(source, seeds)
    refs = [t.instruction for t in seed_list]
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
        # A run still going (or killed) has counts in run.json only once it stops: run.json's
        # own account where there is one, else the same figures from what the files hold.
        out["acceptance"] = source.run.get("acceptance") or acceptance(out["funnel"])
        out["usage"] = source.run.get("usage", {})
        out["timings"] = source.run.get("timings", {})
    if source.run_dir is not None:
        grades = read_jsonl(source.run_dir / "quality_sample.jsonl")
        if grades:
            out["quality"] = grade_percentages(grades)
    out["_div"], out["_lens"] = div, lens
    out["_viewer"] = viewer_data(source, pairs, seed_list)
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
    div, lens, viewer = data.pop("_div"), data.pop("_lens"), data.pop("_viewer")
    figures = [Shown("verb_noun.png", "Diversity: root verbs and their direct objects "
                     "(click a verb or an object to list its tasks)",
                     ring_chart(div, out / "verb_noun.png", source.label), verb_list(div))]
    if data["novelty"]["max_rouge_l"]:
        bar_hist(data["novelty"]["max_rouge_l"], out / "rouge_to_seeds.png",
                 "Novelty: each instruction's highest ROUGE-L to the seed tasks",
                 "highest ROUGE-L to a seed", bins=[i / 20 for i in range(21)])
        figures.append(Shown("rouge_to_seeds.png", "Novelty against the seeds"))
    length_plots(lens, out / "lengths.png")
    figures.append(Shown("lengths.png", "Lengths of instructions, inputs and outputs"))
    share_plot(data["classification"], data["generation"], out / "share.png")
    figures.append(Shown("share.png", "Classification versus generation"))
    if data.get("funnel"):
        figures.append(Shown("funnel.png", "Funnel of rejections by stage and reason (click a "
                             "rejected bar to list its rejections)",
                             funnel_plot(data["funnel"], out / "funnel.png")))
    if source.run_dir is not None:
        series = timeline(source.run_dir)
        if series["tasks"] or series["tokens"]:
            throughput_plot(series, out / "throughput.png")
            figures.append(Shown("throughput.png", "Throughput and token usage over the run"))
    (out / "summary.json").write_text(json.dumps(data, indent=2))
    (out / "index.html").write_text(render_html(data, figures, viewer), encoding="utf-8")
    data["report_dir"] = str(out)
    data["figures"] = [f.file for f in figures]
    return data


def verb_list(div: Diversity) -> str:
    """The top verbs as links beside the ring chart (a small wedge is hard to hit)."""
    items = "".join(f'<li><a href="{hash_link("tasks", verb=v)}">{html.escape(v)}</a> ({c})'
                    f"</li>" for v, c, _ in div.top)
    return f'<div class="verbs"><b>Top verbs</b><ol>{items}</ol></div>' if items else ""


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


def render_html(data: dict[str, Any], figures: list[Shown], viewer: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in summary_rows(data))
    figs = "".join(
        f'<figure id="fig-{f.file.removesuffix(".png")}"><div class="linked"><div class="map">'
        f'<img src="{f.file}" alt="{html.escape(f.caption)}">{f.overlay}</div>{f.aside}</div>'
        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>" for f in figures)
    quality = ""
    if data.get("quality"):
        quality = "<p>Quality grades use the paper's four questions: " + \
            "; ".join(html.escape(q) for q in QUESTIONS.values()) + "</p>"
    browse = '<p>Browse the data: <a href="#tasks">tasks</a>' + (
        ', <a href="#rejections">rejections</a>' if viewer["run"] else "") + "</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>selfinstruct report: "
            f"{html.escape(data['source'])}</title><style>{viewer_css()}</style></head><body>"
            f"<h1>{html.escape(data['source'])}</h1><table>{rows}</table>{quality}{browse}"
            f"{figs}{viewer_section(viewer)}</body></html>")
