"""What a run costs while it waits: every request on an API slower than the measuring window,
so the run's processes have nothing to do but wait. Prints their CPU use, as a share of one
core, by process, over a window after start-up.

    .venv/bin/python benchmarks/idle.py [--latency 10] [--warmup 30] [--window 30]
        [--proposers N] [--instancers N] [--env KEY=VALUE ...] [--bare N]

The run is a real `selfinstruct run` on its own local Ray, in its own session, so "the run's
processes" are exactly that session's: the driver, Ray's daemons (GCS, raylet, dashboard
agents, log monitor) and the actors. The fake API server runs outside it. --proposers and
--instancers override the config's; --env sets a variable for the run's processes (a Ray
knob, `RAY_<name>`, say); --bare N measures a local Ray with N idle async actors and nothing
of ours instead, the floor any Ray application pays.

Each Ray worker process (an actor) costs about the same while idle, whatever it runs: Ray's
core worker wakes its main thread every 10 ms to check for signals (`CoreWorker.CheckSignal`,
a period Ray does not let us set), so the count of actors is what a run controls.
"""

from __future__ import annotations

import argparse
import contextlib
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

BARE = """
import asyncio, time, ray
ray.init(address="local", include_dashboard=False, log_to_driver=False)
@ray.remote(num_cpus=0)
class Idle:
    async def wait(self):
        await asyncio.Event().wait()
actors = [Idle.remote() for _ in range({n})]
waits = [a.wait.remote() for a in actors]
time.sleep(1e6)
"""


def process_name(cmd: list[str]) -> str:
    """What a process runs: a Ray worker's actor (`ray::Pool`), a Python script's file
    (`log_monitor.py`), `python -m MODULE`, `python -c`, or the program (`raylet`)."""
    words = [w for w in cmd if w]
    name = words[0].rsplit("/", 1)[-1] if words else "?"
    if name.startswith("python"):
        args = [a for a in words[1:] if a != "-u"]
        if args[:1] in (["-m"], ["-c"]):
            return f"python {args[0]} {args[1]}" if args[0] == "-m" else "python -c"
        script = next((a for a in args if not a.startswith("-")), name)
        return script.rsplit("/", 1)[-1]
    return name.split(".", 1)[0] if name.startswith("ray::") else name


def cpu_by_process(sid: int) -> dict[int, tuple[str, float]]:
    """(name, CPU seconds so far) of every live process of a session."""
    out = {}
    for pid in session_pids(sid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[pid] = (process_name(cmd), (int(fields[11]) + int(fields[12])) / TICK)
    return out


def measure(command: list[str], cwd: Path, environ: dict[str, str], warmup: float,
            window: float) -> tuple[dict[int, tuple[str, float]], dict[int, tuple[str, float]],
                                    float]:
    """Start `command` in its own session, let it start up, read its processes' CPU before
    and after the window; (before, after, window's length). Ends the session with SIGINT."""
    proc = subprocess.Popen(command, cwd=cwd, env=environ, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(warmup)
        before = cpu_by_process(proc.pid)
        t0 = time.monotonic()
        time.sleep(window)
        after = cpu_by_process(proc.pid)
        wall = time.monotonic() - t0
        if proc.poll() is not None:
            raise SystemExit(f"it ended before the window did:\n{proc.stderr.read()[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # the session may be gone already
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    return before, after, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=10.0,
                    help="longer than --warmup + --window (e.g. 200): no request completes "
                    "in the window, so what is left is the run's pure waiting cost")
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="seconds left to start-up (on a loaded machine Ray's takes 20 s)")
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--proposers", type=int, help="actors.proposers (default: the config's)")
    ap.add_argument("--instancers", type=int, help="actors.instancers (default: the config's)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable for the measured processes (repeatable)")
    ap.add_argument("--bare", type=int, metavar="N",
                    help="measure a local Ray with N idle async actors instead of a run")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.env)
    actors = {k: getattr(args, k) for k in ("proposers", "instancers")
              if getattr(args, k) is not None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.bare is not None:
            before, after, wall = measure(
                [sys.executable, "-c", BARE.format(n=args.bare)], work, env(**extra),
                args.warmup, args.window)
            what = f"a bare local Ray with {args.bare} idle async actors"
        else:
            with fake_server(latency=args.latency, seed=0) as srv:
                cfg = config(work, models={"api": {
                    "provider": "openai_compatible", "model": "fake",
                    "base_url": f"{srv.url}/v1", "timeout_s": args.latency * 3}},
                    stages={s: {"model": "api", "max_in_flight_per_actor": 32}
                            for s in ("propose", "classify", "instances")}, actors=actors)
                before, after, wall = measure(
                    [sys.executable, "-m", "actors", "run", str(cfg), "--out",
                     str(work / "run"), "--target", "100000", "--no-progress"], work,
                    env(**extra), args.warmup, args.window)
                what = (f"API latency {args.latency:.0f} s, {srv.stats()['requests']} requests "
                        f"sent by the end, actors {actors or 'as configured'}")
    used: dict[str, float] = {}
    count: dict[str, int] = {}
    for pid, (name, cpu) in after.items():
        used[name] = used.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
        count[name] = count.get(name, 0) + 1
    total = sum(used.values())
    print(f"{what}{'; ' + ' '.join(args.env) if args.env else ''}; window {wall:.1f} s after "
          f"{args.warmup:.0f} s of start-up")
    print(f"the processes together: {total:.2f} CPU s = {total / wall:.1%} of one core")
    for name, cpu in sorted(used.items(), key=lambda x: -x[1]):
        print(f"  {name:<32} x{count[name]:<2} {cpu:6.2f} s  {cpu / wall:6.1%}")


if __name__ == "__main__":
    main()
