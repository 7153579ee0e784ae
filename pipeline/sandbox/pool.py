"""Warm pool: interpreters booted ahead of time so creating a session costs milliseconds.

Who calls it: the session manager takes an interpreter for every new session, reset and restart
(`acquire`); the service starts and closes the pool with the app. A background task keeps `size`
interpreters ready, booting at most `concurrency` at once (booting a gVisor sandbox is CPU-heavy).

What it does not guarantee: a warm interpreter when sessions are created faster than sandboxes boot --
`acquire` then boots one on the spot (hundreds of milliseconds, reported as ``warm=False``), queued
behind the boots already running (at most `concurrency` at once).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable

from codeground.pipeline.errors import CodegroundError

from .interpreter import Interpreter, InterpreterStartError
from .runsc import LaunchSpec

log = logging.getLogger(__name__)


class WarmPool:
    """A queue of ready interpreters, refilled in the background."""

    def __init__(self, spec_factory: Callable[[], LaunchSpec], size: int, concurrency: int = 2,
                 on_boot: Callable[[float, bool], None] | None = None):
        self._spec_factory = spec_factory
        self.size = size
        self._ready: collections.deque[Interpreter] = collections.deque()
        self._booting = 0
        self._sem = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._on_boot = on_boot or (lambda seconds, ok: None)
        self.last_error: str | None = None
        self.boots_ok = 0
        self.boots_failed = 0

    @property
    def ready(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._refill_loop())

    async def boot(self) -> Interpreter:
        """Boot one interpreter now (not from the pool); records success/failure for /readyz."""
        t0 = time.monotonic()
        try:
            try:
                spec = self._spec_factory()
            except CodegroundError as e:
                raise InterpreterStartError(str(e)) from None
            interp = await Interpreter.start(spec)
        except InterpreterStartError as e:
            self.boots_failed += 1
            self.last_error = str(e)
            self._on_boot(time.monotonic() - t0, False)
            raise
        self.boots_ok += 1
        self.last_error = None
        self._on_boot(time.monotonic() - t0, True)
        return interp

    async def acquire(self) -> tuple[Interpreter, bool]:
        """A ready interpreter and whether it came warm from the pool.

        With the pool empty it boots one, but never more than ``concurrency`` boots run at once
        (refills included): 44 sandboxes booting together on 2 cores starved the cells already
        running, and trivial ones hit their timeout. A waiter takes a warm interpreter if one lands first.
        """
        while True:
            while self._ready:
                interp = self._ready.popleft()
                self._wake.set()
                if interp.alive:
                    return interp, True
                await interp.kill()
            self._wake.set()
            async with self._sem:
                if not self._ready:
                    return await self.boot(), False

    async def _boot_one(self) -> None:
        try:
            async with self._sem:
                if self._closed:
                    return
                interp = await self.boot()
        except Exception as e:  # the refill loop must survive anything; never spin on a broken runtime
            log.error("warm pool: %s", e)
            await asyncio.sleep(2.0)
            return
        finally:
            self._booting -= 1
            self._wake.set()
        if self._closed:
            await interp.kill()
        else:
            self._ready.append(interp)

    async def _refill_loop(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        while not self._closed:
            while len(self._ready) + self._booting < self.size and not self._closed:
                self._booting += 1
                task = asyncio.ensure_future(self._boot_one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            self._wake.clear()
            await self._wake.wait()
        for task in list(tasks):
            with contextlib.suppress(BaseException):
                await task

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 30)
        while self._ready:
            await self._ready.popleft().kill()
