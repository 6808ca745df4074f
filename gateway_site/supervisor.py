"""The production server: one listening socket, N ASGI workers sharing it, kept alive.

`manage.py serve` (this module) binds the socket once and starts N worker processes
(`gateway_site/uvicorn_worker.py`) that serve on the
inherited file descriptor (`--fd`); the kernel hands each new connection to one of them. The
supervisor

- restarts a worker that dies (at once if it had been up a while, with a growing pause if it
  keeps dying at start-up, and gives up after `MAX_QUICK_FAILURES` such deaths in a row);
- on SIGTERM or SIGINT closes its copy of the socket and forwards SIGTERM to every worker, which
  drains gracefully (docs/deployment.md), then waits for them; a worker still alive
  `KILL_AFTER_SECONDS` past the grace period is killed;
- on SIGHUP starts a fresh set of workers (new code, new settings) and, once each has reported
  itself ready (a line with its pid on the ready pipe), drains the old ones: a restart without
  refusing or stalling a connection. If a new worker dies before it serves, the reload is
  abandoned and the old workers go on serving.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

logger = logging.getLogger("gateway_site.supervisor")

# A worker that dies within this many seconds of starting counts as a start-up failure.
QUICK_FAILURE_SECONDS = 10.0
MAX_QUICK_FAILURES = 5
MAX_RESTART_PAUSE_SECONDS = 30.0
# Past the grace period plus this, a worker that has not exited is killed.
KILL_AFTER_SECONDS = 10.0
# How often a worker started by the supervisor checks that its supervisor is still alive.
PARENT_CHECK_SECONDS = 1.0


# --- the worker's side (gateway_site/uvicorn_worker.py; worker_imports_skip and worker_ready also
# gateway_site/worker.py, the demo's daphne worker) -----------------------------------------------
worker_logger = logging.getLogger("gateway_site.worker")


def supervisor_pid() -> int:
    """The supervisor that started this worker, or 0 when it was started by hand."""
    return int(os.environ.get("GATEWAY_SUPERVISOR_PID") or 0)


def supervisor_gone(pid: int) -> bool:
    """True (and logged) once the worker's supervisor `pid` has died: do not serve on as an orphan."""
    if os.getppid() == pid:
        return False
    worker_logger.warning("supervisor %s is gone; stopping", pid)
    return True


# Optional imports that libraries make at import time and that a web worker never uses: DRF's
# `requests` (for its test client; 4.4 MB of a worker's heap), and `rich`, which httpx's
# command-line client needs (httpx loads that client when rich, pygments and click are installed;
# 2.4 MB, rich the largest part; click and pygments are loaded by others anyway). A worker starts
# with them skipped (an ImportError, which the libraries expect) and allows them again once it is
# loaded (`worker_ready`), so a later import of them works as usual.
WORKER_SKIPPED_IMPORTS = ("requests", "rich")


def worker_imports_skip() -> None:
    """First thing in a worker process: the optional imports above fail while it loads."""
    for name in WORKER_SKIPPED_IMPORTS:
        sys.modules.setdefault(name, None)


def _worker_imports_allow() -> None:
    for name in WORKER_SKIPPED_IMPORTS:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


def worker_ready() -> None:
    """Tell the supervisor this worker serves (it waits for the line on a reload)."""
    _heap_freeze()
    _worker_imports_allow()
    if os.environ.get("GATEWAY_READY_FD"):
        os.write(int(os.environ["GATEWAY_READY_FD"]), f"{os.getpid()}\n".encode())
    worker_logger.info("worker %s ready", os.getpid())


def _heap_freeze() -> None:
    """Load what a first request would (the URLconf, the token tables), then take everything
    loaded so far out of the cyclic garbage collector's scans (`gc.freeze`). A worker's heap is
    mostly modules, settings and tables that live as long as the worker; every full collection
    walked all of them again (py-spy: 5-7 % of a worker's CPU under load, docs/performance.md)."""
    from django.urls import get_resolver

    from accounting import tokens

    get_resolver().url_patterns  # imports every view module
    tokens.text_tokens("warm")
    gc.collect()
    gc.freeze()


@dataclass
class WorkerProcess:
    slot: int
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    retiring: bool = False  # told to stop: its exit is not restarted
    ready: bool = False  # serving: it wrote its pid to the ready pipe


def listening_socket(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    if ":" in host:
        raise ValueError("Bind an IPv4 address (daphne adopts inherited sockets as IPv4).")
    sock = socket.create_server((host, port), backlog=backlog)  # SO_REUSEADDR on POSIX
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, *, sock: socket.socket, workers: int, worker_args: list[str], grace: float, env: dict,
                 on_exit=None):
        self.on_exit = on_exit  # called with the pid of each worker that has exited
        self.sock = sock
        self.size = workers
        self.worker_args = worker_args
        self.grace = grace
        self.env = {**env, "GATEWAY_SUPERVISOR_PID": str(os.getpid())}
        self.workers: list[WorkerProcess] = []
        self.pending: dict[int, float] = {}  # slot -> when to restart it
        self.quick_failures = 0
        self.stopping = False
        self.replaced: list[WorkerProcess] = []  # old workers to drain once the new ones are ready
        self.ready_read, self.ready_write = os.pipe()
        self.env["GATEWAY_READY_FD"] = str(self.ready_write)

    # --- processes ---------------------------------------------------------------------------------
    def spawn(self, slot: int) -> None:
        fd = self.sock.fileno()
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway_site.uvicorn_worker", "--fd", str(fd), *self.worker_args],
            env=self.env,
            pass_fds=(fd, self.ready_write),
        )
        self.workers.append(WorkerProcess(slot=slot, process=process))
        logger.info("worker %s started (slot %s)", process.pid, slot)

    def reap(self) -> None:
        for worker in list(self.workers):
            code = worker.process.poll()
            if code is None:
                continue
            self.workers.remove(worker)
            if self.on_exit is not None:
                self.on_exit(worker.process.pid)
            if worker.retiring or self.stopping:
                logger.info("worker %s exited (%s)", worker.process.pid, code)
                continue
            if self.replaced and not worker.ready:
                self.reload_abort(worker, code)
                continue
            lived = time.monotonic() - worker.started
            logger.error("worker %s died (status %s) after %.1fs", worker.process.pid, code, lived)
            self.quick_failures = self.quick_failures + 1 if lived < QUICK_FAILURE_SECONDS else 0
            pause = 0.0 if not self.quick_failures else min(2.0 ** self.quick_failures, MAX_RESTART_PAUSE_SECONDS)
            self.pending[worker.slot] = time.monotonic() + pause

    def restart_due(self) -> None:
        now = time.monotonic()
        for slot, when in list(self.pending.items()):
            if when <= now:
                del self.pending[slot]
                self.spawn(slot)

    def reload(self) -> None:
        """SIGHUP: new workers first; the old ones drain once the new ones serve (`ready_seen`)."""
        old = [worker for worker in self.workers if not worker.retiring]
        logger.info("reloading: starting %d new workers, then draining %d", self.size, len(old))
        for worker in old:
            worker.retiring = True  # a death from now on is not restarted: the new set covers it
        self.replaced.extend(old)
        for slot in range(self.size):
            self.spawn(slot)

    def reload_abort(self, failed: WorkerProcess, code: int) -> None:
        """A new worker died before serving (broken code or settings): keep the old ones."""
        logger.error(
            "reload failed: new worker %s died (status %s) before serving; the old workers stay",
            failed.process.pid, code,
        )
        for worker in self.workers:
            if worker in self.replaced:
                worker.retiring = False
            elif worker.process.poll() is None:
                worker.retiring = True
                worker.process.send_signal(signal.SIGTERM)
        self.replaced = []

    def ready_seen(self, data: bytes) -> None:
        pids = {int(pid) for pid in data.split()}
        for worker in self.workers:
            if worker.process.pid in pids:
                worker.ready = True
        if self.replaced and all(w.ready for w in self.workers if w not in self.replaced):
            logger.info("new workers ready: draining %d old ones", len(self.replaced))
            for worker in self.replaced:
                if worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
            self.replaced = []

    # --- the loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(wakeup_write, False)
        signal.set_wakeup_fd(wakeup_write)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, lambda *_: None)  # the wakeup pipe carries the signal number
        for slot in range(self.size):
            self.spawn(slot)
        try:
            code = self._loop(wakeup_read)
        finally:
            signal.set_wakeup_fd(-1)
            for fd in (wakeup_read, wakeup_write, self.ready_read, self.ready_write):
                os.close(fd)
        return code

    def _loop(self, wakeup_read: int) -> int:
        while True:
            timeout = max(min(self.pending.values()) - time.monotonic(), 0) if self.pending else None
            ready, _, _ = select.select([wakeup_read, self.ready_read], [], [], timeout)
            signals = os.read(wakeup_read, 64) if wakeup_read in ready else b""
            if self.ready_read in ready:
                self.ready_seen(os.read(self.ready_read, 4096))
            if signal.SIGTERM in signals or signal.SIGINT in signals:
                return self.stop()
            if signal.SIGHUP in signals:
                self.reload()
            self.reap()
            if self.quick_failures >= MAX_QUICK_FAILURES:
                logger.critical("workers keep dying at start-up; giving up")
                self.stop()
                return 1
            self.restart_due()

    def stop(self) -> int:
        """Close the socket (new connections are refused once every worker has let go of it too),
        let every worker drain, kill those past the deadline."""
        self.stopping = True
        self.pending.clear()
        self.sock.close()
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + KILL_AFTER_SECONDS
        for worker in self.workers:
            try:
                worker.process.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                logger.error("worker %s did not stop in time; killing it", worker.process.pid)
                worker.process.kill()
                worker.process.wait()
            if self.on_exit is not None:
                self.on_exit(worker.process.pid)
        logger.info("all workers stopped")
        return 0
