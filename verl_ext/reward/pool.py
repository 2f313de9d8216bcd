"""A pool of grading worker processes with a hard, kill-on-timeout limit per answer.

Why processes started with ``subprocess`` (fork+exec of a fresh interpreter) rather than
``signal.alarm`` or ``multiprocessing``:

* ``signal.alarm`` only works in the main thread, and verl's reward loop calls
  ``compute_score`` from executor threads inside Ray actors;
* an alarm cannot interrupt C code (a big-integer ``9^(9^(9^9))`` holds the GIL until done);
* ``fork`` without ``exec`` from a multi-threaded process (Ray) can deadlock on locks held by
  other threads, and ``spawn`` re-imports the parent's ``__main__``.

Each worker is long-lived (imports sympy/math-verify once, ~0.5 s) and serves one request at a
time. The parent waits at most ``timeout`` seconds for the answer line; if none arrives it
SIGKILLs the worker, records a timeout, and a fresh worker is started on next use. Thread-safe:
any number of threads may call :meth:`GraderPool.grade` concurrently; they queue for a free
worker.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_REPO_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that contains verl_ext/
_STARTUP_TIMEOUT_S = 120.0  # importing sympy on a loaded 2-core machine can be slow


@dataclass
class PoolVerdict:
    correct: bool
    stage: str = "none"
    timed_out: bool = False  # hard kill, or a soft stage limit inside the worker
    killed: bool = False  # the hard limit fired and the worker was killed
    error: str | None = None


class _Worker:
    def __init__(self, max_memory_mb: int, worker_cmd: list[str] | None = None):
        env = dict(os.environ)
        env["PYTHONPATH"] = _REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # one thread per worker: parallelism comes from the number of workers
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = "1"
        if worker_cmd is not None:
            cmd = list(worker_cmd)
        else:
            cmd = [sys.executable, "-u", "-m", "verl_ext.reward.worker"]
            if max_memory_mb > 0:
                cmd += ["--max-memory-mb", str(max_memory_mb)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env, close_fds=True
        )
        self._buf = b""
        self.ready = False
        self.eof = False  # its stdout closed: it exited (maybe not yet reaped, so poll() can lag)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read_line(self, deadline: float) -> bytes | None:
        """One line from the worker's stdout, or None at the deadline or on EOF."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self.eof = True
                return None  # EOF: the worker died
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def wait_ready(self) -> bool:
        if not self.ready:
            line = self._read_line(time.monotonic() + _STARTUP_TIMEOUT_S)
            self.ready = line is not None and json.loads(line).get("ready", False)
        return self.ready

    def request(self, pred: str, gts: list[str], timeout: float, mode: str = "default") -> dict | None:
        """The worker's verdict, or None if it did not answer within ``timeout`` (or died)."""
        msg = json.dumps({"pred": pred, "gts": gts, "budget": timeout, "mode": mode}) + "\n"
        try:
            self.proc.stdin.write(msg.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        line = self._read_line(time.monotonic() + timeout)
        return json.loads(line) if line is not None else None

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


_LIVE_POOLS: "weakref.WeakSet[GraderPool]" = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    # A weak set, not one atexit entry per pool: score_batch creates a pool per call.
    for pool in list(_LIVE_POOLS):
        pool.close()


class GraderPool:
    """``num_workers`` grading processes; :meth:`grade` never takes much longer than ``timeout``
    once a worker is free (plus worker start-up after a kill, which is not charged to the answer)."""

    def __init__(self, num_workers: int = 2, max_memory_mb: int = 4096, worker_cmd: list[str] | None = None):
        """``worker_cmd`` replaces the worker command line (any program speaking the JSON-lines
        protocol of :mod:`verl_ext.reward.worker`); tests use it to simulate a stuck worker."""
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self.num_workers = num_workers
        self.max_memory_mb = max_memory_mb
        self.worker_cmd = worker_cmd
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(num_workers):
            self._idle.put(None)  # a slot; the process is started lazily on first use
        self._lock = threading.Lock()
        self._all: weakref.WeakSet[_Worker] = weakref.WeakSet()
        self._closed = False
        self.stats = {"requests": 0, "timeouts": 0, "kills": 0, "errors": 0, "restarts": 0}
        _LIVE_POOLS.add(self)

    def _bump(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _fresh(self) -> _Worker:
        w = _Worker(self.max_memory_mb, self.worker_cmd)
        with self._lock:
            self._all.add(w)
        return w

    def warm_up(self) -> None:
        """Start every worker now (so start-up time is not mixed into a measurement)."""
        slots = [self._idle.get() for _ in range(self.num_workers)]
        slots = [w if (w is not None and w.alive()) else self._fresh() for w in slots]
        for w in slots:
            w.wait_ready()
            self._idle.put(w)

    def grade(self, pred: str, gts: list[str], timeout: float, mode: str = "default") -> PoolVerdict:
        if self._closed:
            raise RuntimeError("GraderPool is closed")
        self._bump("requests")
        w = self._idle.get()
        try:
            for attempt in range(2):  # one retry if a fresh worker fails to start
                if w is None or not w.alive():
                    if w is not None:
                        w.kill()
                    w = self._fresh()
                if w.wait_ready():
                    break
                logger.warning("reward worker failed to start (attempt %d)", attempt + 1)
                w.kill()
                w = None
            else:
                self._bump("errors")
                return PoolVerdict(False, error="worker failed to start")
            out = w.request(pred, gts, timeout, mode)
            if out is None:
                # Hard limit: the worker is stuck (or dead). Kill it; the slot restarts lazily.
                died = w.eof or not w.alive()
                w.kill()
                w = None
                self._bump("restarts")
                if died:
                    self._bump("errors")
                    logger.warning("reward worker died while grading pred=%r", pred[:200])
                    return PoolVerdict(False, error="worker died")
                self._bump("kills")
                self._bump("timeouts")
                logger.warning("reward grading hit the hard %.1fs timeout; scored 0. pred=%r gt=%r",
                               timeout, pred[:200], [g[:200] for g in gts])
                return PoolVerdict(False, timed_out=True, killed=True)
            if out.get("timed_out"):
                self._bump("timeouts")
            if out.get("error"):
                self._bump("errors")
            return PoolVerdict(bool(out["correct"]), out.get("stage", "none"), bool(out.get("timed_out")),
                               False, out.get("error"))
        finally:
            self._idle.put(w)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers = list(self._all)
        for w in workers:
            w.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
