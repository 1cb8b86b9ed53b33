"""When the Ray node under the driver is lost, the run ends at once and says so.

Ray does not tell a driver that its own node is gone: its raylet dead (killed, or marked dead
after missed heartbeats), calls fail one by one over some 15 s while the raylet's last log lines
are printed on the terminal; its GCS dead, the driver's process is killed after 60 s, with
run.json left saying `running`. So the driver watches the processes itself (`NodeWatch`):
within one turn of its watch loop it stops, ends what is left of that Ray, waits for the
pool's process (the run directory's writer) to be gone, and the files tell the rest.

`ray_output_apart` keeps Ray's own output (its C++ logs, the errors it pushes to the driver)
off the terminal of `selfinstruct run`, in the run's ray.log.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

WHAT = {"raylet": "raylet", "gcs_server": "GCS"}


def exit_status(code: int) -> str:
    """A Popen return code as a person reads it: 'killed by SIGKILL' or 'exit status 1'."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _stat(pid: int) -> tuple[str, int]:
    """A process's state letter and parent pid, from /proc (OSError if it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def running(pid: int) -> bool:
    """Alive and not a zombie (Linux /proc)."""
    try:
        return _stat(pid)[0] != "Z"
    except (OSError, IndexError, ValueError):
        return False


def node_processes(raylet_pid: int) -> set[int]:
    """The running processes of a raylet (Linux /proc; elsewhere none): its children (the
    agents and the workers) and, once they have another parent, its workers, which Ray
    starts with RAY_RAYLET_PID set."""
    needle = f"RAY_RAYLET_PID={raylet_pid}".encode()
    found = set()
    with contextlib.suppress(OSError):
        for entry in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, IndexError, ValueError):
                state, parent = _stat(int(entry))
                if state != "Z" and (parent == raylet_pid or needle in Path(
                        f"/proc/{entry}/environ").read_bytes().split(b"\0")):
                    found.add(int(entry))
    return found


def _peer_pid(path: str) -> int | None:
    """The pid of the process listening on a Unix socket (Linux), or None."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0]
    except (OSError, AttributeError):
        return None


class NodeWatch:
    """The Ray processes this driver cannot run without: the raylet of its node and, for a
    Ray this driver started, the GCS. Checking costs a system call, not a Ray call."""

    def __init__(self) -> None:
        # Ray has no public API for the local node's processes; ray.init keeps them here.
        node = ray._private.worker._global_node
        self._started = {name: info.process for name in WHAT
                         for info in node.all_processes.get(name, [])}
        raylet = self._started.get("raylet")
        self._raylet = raylet.pid if raylet else _peer_pid(node.raylet_socket_name)
        self._id = ray.get_runtime_context().get_node_id()
        self.reason = ""

    def lost(self, ask: bool = False) -> str:
        """Why the node is gone ('' while it is up); once lost, always the first reason.
        With `ask`, for when an actor or a call has just failed, also one call to the GCS:
        has it marked the node dead (missed heartbeats), which a raylet too busy or frozen
        to hear of it outlives?"""
        if not self.reason:
            self.reason = self._check() or (self._marked_dead() if ask else "")
        return self.reason

    def _marked_dead(self) -> str:
        try:
            node = next((n for n in ray.nodes() if n["NodeID"] == self._id), None)
        except Exception:  # noqa: BLE001 - the GCS cannot say; the process checks still do
            return ""
        if node is None or node["Alive"]:
            return ""
        why = (node.get("DeathReasonMessage") or "no reason given").split(". ")[0][:200]
        return f"Ray lost this machine's node: the GCS marked it dead ({why})"

    def _check(self) -> str:
        for name, proc in self._started.items():
            if (code := proc.poll()) is not None:
                return f"Ray lost this machine's node: its {WHAT[name]} stopped " \
                       f"({exit_status(code)})"
        if "raylet" not in self._started and self._raylet and not running(self._raylet):
            return f"Ray lost this machine's node: its raylet (pid {self._raylet}) is gone"
        return ""

    def stop(self, wait_s: float = 10.0) -> None:
        """End what is left of the node: the Ray this driver started, and the raylet's
        workers and agents, killed as a crash would (the run directory is built for that),
        so that none writes the run directory once run.json is written (the pool does) or
        lingers. A raylet this driver did not start and that still runs (marked dead while
        frozen) is left to end its workers itself. Ray's own shutdown, which runs at exit,
        would then wait 5-15 s on the dead processes, and the interpreter crashes on its way
        out without it: this process ends with os._exit."""
        _output.lost = True
        atexit.register(_end_now)
        if not self._started and self._raylet and running(self._raylet):
            return
        doomed = node_processes(self._raylet) if self._raylet else set()
        if self._started:
            ray._private.worker._global_node.kill_all_processes(check_alive=False,
                                                                allow_graceful=False)
        deadline = time.time() + wait_s
        while time.time() < deadline:
            doomed = {p for p in doomed if running(p)} | (
                node_processes(self._raylet) if self._raylet else set())
            if not doomed:
                return
            for pid in doomed:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)


def _end_now() -> None:
    """At exit, before Ray's own handler (handlers run last registered first)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


class _RayOutput:
    """Ray's output apart from ours: file descriptors 1 and 2 (where Ray's C++ logs and the
    errors it pushes to the driver are written) go to a file; sys.stderr (our log lines, the
    progress bar, tracebacks) stays on the terminal."""

    def __init__(self) -> None:
        self.armed = self.lost = False
        self.saved: tuple[int, int, Any] | None = None

    def to(self, path: Path) -> None:
        if not self.armed or self.saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2), sys.stderr)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stderr = open(os.dup(self.saved[1]), "w", buffering=1,  # noqa: SIM115
                          encoding=self.saved[2].encoding, errors="backslashreplace")

    def back(self) -> None:
        if self.saved:
            out, err, stderr = self.saved
            sys.stdout.flush()
            sys.stderr.close()
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.close(out)
            os.close(err)
            sys.stderr = stderr
            self.saved = None


_output = _RayOutput()


def send_ray_output(path: Path) -> None:
    """From now on, Ray's own output goes to `path`, if the caller asked for that with
    `ray_output_apart` (the CLI does; a test calling run_pipeline keeps its descriptors)."""
    _output.to(path)


@contextlib.contextmanager
def ray_output_apart() -> Iterator[None]:
    """For `selfinstruct run`: let the run send Ray's output to its ray.log; on the way out,
    end Ray's output first (shut it down, or if its node was lost, stop the thread that prints
    the errors it pushes), so nothing of Ray's reaches the terminal once it is given back."""
    _output.armed = True
    try:
        yield
    finally:
        try:
            if _output.saved and ray.is_initialized():
                if _output.lost:
                    worker = ray._private.worker.global_worker
                    worker.threads_stopped.set()
                    worker.listener_thread.join(timeout=2.0)
                else:
                    ray.shutdown()
        finally:
            _output.armed = False
            _output.back()
