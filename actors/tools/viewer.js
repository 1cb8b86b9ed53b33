// selfinstruct report: the data viewer. Plain script, no network: the rows are the JSON block
// #viewer-data. The view and its filters live in the URL's hash (#tasks?verb=write&q=poem),
// so the figures' links filter the table and a filtered view can be shared as a link.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("viewer-data").textContent);
  const T = data.tasks;
  const R = data.rejections;
  const PAGE = data.page_rows;
  const root = document.getElementById("viewer");
  const byId = (id) => document.getElementById(id);

  // -- small helpers ---------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) {
      if (c === null || c === undefined || c === "") continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }
  const fmt = (n) => n.toLocaleString("en-US");
  const score = (x) => (typeof x === "number" ? x.toFixed(3) : "");
  let taskIndex = null;
  function nameOf(id) {
    if (!taskIndex) {
      taskIndex = new Map();
      T.id.forEach((tid, i) => taskIndex.set(tid, i));
    }
    if (taskIndex.has(id)) return T.instruction[taskIndex.get(id)];
    return data.names[id] || "";
  }
  const tallies = new Map();
  function counts(values, name, keep) {
    // The options of a select: each value with its count, most frequent first; `name` says
    // what was counted, so a redraw reuses the tally.
    if (tallies.has(name)) return tallies.get(name);
    const out = new Map();
    values.forEach((v, i) => {
      if (v && (!keep || keep(i))) out.set(v, (out.get(v) || 0) + 1);
    });
    const sorted = [...out.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
    tallies.set(name, sorted);
    return sorted;
  }
  function fillSelect(select, entries, current, anyLabel) {
    if (select.tally === entries && select.value === current) return;  // drawn already
    select.tally = entries;
    const opts = [el("option", { value: "" }, anyLabel)];
    let seen = current === "";
    for (const [value, n] of entries) {
      opts.push(el("option", { value: value }, `${value} (${fmt(n)})`));
      if (value === current) seen = true;
    }
    if (!seen) opts.push(el("option", { value: current }, `${current} (0)`));
    select.replaceChildren(...opts);
    select.value = current;
  }
  function idList(ids) {
    const ul = el("ul", { class: "ids" });
    for (const [id, s] of ids) {
      ul.append(el("li", {}, s === undefined ? "" : el("b", {}, score(s) + " "),
        el("code", {}, id), " ", nameOf(id)));
    }
    return ul;
  }
  function section(title, ...body) {
    return el("div", { class: "part" }, el("h4", {}, title), ...body);
  }
  function instancesTable(pairs) {
    const table = el("table", { class: "instances" },
      el("tr", {}, el("th", {}, "input"), el("th", {}, "output")));
    for (const [input, output] of pairs) {
      table.append(el("tr", {}, el("td", {}, input || el("i", {}, "(no input)")),
        el("td", {}, output)));
    }
    return table;
  }
  function neighbours(rouge) {
    if (!rouge) return null;
    const list = (rouge.neighbours || []).map((n) => [n.id, n.score]);
    return section(`ROUGE-L: highest ${score(rouge.max)}${rouge.max_exact ? " (exact)" : ""}`,
      list.length ? idList(list) : el("p", {}, "no recorded neighbours"));
  }
  function rest(obj, known) {
    const other = Object.fromEntries(Object.entries(obj).filter(([k]) => !known.includes(k)));
    return Object.keys(other).length ? el("pre", {}, JSON.stringify(other, null, 1)) : null;
  }

  // -- the two views -----------------------------------------------------------------------
  const VIEWS = {
    tasks: {
      n: T.id.length,
      noun: "tasks",
      keys: ["cls", "verb", "noun"],
      head: ["id", "instruction", "verb", "object", "kind", "instances", "ROUGE-L"],
      text: (i) => [T.id[i], T.instruction[i], ...T.instances[i].flat()].join("\n"),
      match: (i, f) => (!f.cls || (f.cls === "classification") === (T.cls[i] === 1)) &&
        (!f.verb || T.verb[i] === f.verb) && (!f.noun || T.noun[i] === f.noun),
      cells: (i) => [T.id[i], T.instruction[i], T.verb[i], T.noun[i],
        T.cls[i] ? "classification" : "generation", T.instances[i].length,
        score((T.provenance[i].rouge || {}).max)],
      detail: taskDetail,
    },
    rejections: {
      n: R.id.length,
      noun: "rejections",
      keys: ["stage", "rule"],
      head: ["id", "stage", "rule", "reason", "item"],
      text: (i) => [R.id[i], R.stage[i], R.rule[i], R.reason[i], R.item[i].instruction,
        R.item[i].input, R.item[i].output].join("\n"),
      match: (i, f) => (!f.stage || R.stage[i] === f.stage) && (!f.rule || R.rule[i] === f.rule),
      cells: (i) => [R.id[i], R.stage[i], R.rule[i], R.reason[i], itemSummary(R.item[i])],
      detail: rejectionDetail,
    },
  };

  function itemSummary(item) {
    const parts = [item.instruction || item.id || ""];
    if ("input" in item || "output" in item) {
      parts.push(`input: ${item.input || "(none)"}  output: ${item.output || "(none)"}`);
    }
    return parts.filter(Boolean).join(" | ");
  }

  function taskDetail(i) {
    const p = T.provenance[i];
    const out = [section(`Instances (${T.instances[i].length})`, instancesTable(T.instances[i]))];
    const cls = p.classify || {};
    out.push(section("Classification", el("p", {},
      T.cls[i] ? "classification" : "generation",
      cls.answer !== undefined ? ` (classifier answered "${cls.answer}")` : "")));
    if (p.shots) out.push(section(`Shots in the prompt (${p.shots.length})`,
      idList(p.shots.map((id) => [id]))));
    out.push(neighbours(p.rouge));
    const models = el("ul", {});
    for (const stage of ["propose", "classify", "instances"]) {
      const s = p[stage];
      if (!s) continue;
      models.append(el("li", {}, el("b", {}, stage), ` ${s.model || "?"}, response `,
        el("code", {}, s.response_id || "?"), s.mode ? `, ${s.mode}` : ""));
    }
    if (models.childElementCount) out.push(section("Models", models));
    const dropped = (p.instances || {}).dropped || [];
    if (dropped.length) {
      out.push(section(`Instances dropped (${dropped.length})`, el("ul", {},
        ...dropped.map((d) => el("li", {}, el("b", {}, d.rule), " ", d.reason)))));
    }
    const other = rest(p, ["shots", "rouge", "propose", "classify", "instances"]);
    if (other) out.push(section("Other provenance", other));
    return out;
  }

  function rejectionDetail(i) {
    const item = R.item[i];
    const out = [section("Why", el("p", {}, el("b", {}, `${R.stage[i]} / ${R.rule[i]}: `),
      R.reason[i]))];
    if (item.instruction) out.push(section("Instruction", el("p", {}, item.instruction)));
    if ("input" in item || "output" in item) {
      out.push(section("Instance", instancesTable([[item.input, item.output]])));
    }
    if (item.shots) out.push(section(`Shots in the prompt (${item.shots.length})`,
      idList(item.shots.map((id) => [id]))));
    out.push(neighbours(item.rouge));
    out.push(section("Item as written", el("pre", {}, JSON.stringify(item, null, 1))));
    return out;
  }

  // -- state: the hash ---------------------------------------------------------------------
  const FILTERS = ["cls", "verb", "noun", "stage", "rule"];
  let state = readHash();

  function readHash() {
    const hash = location.hash.slice(1);
    const at = hash.indexOf("?");
    const view = at < 0 ? hash : hash.slice(0, at);
    const params = new URLSearchParams(at < 0 ? "" : hash.slice(at + 1));
    const s = { view: VIEWS[view] && (view !== "rejections" || data.run) ? view : "tasks",
      q: params.get("q") || "", page: Math.max(1, parseInt(params.get("page"), 10) || 1) };
    for (const k of FILTERS) s[k] = VIEWS[s.view].keys.includes(k) ? params.get(k) || "" : "";
    return s;
  }
  function hashOf(s) {
    const params = new URLSearchParams();
    for (const k of VIEWS[s.view].keys) if (s[k]) params.set(k, s[k]);
    if (s.q) params.set("q", s.q);
    if (s.page > 1) params.set("page", String(s.page));
    const query = params.toString();
    return `#${s.view}${query ? "?" + query : ""}`;
  }
  function update(changes) {
    state = Object.assign({}, state, { page: 1 }, changes);
    history.replaceState(null, "", hashOf(state));
    render();
  }

  // -- filtering, memoised on the filters --------------------------------------------------
  const haystacks = {};
  let memo = { key: null, rows: null };
  function rows() {
    const v = VIEWS[state.view];
    const key = JSON.stringify([state.view, state.q, ...FILTERS.map((k) => state[k])]);
    if (memo.key === key) return memo.rows;
    const terms = state.q.toLowerCase().split(/\s+/).filter(Boolean);
    let hay = null;
    if (terms.length) {
      hay = haystacks[state.view] || (haystacks[state.view] =
        Array.from({ length: v.n }, (_, i) => v.text(i).toLowerCase()));
    }
    const out = [];
    for (let i = 0; i < v.n; i++) {
      if (v.match(i, state) && (!hay || terms.every((t) => hay[i].includes(t)))) out.push(i);
    }
    memo = { key: key, rows: out };
    return out;
  }

  // -- drawing -----------------------------------------------------------------------------
  function syncControls() {
    byId("v-q").value = state.q;
    byId("v-cls").value = state.cls;
    fillSelect(byId("v-verb"), counts(T.verb, "verb"), state.verb, "any");
    fillSelect(byId("v-noun"), counts(T.noun, `noun of ${state.verb}`,
      state.verb ? (i) => T.verb[i] === state.verb : null), state.noun, "any");
    fillSelect(byId("v-stage"), counts(R.stage, "stage"), state.stage, "any");
    fillSelect(byId("v-rule"), counts(R.rule, `rule of ${state.stage}`,
      state.stage ? (i) => R.stage[i] === state.stage : null), state.rule, "any");
    for (const label of root.querySelectorAll("[data-for]")) {
      label.hidden = label.dataset.for !== state.view;
    }
    for (const tab of root.querySelectorAll(".tabs a")) {
      tab.classList.toggle("active", tab.dataset.view === state.view);
    }
  }

  function render() {
    syncControls();
    const v = VIEWS[state.view];
    const found = rows();
    const pages = Math.max(1, Math.ceil(found.length / PAGE));
    state.page = Math.min(state.page, pages);
    const start = (state.page - 1) * PAGE;
    const shown = found.slice(start, start + PAGE);
    byId("v-table").tHead.replaceChildren(el("tr", {}, ...v.head.map((h) =>
      el("th", { class: "c-" + h.toLowerCase().replace(/[^a-z]+/g, "-") }, h))));
    const body = byId("v-table").tBodies[0];
    body.replaceChildren(...shown.map((i) => {
      const tr = el("tr", { class: "row", tabindex: "0", "data-index": String(i) },
        ...v.cells(i).map((c) => el("td", {}, c)));
      return tr;
    }));
    if (!shown.length) {
      body.append(el("tr", {}, el("td", { colspan: String(v.head.length), class: "empty" },
        `no ${v.noun} match`)));
    }
    byId("v-status").textContent = found.length ?
      `${v.noun} ${fmt(start + 1)}–${fmt(start + shown.length)} of ${fmt(found.length)}` +
      (found.length < v.n ? ` (filtered from ${fmt(v.n)})` : "") : `0 of ${fmt(v.n)} ${v.noun}`;
    byId("v-page").textContent = `page ${fmt(state.page)} of ${fmt(pages)}`;
    byId("v-prev").disabled = state.page <= 1;
    byId("v-next").disabled = state.page >= pages;
  }

  function toggleDetail(tr) {
    const next = tr.nextElementSibling;
    if (next && next.classList.contains("detail")) {
      next.remove();
      tr.classList.remove("open");
      return;
    }
    const v = VIEWS[state.view];
    const td = el("td", { colspan: String(v.head.length) },
      ...v.detail(Number(tr.dataset.index)).filter(Boolean));
    tr.after(el("tr", { class: "detail" }, td));
    tr.classList.add("open");
  }

  // -- events ------------------------------------------------------------------------------
  let typing = null;
  byId("v-q").addEventListener("input", (e) => {
    clearTimeout(typing);
    const q = e.target.value;
    typing = setTimeout(() => update({ q: q }), 120);
  });
  for (const k of FILTERS) {
    byId(`v-${k}`).addEventListener("change", (e) => {
      const changes = { [k]: e.target.value };
      if (k === "verb") changes.noun = "";
      if (k === "stage") changes.rule = "";
      update(changes);
    });
  }
  byId("v-clear").addEventListener("click", () => {
    update({ q: "", cls: "", verb: "", noun: "", stage: "", rule: "" });
  });
  byId("v-prev").addEventListener("click", () => update({ page: state.page - 1 }));
  byId("v-next").addEventListener("click", () => update({ page: state.page + 1 }));
  byId("v-table").tBodies[0].addEventListener("click", (e) => {
    const tr = e.target.closest("tr.row");
    if (tr) toggleDetail(tr);
  });
  byId("v-table").tBodies[0].addEventListener("keydown", (e) => {
    if ((e.key === "Enter" || e.key === " ") && e.target.matches("tr.row")) {
      e.preventDefault();
      toggleDetail(e.target);
    }
  });
  window.addEventListener("hashchange", () => {
    state = readHash();
    render();
    root.scrollIntoView();
  });
  render();
  if (location.hash) root.scrollIntoView();
})();
