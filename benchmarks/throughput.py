"""Tasks kept per minute against an API with a fixed latency, at 1, 8, 32 and 128 requests in
flight, next to the ideal and to a sequential loop that sends one batch at a time as the
original code does.

    .venv/bin/python benchmarks/throughput.py [--latency 0.5] [--seconds 45] [--caps 1,8,32,128]

The API is tests/fakeapi.py on loopback: every request takes `--latency` seconds, proposals are
instruction lists drawn from ../shared/data/alpaca/alpaca_instructions.jsonl (so ROUGE-L
deduplication rejects what it would in life), classification and instances are short answers
in the prompts' formats. The pipeline runs as a real `selfinstruct run` on a local Ray with
every stage on that one model and `limits.max_in_flight` = the cap, cluster-wide.

Ideal tasks/min at cap C = 60 * C / (L * R): C requests always in flight, each taking L
seconds, and R requests per kept task across the three stages (proposals, classifications
and instance requests over tasks written, measured in the same run). The measured rate is
"working": tasks written over the time from the first request the API received to the last
task written, so Ray's start-up (about 10 s here) is left out but the pipeline's own fill and
drain are in; "steady": between the 10th and 90th percent of tasks written, without fill and
drain (the ideal is a steady-state figure); "wall": including start-up. The ratio to the
sequential loop uses the working rate.

Where the cost goes, per kept task: each run joins a Ray head this script starts (with its
dashboard, so Ray's own task records can be summarised), and the script reads every
process's CPU time from /proc four times a second. "CPU-ms/task" is the driver plus every
Ray worker process (`ray::...`: the actors and the model replicas), the fake server and Ray's
own daemons excluded; "Ray calls/task" is every actor method call Ray recorded during the
run (gate, pool, writer, queue, workers), from Ray's task summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Ray 2.60 may require token authentication; the head, the run and this script (which reads
# the head's task summary) share one token. Set before Ray is imported: it reads them once.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
os.environ.update(AUTH)

from openai import OpenAI  # noqa: E402

from actors.config import load_config  # noqa: E402
from actors.engine.run_inputs import load_all_seeds  # noqa: E402
from actors.method.dedup_index import RougeIndex  # noqa: E402
from actors.method.filters import INSTRUCTION_RULES, apply_chain, build_chain  # noqa: E402
from actors.method.parsing import (  # noqa: E402
    parse_classification,
    parse_input_first,
    parse_instructions,
    parse_output_first,
)
from actors.method.prompts import Shot, load_template, number_shots, sample_shots  # noqa: E402
from tests.runs import config, env  # noqa: E402
from tests.servers import FakeServer, fake_server, free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")



def _proc(pid: int) -> tuple[str, int, float] | None:
    """(command line, parent pid, user + system CPU seconds) of a live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return cmd, int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


# Ray's own daemons that run as `ray::` processes: not the run's work.
DAEMONS = ("DashboardAgent", "RuntimeEnvAgent", "IDLE")


class CpuMeter:
    """CPU seconds of the driver and of the Ray worker processes of one Ray head (the
    descendants of its raylet), sampled from /proc until stopped; a process that exits keeps
    its last reading (at most 0.25 s old). Other Ray sessions on the machine are left out."""

    def __init__(self, driver: int, gcs_port: int) -> None:
        self.driver, self.port = driver, gcs_port
        self.seen: dict[int, tuple[str, float]] = {}
        self.start = {pid: cpu for pid, (_, cpu) in self._scan().items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _scan(self) -> dict[int, tuple[str, float]]:
        procs = {int(e): got for e in os.listdir("/proc") if e.isdigit()
                 and (got := _proc(int(e)))}
        roots = {pid for pid, (cmd, _, _) in procs.items()
                 if "raylet" in cmd.split(" ")[0] and f":{self.port}" in cmd}
        out = {}
        for pid, (cmd, _, cpu) in procs.items():
            up, ours = pid, pid == self.driver
            while not ours and up in procs and up > 1:
                up = procs[up][1]
                ours = up in roots
            if ours and (pid == self.driver or cmd.startswith("ray::")):
                out[pid] = (cmd, cpu)
        return out

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self.seen.update(self._scan())

    def stop(self) -> dict[str, float]:
        """CPU seconds used since the meter started, by process kind."""
        self._stop.set()
        self._thread.join()
        by: dict[str, float] = {}
        for pid, (cmd, cpu) in self.seen.items():
            kind = "driver" if pid == self.driver else \
                cmd.split()[0].removeprefix("ray::").split(".")[0]
            if kind not in DAEMONS:
                by[kind] = by.get(kind, 0.0) + cpu - self.start.get(pid, 0.0)
        return by


@contextlib.contextmanager
def ray_head() -> Any:
    """A local Ray head with its dashboard (for the task summary); yields (address, url)."""
    port, dash = free_port(), free_port()
    renv = env(RAY_task_events_max_num_task_in_gcs="2000000", **AUTH)
    subprocess.run([str(ROOT / ".venv/bin/ray"), "start", "--head", f"--port={port}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    "--num-cpus=2", "--disable-usage-stats", "--node-ip-address=127.0.0.1"],
                   env=renv, check=True, capture_output=True, timeout=120)
    try:
        yield port, f"http://127.0.0.1:{dash}"
    finally:
        stop_head(port)


def stop_head(port: int) -> None:
    """Ends this head's processes only (`ray stop` would end every Ray on the machine): the
    ones whose command line names its GCS port."""
    marks = (f"127.0.0.1:{port}".encode(), f"--gcs_server_port={port}".encode())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if any(m in cmd for m in marks):
                with contextlib.suppress(OSError):
                    os.kill(int(entry), sig)
        time.sleep(2.0)


def ray_calls(dashboard: str) -> dict[str, int]:
    """Actor method calls Ray recorded, by name (the job's driver-side tasks included)."""
    from ray.util.state import summarize_tasks

    summary = summarize_tasks(address=dashboard, raise_on_missing_output=False)
    groups = summary["cluster"]["summary"]
    return {name: g["state_counts"].get("FINISHED", 0) + g["state_counts"].get("FAILED", 0)
            + sum(v for k, v in g["state_counts"].items() if k not in ("FINISHED", "FAILED"))
            for name, g in groups.items()}


def rates(commits: Path, first_request: float) -> tuple[float, float, int]:
    """Tasks per minute (a) from the first request the API received to the last task written,
    and (b) in steady state, between the 10th and the 90th percent of the tasks written."""
    stamps: list[float] = []
    for line in commits.open():
        rec = json.loads(line)
        stamps += [rec["time"]] * rec["lines"].get("dataset", 0)
    n = len(stamps)
    working = n / (stamps[-1] - first_request) * 60 if n else 0.0
    lo, hi = stamps[n // 10], stamps[(9 * n) // 10 - 1] if n >= 10 else stamps[-1]
    steady = ((9 * n) // 10 - n // 10) / (hi - lo) * 60 if hi > lo else working
    return working, steady, n


def pipeline_run(srv: FakeServer, cap: int, target: int, work: Path) -> dict:
    url = srv.url
    srv.reset()
    with ray_head() as (port, dashboard):
        r = _pipeline_run(url, srv, cap, target, work, port)
        calls = ray_calls(dashboard)
    r["ray_calls"] = sum(calls.values())
    r["calls_by_name"] = calls
    return r


def _pipeline_run(url: str, srv: FakeServer, cap: int, target: int, work: Path,
                  port: int) -> dict:
    cfg = config(work, models={"api": {
        "provider": "openai_compatible", "model": "fake", "base_url": f"{url}/v1",
        "limits": {"max_in_flight": cap}, "timeout_s": 30}},
        stages={s: {"model": "api", "max_in_flight_per_actor": cap}
                for s in ("propose", "classify", "instances")},
        actors={"tasks_per_lease": 8})
    out = work / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors", "run", str(cfg), "--out", str(out), "--target",
         str(target), "--no-progress"], cwd=work, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env(RAY_ADDRESS=f"127.0.0.1:{port}", **AUTH))
    meter = CpuMeter(proc.pid, port)
    _, err = proc.communicate(timeout=900)
    cpu = meter.stop()
    if proc.returncode:
        raise SystemExit(err[-3000:])
    run = json.loads((out / "run.json").read_text())
    rate, steady, tasks = rates(out / "commits.jsonl", min(srv.stats()["arrivals"]))
    requests = run["totals"]["all"]["requests"]
    return {"tasks": tasks, "requests": requests, "per_task": requests / tasks,
            "working_per_min": rate, "steady_per_min": steady,
            "wall_per_min": run["timings"]["tasks_per_min"],
            "wall_s": run["timings"]["wall_s"],
            "peak_in_flight": run["limits"]["api"]["peak_in_flight"],
            "cpu_s": cpu, "cpu_ms_per_task": sum(cpu.values()) / tasks * 1000}


def sequential_loop(url: str, seconds: float, batch: int = 5) -> dict:
    """The original code's shape: one API call at a time, each carrying a batch of prompts
    (the completions endpoint takes a list), then dedup, classify, instances in turn."""
    cfg = load_config(ROOT / "pipeline.yaml")
    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    templates = {name: load_template(cfg.prompts_dir, name, "completion")
                 for name in ("propose", "classify", "instances_input_first",
                              "instances_output_first")}
    seeds = load_all_seeds(cfg)
    human = [Shot(s["id"], s["instruction"]) for s in seeds]
    index = RougeIndex(0.7, False, 0.7, 0)
    for s in seeds:
        index.add(s["id"], s["instruction"])
    chain = build_chain(INSTRUCTION_RULES, cfg.filters.instruction.model_dump())
    rng = random.Random(0)
    p = cfg.stages.propose
    tasks = calls = 0
    start = time.perf_counter()

    def call(prompts: list[str], max_tokens: int, stop: list[str] | None) -> list[str]:
        nonlocal calls
        calls += 1
        r = client.completions.create(model="fake", prompt=prompts, max_tokens=max_tokens,
                                      stop=stop)
        return [c.text for c in sorted(r.choices, key=lambda c: c.index)]

    while time.perf_counter() - start < seconds:
        prompts = [templates["propose"].render(shots=number_shots([
            s.instruction for s in sample_shots(rng, human, [], p.num_shots, 0)]))
            for _ in range(batch)]
        kept = []
        for text in call(prompts, p.max_tokens, p.stop):
            for inst in parse_instructions(text, False).instructions:
                if apply_chain(chain, inst).ok:
                    (d,) = index.check_batch([(f"m{len(index)}", inst)])
                    if d.keep:
                        index.add(f"m{len(index)}", inst)
                        kept.append(inst)
        for i in range(0, len(kept), batch):
            group = kept[i:i + batch]
            labels = call([templates["classify"].render(instruction=t) for t in group], 3, None)
            modes = ["instances_output_first" if parse_classification(a) else
                     "instances_input_first" for a in labels]
            answers = call([templates[m].render(instruction=t) for m, t in zip(
                modes, group, strict=True)], 300, ["\n\nTask:", "\nTask:"])
            for m, a in zip(modes, answers, strict=True):
                parse = parse_output_first if m == "instances_output_first" else \
                    parse_input_first
                tasks += bool(parse(a, False))
    wall = time.perf_counter() - start
    return {"tasks": tasks, "calls": calls, "per_min": tasks / wall * 60, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=60.0,
                    help="about how long each pipeline run should take at its ideal rate")
    ap.add_argument("--caps", default="1,8,32,128")
    args = ap.parse_args()
    caps = [int(c) for c in args.caps.split(",")]
    per_task_guess = 2.6
    rows = []
    with fake_server(latency=args.latency, seed=0) as srv, \
            tempfile.TemporaryDirectory() as tmp:
        seq = sequential_loop(srv.url, args.seconds)
        print(f"sequential loop (one call of 5 prompts at a time): {seq['tasks']} tasks, "
              f"{seq['calls']} calls in {seq['wall_s']:.1f} s = {seq['per_min']:.1f} tasks/min",
              flush=True)
        for cap in caps:
            ideal_guess = 60 * cap / (args.latency * per_task_guess)
            target = max(10, int(ideal_guess * args.seconds / 60))
            work = Path(tmp) / f"cap{cap}"
            work.mkdir()
            r = pipeline_run(srv, cap, target, work)
            per_task_guess = r["per_task"]
            ideal = 60 * cap / (args.latency * r["per_task"])
            rows.append((cap, r, ideal))
            print(f"cap {cap:>3}: {r['tasks']} tasks, {r['requests']} requests "
                  f"(R = {r['per_task']:.2f}/task), peak in flight {r['peak_in_flight']}, "
                  f"working {r['working_per_min']:.1f}/min, steady {r['steady_per_min']:.1f}"
                  f"/min, ideal {ideal:.1f}, wall {r['wall_per_min']:.1f}/min over "
                  f"{r['wall_s']:.0f} s", flush=True)
            print("   CPU s by process: " + ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(r["cpu_s"].items(), key=lambda x: -x[1])),
                flush=True)
            print("   Ray calls by name: " + ", ".join(
                f"{k} {v}" for k, v in sorted(r["calls_by_name"].items(),
                                              key=lambda x: -x[1])[:12]), flush=True)
    print(f"\nlatency {args.latency:.2f} s; ideal = 60 * C / (L * R)")
    print(f"{'in flight':>9} {'R':>5} {'ideal':>8} {'working':>8} {'of ideal':>9} "
          f"{'steady':>8} {'of ideal':>9} {'wall':>8} {'vs sequential':>14} "
          f"{'CPU-ms/task':>12} {'Ray calls/task':>15}")
    for cap, r, ideal in rows:
        print(f"{cap:>9} {r['per_task']:>5.2f} {ideal:>8.1f} {r['working_per_min']:>8.1f} "
              f"{r['working_per_min'] / ideal:>9.0%} {r['steady_per_min']:>8.1f} "
              f"{r['steady_per_min'] / ideal:>9.0%} {r['wall_per_min']:>8.1f} "
              f"{r['working_per_min'] / seq['per_min']:>13.1f}x "
              f"{r['cpu_ms_per_task']:>12.1f} {r['ray_calls'] / r['tasks']:>15.2f}")
    print(f"{'sequential':>9} {seq['per_min']:>10.1f}")


if __name__ == "__main__":
    main()
