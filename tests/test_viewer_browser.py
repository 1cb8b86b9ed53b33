"""The report's data viewer in a real browser: headless Chromium (Debian's package), driven over
the DevTools protocol with aiohttp's websocket client, opens report/index.html from the file
system and is used as a person would: it reads the table, types a search, clicks a funnel bar
and a verb, opens a row, and leaves screenshots to look at."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from actors.tools.analysis import load_spacy, spacy_verb_noun
from actors.tools.report import write_report
from tests.test_report import REJECTED, TASKS, big_run, make_run

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install "
    "chromium; .ci/run installs it where apt-get works)")

ROWS = "[...document.querySelectorAll('#v-table tbody tr.row')]"
CELLS = f"{ROWS}.map(tr => [...tr.cells].map(td => td.textContent))"


class Browser:
    """One headless Chromium and its first tab, spoken to over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        self.port_file = profile / "DevToolsActivePort"
        self.port_file.unlink(missing_ok=True)  # a reused profile's port is a dead one
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.errors: list[str] = []
        self.next_id = 0
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> Browser:
        try:
            await self._connect()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _connect(self) -> None:
        deadline = time.monotonic() + 30
        while not self.port_file.is_file() or not self.port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{CHROMIUM} did not open its DevTools port "
                                   f"(exit code {self.proc.poll()})")
            await asyncio.sleep(0.05)
        port = self.port_file.read_text().split()[0]
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            page = next(t for t in await resp.json() if t["type"] == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=1280, height=1000,
                        deviceScaleFactor=1, mobile=False)

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        os.killpg(self.proc.pid, signal.SIGTERM)  # the browser and its renderers
        self.proc.wait(timeout=10)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = json.loads((await self.ws.receive(timeout=60)).data)
            if msg.get("method") == "Runtime.exceptionThrown":
                details = msg["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description")
                                   or details["text"])
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def js(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll a JS expression until it is truthy (the viewer redraws after a short debounce)."""
        deadline = time.monotonic() + timeout
        while not (value := await self.js(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout} s: {expression} "
                                     f"(errors on the page: {self.errors})")
            await asyncio.sleep(0.05)
        return value

    async def open(self, url: str) -> None:
        """Load the page afresh (from a blank one, so a new hash is a new load, not a
        hashchange) and wait for the viewer's first rows."""
        await self.send("Page.navigate", url="about:blank")
        await self.send("Page.navigate", url=url)
        await self.until(f"document.readyState === 'complete' && {ROWS}.length > 0", 60)

    async def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element, after scrolling it into view; it
        fails if something else is on top there."""
        box = await self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            f"e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();"
            f"const x = r.x + r.width / 2, y = r.y + r.height / 2;"
            f"const top = document.elementFromPoint(x, y);"
            f"return [x, y, top === e || e.contains(top) || top.contains(e)]; }})()")
        assert box[2], f"{selector} is covered at its middle"
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                            button="left", clickCount=1)

    async def type(self, selector: str, text: str) -> None:
        await self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)

    async def screenshot(self, path: Path, selector: str) -> Path:
        await self.js(f"document.querySelector({json.dumps(selector)}).scrollIntoView()")
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"screenshot: {path}")
        return path


@pytest.fixture(scope="module")
def parse():
    return spacy_verb_noun(load_spacy())


def test_the_viewer_in_chromium(tmp_path, parse):
    run = make_run(tmp_path)
    write_report(run, parse=parse)
    page = (run / "report" / "index.html").as_uri()
    asyncio.run(_use_the_viewer(tmp_path, page))


async def _use_the_viewer(tmp_path: Path, page: str) -> None:
    async with Browser(tmp_path / "profile") as b:
        await b.open(page)
        # The table shows every task, and the data block held against '</script>'.
        ids = [f"task_{k:06d}" for k in range(len(TASKS))]
        assert [row[0] for row in await b.js(CELLS)] == ids
        assert [row[1] for row in await b.js(CELLS)] == [t[0] for t in TASKS]
        assert await b.js("document.getElementById('v-status').textContent") == "tasks 1–7 of 7"
        assert await b.js("window.pwned") is None

        # A search filters the rows and is kept in the hash.
        await b.type("#v-q", "poem")
        await b.until(f"{ROWS}.length === 2")
        assert [row[1] for row in await b.js(CELLS)] == [TASKS[0][0], TASKS[1][0]]
        assert await b.js("location.hash") == "#tasks?q=poem"
        await b.click("#v-clear")
        await b.until(f"{ROWS}.length === {len(TASKS)}")

        # A click on the funnel's dedup/rouge_l bar lists those rejections, and only those.
        await b.click('#fig-funnel a[href="#rejections?stage=dedup&rule=rouge_l"] polygon')
        # The hash changes first; the table follows on the hashchange event.
        await b.until("location.hash === '#rejections?stage=dedup&rule=rouge_l' && "
                      "document.getElementById('v-status').textContent.startsWith('rejections')")
        rows = await b.js(CELLS)
        want = [r for r in REJECTED if r[:2] == ("dedup", "rouge_l")]
        assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
            (s, rule, reason, item["instruction"]) for s, rule, reason, item in want]
        assert await b.js("[document.getElementById('v-stage').value, "
                          "document.getElementById('v-rule').value]") == ["dedup", "rouge_l"]
        # The rejection's detail names its ROUGE-L neighbour by its text (a seed here).
        await b.click("#v-table tbody tr.row")
        detail = await b.until("document.querySelector('#v-table tr.detail')?.textContent")
        assert "1.000 s0 Write a poem about the sea." in detail
        shot = await b.screenshot(tmp_path / "rejections_dedup.png", "#viewer")

        # A click on a verb beside the ring chart lists that verb's tasks; the whole hash state
        # (another view, a search) is replaced by the link's.
        await b.click('#fig-verb_noun .verbs a[href="#tasks?verb=classify"]')
        await b.until("document.getElementById('v-status').textContent.startsWith('tasks') "
                      f"&& {ROWS}.length === 2")
        assert [row[2] for row in await b.js(CELLS)] == ["classify", "classify"]
        # A task's detail: its instances, the shots and neighbours by their text, the models.
        await b.click("#v-table tbody tr.row")
        detail = await b.until("document.querySelector('#v-table tr.detail')?.textContent")
        for text in ("I loved it.", "positive", 'classifier answered "yes"',
                     "s0 Write a poem about the sea.", "task_000002 " + TASKS[2][0],
                     "propose proposer, response prop_0000000"):
            assert text in detail
        await b.screenshot(tmp_path / "tasks_classify.png", "#viewer")

        # A linked view opens filtered; text that looks like markup stays text.
        await b.open(page.split("#")[0] + "#rejections?stage=filter")
        rows = await b.js(CELLS)
        assert [r[4] for r in rows] == [REJECTED[0][3]["instruction"]]
        await b.open(page.split("#")[0] + "#tasks?q=%3C%2Fscript%3E")
        assert [row[0] for row in await b.js(CELLS)] == ["task_000006"]
        assert await b.js("window.pwned") is None
        assert b.errors == []
    assert shot.stat().st_size > 10_000


N_BIG = 50_000


@pytest.mark.slow
def test_the_viewer_stays_responsive_at_50k_tasks(tmp_path):
    run = big_run(tmp_path, N_BIG, 20_000)
    write_report(run, parse=lambda texts: [(t.split()[0].lower(), None) for t in texts])
    asyncio.run(_at_scale(tmp_path, (run / "report" / "index.html").as_uri()))


async def _at_scale(tmp_path: Path, page: str) -> None:
    async with Browser(tmp_path / "profile") as b:
        start = time.perf_counter()
        await b.open(page)
        loaded = time.perf_counter() - start
        # Paged: one page of rows in the document, not 50,000.
        assert await b.js(f"{ROWS}.length") == 100
        assert await b.js("document.getElementById('v-page').textContent") == "page 1 of 500"

        async def timed(action, done: str) -> float:
            t0 = time.perf_counter()
            await action
            await b.until(done, 30)
            return time.perf_counter() - t0

        # Five tasks match (4999, 14999 ...); the first search also builds the search index.
        first = await timed(b.type("#v-q", "number 4999."), f"{ROWS}.length === 5")
        await b.js("document.getElementById('v-q').value = ''")
        again = await timed(b.type("#v-q", "number 123"), f"{ROWS}.length === 100")
        verb = await timed(b.click('#fig-verb_noun .verbs a[href="#tasks?verb=classify"]'),
                           "document.getElementById('v-status').textContent"
                           ".endsWith('of 3,334 (filtered from 50,000)')")
        page2 = await timed(b.click("#v-next"), "document.getElementById('v-page')"
                            ".textContent.startsWith('page 2 of')")
        shot = await b.screenshot(tmp_path / "tasks_50k.png", "#viewer")
        print(f"50k tasks: page load {loaded:.2f} s, first search {first:.2f} s, "
              f"next search {again:.2f} s, verb link {verb:.2f} s, next page {page2:.2f} s")
        assert loaded < 20 and max(first, again, verb, page2) < 2
        assert b.errors == []
    assert shot.stat().st_size > 10_000
