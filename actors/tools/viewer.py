"""The report's data viewer: every task and every rejection of a run, in report/index.html.

The page must open from the file system with no server and no network, so the rows travel inside
it as one JSON block (escaped so that no text in the data can end its script element), and a
small vanilla script (viewer.js, inlined) pages, searches and filters them. Columns rather than
row objects keep the block close to the size of the JSONL it comes from.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from actors.method.seeds import SeedTask
from actors.rundir.runlog import DATA_FILES
from actors.tools.analysis import Source, VerbNoun, read_jsonl

ASSETS = Path(__file__).parent
PAGE_ROWS = 100  # rows a page shows; viewer.js reads it from the data block


def task_columns(tasks: list[SeedTask], pairs: list[VerbNoun]) -> dict[str, list[Any]]:
    """The tasks as columns; verb and noun are the report's parse, so the verb-noun chart and
    the table's verb filter count the same thing."""
    if len(pairs) != len(tasks):
        raise ValueError(f"{len(pairs)} verb-noun pairs for {len(tasks)} tasks")
    return {
        "id": [t.id for t in tasks],
        "instruction": [t.instruction for t in tasks],
        "verb": [v or "" for v, _ in pairs],
        "noun": [n or "" for _, n in pairs],
        "cls": [int(t.is_classification) for t in tasks],
        "instances": [[[i.input, i.output] for i in t.instances] for t in tasks],
        "provenance": [t.extra.get("provenance") or {} for t in tasks],
    }


def rejection_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """rejected.jsonl as columns: stage, rule, reason and the rejected item as written."""
    return {key: [r.get(key, "") for r in rows] for key in ("id", "stage", "rule", "reason")} | {
        "item": [r.get("item") or {} for r in rows]}


def _referenced(provenance: list[dict[str, Any]]) -> set[str]:
    """Ids that shots and ROUGE-L neighbours point at (tasks of the run or seeds)."""
    out: set[str] = set()
    for p in provenance:
        out.update(p.get("shots") or [])
        out.update(n.get("id", "") for n in (p.get("rouge") or {}).get("neighbours") or [])
    return out


def viewer_data(source: Source, pairs: list[VerbNoun], seeds: list[SeedTask]) -> dict[str, Any]:
    """What the page embeds: the tasks, the run's rejections, and the instruction of every seed
    a shot or a neighbour names (run tasks are looked up among the tasks themselves)."""
    tasks = task_columns(source.tasks, pairs)
    rejected = read_jsonl(source.run_dir / DATA_FILES["rejected"]) if source.run_dir else []
    rejections = rejection_columns(rejected)
    wanted = _referenced(tasks["provenance"] + rejections["item"]) - set(tasks["id"])
    return {"page_rows": PAGE_ROWS, "run": source.run_dir is not None, "tasks": tasks,
            "rejections": rejections,
            "names": {t.id: t.instruction for t in seeds if t.id in wanted}}


def embed_json(data: Any) -> str:
    """JSON for a <script type="application/json"> element: every '<' is written as \\u003c,
    so '</script>' or '<!--' inside an instruction cannot end or confuse the element."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _asset(name: str) -> str:
    text = (ASSETS / name).read_text(encoding="utf-8")
    if "</" in text:  # it is inlined into <script>/<style>: an end tag would cut it short
        raise ValueError(f"{ASSETS / name}: holds '</', which would end its inlined element")
    return text


def viewer_css() -> str:
    """The viewer's stylesheet, for the page's <style>."""
    return _asset("viewer.css")


def viewer_section(data: dict[str, Any]) -> str:
    """The viewer's HTML: tabs, controls, an empty table that viewer.js fills, the data block
    and the script."""
    n_tasks, n_rej = len(data["tasks"]["id"]), len(data["rejections"]["id"])
    rej_tab = (f'<a href="#rejections" data-view="rejections">Rejections ({n_rej:,})</a>'
               if data["run"] else "")
    return (
        '<section id="viewer"><h2>Data</h2>'
        f'<nav class="tabs"><a href="#tasks" data-view="tasks">Tasks ({n_tasks:,})</a>{rej_tab}'
        '</nav><div class="controls">'
        '<input type="search" id="v-q" placeholder="search (all words)" aria-label="search">'
        '<label data-for="tasks">kind <select id="v-cls"><option value="">any</option>'
        '<option value="classification">classification</option>'
        '<option value="generation">generation</option></select></label>'
        '<label data-for="tasks">verb <select id="v-verb"></select></label>'
        '<label data-for="tasks">object <select id="v-noun"></select></label>'
        '<label data-for="rejections">stage <select id="v-stage"></select></label>'
        '<label data-for="rejections">rule <select id="v-rule"></select></label>'
        '<button type="button" id="v-clear">clear</button></div>'
        '<p id="v-status" aria-live="polite"></p>'
        '<table id="v-table"><thead></thead><tbody></tbody></table>'
        '<div class="pager"><button type="button" id="v-prev">previous</button>'
        '<span id="v-page"></span><button type="button" id="v-next">next</button></div>'
        "<noscript>The data viewer needs JavaScript.</noscript></section>"
        f'<script type="application/json" id="viewer-data">{embed_json(data)}</script>'
        f"<script>{_asset('viewer.js')}</script>"
    )


def hash_link(view: str, **filters: str) -> str:
    """A link into the viewer (`#tasks?verb=write`), HTML-escaped for an attribute."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in filters.items())
    return html.escape(f"#{view}?{query}" if query else f"#{view}")
