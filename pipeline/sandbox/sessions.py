"""Sessions of one server: create (from the warm pool), execute, reset, close, idle reaping, the cap.

Who calls it: the HTTP handlers in `service.py`, one :class:`SessionManager` per app. This is where a
worker's raw reply becomes the API's reply: timeouts and dead interpreters become ``timeout`` /
``killed`` with the interpreter replaced (state lost, said in the reply), and output is cut to
`max_output_bytes` with a marker (``output_truncated``).

What it does not guarantee: that a session survives the server (sessions live in this process's memory;
a restarted pod has none -- clients see 404 and raise SandboxInfraError); fairness between sessions
beyond one cell at a time per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from codeground.pipeline.errors import CodegroundError

from .config import SandboxConfig
from .interpreter import Interpreter, InterpreterDied, InterpreterTimeout
from .metrics import SandboxMetrics
from .pool import WarmPool

log = logging.getLogger(__name__)

TRUNCATION_MARKER = "\n[output truncated: only the first {shown} bytes are shown]\n"


class SessionLimitError(CodegroundError):
    """The server already holds `max_sessions` sessions (HTTP 429)."""


class SessionNotFoundError(CodegroundError):
    """No such session on this server: never created, closed, reaped, or the server restarted (HTTP 404)."""


@dataclass
class Session:
    id: str
    interpreter: Interpreter
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    calls: int = 0
    restarts: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "idle_s": round(time.monotonic() - self.last_used, 3),
                "calls": self.calls, "restarts": self.restarts, "busy": self.lock.locked()}


def _cut(text: str, limit: int) -> tuple[str, int]:
    """Cut `text` to at most `limit` UTF-8 bytes; returns the text and how many bytes were dropped."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text, 0
    return data[:limit].decode("utf-8", "ignore"), len(data) - limit


def shape_reply(raw: dict[str, Any], max_output: int, duration: float) -> dict[str, Any]:
    """A worker's reply as the API's reply: byte-exact output cap, marker, status."""
    stdout, cut_out = _cut(str(raw.get("stdout") or ""), max_output)
    stderr, cut_err = _cut(str(raw.get("stderr") or ""), max(0, max_output - len(stdout.encode())))
    dropped = int(raw.get("dropped_bytes") or 0) + cut_out + cut_err
    status = raw.get("status", "error")
    if dropped:
        shown = len(stdout.encode()) + len(stderr.encode())
        stdout += TRUNCATION_MARKER.format(shown=shown)
        if status == "ok":
            status = "output_truncated"
    return {
        "status": status if status in ("ok", "error", "output_truncated") else "error",
        "stdout": stdout,
        "stderr": stderr,
        "error_type": raw.get("error_type"),
        "error_message": raw.get("error_message"),
        "traceback": raw.get("traceback"),
        "duration_s": round(duration, 6),
        "truncated": bool(dropped),
        "restarted": False,
    }


def _restart_reply(status: str, error_type: str, message: str, duration: float) -> dict[str, Any]:
    return {"status": status, "stdout": "", "stderr": "", "error_type": error_type, "error_message": message,
            "traceback": None, "duration_s": round(duration, 6), "truncated": False, "restarted": True}


class SessionManager:
    def __init__(self, config: SandboxConfig, pool: WarmPool, metrics: SandboxMetrics):
        self.config = config
        self.pool = pool
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._pending = 0  # creations in flight count against the cap too
        self._teardowns: set[asyncio.Task[None]] = set()
        self._cells = asyncio.Semaphore(config.parallel_cells())  # cells running at once

    def start(self) -> None:
        self._reaper = asyncio.ensure_future(self._reap_loop())

    def get(self, session_id: str) -> Session:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise SessionNotFoundError(f"no session {session_id!r} on this server") from None

    async def create(self) -> tuple[Session, bool]:
        if len(self.sessions) + self._pending >= self.config.max_sessions:
            self.metrics.sessions_rejected.inc()
            raise SessionLimitError(f"server full: {self.config.max_sessions} sessions open")
        self._pending += 1
        try:
            interp, warm = await self.pool.acquire()
        finally:
            self._pending -= 1
        session = Session(id=secrets.token_hex(12), interpreter=interp)
        self.sessions[session.id] = session
        self.metrics.sessions_created.labels(warm=str(warm).lower()).inc()
        self.metrics.sessions_open.set(len(self.sessions))
        return session, warm

    async def execute(self, session_id: str, code: str, timeout: float | None) -> dict[str, Any]:
        session = self.get(session_id)
        limit = self.config.timeout_seconds if timeout is None else min(float(timeout), self.config.timeout_seconds)
        async with session.lock:
            if self.sessions.get(session_id) is not session:
                raise SessionNotFoundError(f"session {session_id!r} was closed")
            session.calls += 1
            try:
                async with self._cells:  # queued cells wait here, outside their timeout
                    t0 = time.monotonic()
                    raw = await session.interpreter.execute(code, limit, self.config.max_output_bytes)
                reply = shape_reply(raw, self.config.max_output_bytes, time.monotonic() - t0)
            except InterpreterTimeout:
                await self._replace(session, "timeout")
                reply = _restart_reply(
                    "timeout", "TimeoutError",
                    f"the cell ran longer than {limit:g}s and was stopped; the session was restarted, "
                    "so all variables, imports and files from earlier cells are gone", time.monotonic() - t0)
            except InterpreterDied as e:
                await self._replace(session, "killed")
                how = f"exit status {e.returncode}" if e.returncode is not None else str(e)
                reply = _restart_reply(
                    "killed", "InterpreterKilled",
                    f"the interpreter was killed ({how}; e.g. it exited, was signalled, or ran out of resources); "
                    "the session was restarted, so all variables, imports and files from earlier cells are gone",
                    time.monotonic() - t0)
            session.last_used = time.monotonic()
        self.metrics.executions.labels(status=reply["status"]).inc()
        self.metrics.execute_seconds.observe(reply["duration_s"])
        return reply

    async def _replace(self, session: Session, reason: str) -> None:
        old = session.interpreter
        task = asyncio.ensure_future(old.kill())  # tear-down in the background; the reply need not wait
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)
        session.interpreter, _ = await self.pool.acquire()
        session.restarts += 1
        self.metrics.restarts.labels(reason=reason).inc()

    async def reset(self, session_id: str) -> None:
        """Fresh interpreter (and scratch dir) under the same session id."""
        session = self.get(session_id)
        async with session.lock:
            await self._replace(session, "reset")
            session.last_used = time.monotonic()

    async def close(self, session_id: str, reason: str = "closed") -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise SessionNotFoundError(f"no session {session_id!r} on this server")
        self.metrics.sessions_open.set(len(self.sessions))
        self.metrics.sessions_closed.labels(reason=reason).inc()
        await session.interpreter.close()

    def list(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.sessions.values()]

    async def reap_idle(self) -> int:
        now = time.monotonic()
        idle = [s.id for s in self.sessions.values()
                if not s.lock.locked() and now - s.last_used > self.config.session_idle_seconds]
        for sid in idle:
            log.info("closing idle session %s", sid)
            with contextlib.suppress(SessionNotFoundError):
                await self.close(sid, reason="idle")
        return len(idle)

    async def _reap_loop(self) -> None:
        period = min(30.0, max(0.2, self.config.session_idle_seconds / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.reap_idle()
            except Exception:  # the reaper must never die
                log.exception("idle reaper failed")

    async def close_all(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        await asyncio.gather(*(self.close(sid, reason="shutdown") for sid in list(self.sessions)),
                             return_exceptions=True)
