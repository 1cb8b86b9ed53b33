"""What a run costs while it waits: every request on an API that takes 10 s, so the run's
processes have nothing to do but wait. Prints their CPU use, as a share of one core, by
process, over a window after start-up.

    .venv/bin/python benchmarks/idle.py [--latency 10] [--warmup 20] [--window 30]

The run is a real `selfinstruct run` on its own local Ray, in its own session, so "the run's
processes" are exactly that session's: the driver, Ray's daemons (GCS, raylet, dashboard
agents, log monitor) and the actors. The fake API server runs outside it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.runs import config, env, session_pids  # noqa: E402
from tests.servers import fake_server  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_process(sid: int) -> dict[int, tuple[str, float]]:
    """(name, CPU seconds so far) of every live process of a session."""
    out = {}
    for pid in session_pids(sid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = cmd[0].decode().rsplit("/", 1)[-1]
        if name.startswith("python") and len(cmd) > 1:
            name = cmd[1].decode().rsplit("/", 1)[-1]
        out[pid] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=10.0,
                    help="longer than --warmup + --window (e.g. 100): no request completes "
                    "in the window, so what is left is the run's pure waiting cost")
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--window", type=float, default=30.0)
    args = ap.parse_args()
    with fake_server(latency=args.latency, seed=0) as srv, \
            tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = config(work, models={"api": {
            "provider": "openai_compatible", "model": "fake", "base_url": f"{srv.url}/v1",
            "timeout_s": args.latency * 3}},
            stages={s: {"model": "api", "max_in_flight_per_actor": 32}
                    for s in ("propose", "classify", "instances")})
        proc = subprocess.Popen(
            [sys.executable, "-m", "actors", "run", str(cfg), "--out", str(work / "run"),
             "--target", "100000", "--no-progress"], cwd=work, env=env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        try:
            time.sleep(args.warmup)
            before = cpu_by_process(proc.pid)
            t0 = time.monotonic()
            time.sleep(args.window)
            after = cpu_by_process(proc.pid)
            wall = time.monotonic() - t0
            requests = srv.stats()["requests"]
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    used: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        used[name] = used.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    total = sum(used.values())
    print(f"API latency {args.latency:.0f} s; {requests} requests sent by the end; window "
          f"{wall:.1f} s after {args.warmup:.0f} s of start-up")
    print(f"the run's processes together: {total:.2f} CPU s = {total / wall:.1%} of one core")
    for name, cpu in sorted(used.items(), key=lambda x: -x[1]):
        if cpu > 0.005:
            print(f"  {name:<40} {cpu:6.2f} s  {cpu / wall:6.1%}")


if __name__ == "__main__":
    main()
