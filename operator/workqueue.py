"""A coalescing work queue: every watched change becomes "reconcile this object", at most once at a time.

Like client-go's workqueue. kopf's event handlers (:mod:`codeground.operator.handlers`) only
``add(key)``; a few worker tasks take keys and run the reconcile for it. A key added many times
before a worker takes it runs once (event storms coalesce); a key added while it is being reconciled
runs again right after (nothing is lost); one key never runs on two workers at once (the per-object
serialisation that makes plain status patches safe). ``add(key, delay)`` schedules clock-driven
work (retry backoff, TTL). A reconcile that raises is retried with an exponential backoff per key.

What it does not guarantee: anything across restarts (it is memory only; the watch's initial
listing re-adds every object after a restart) or fairness beyond FIFO.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from . import metrics

log = logging.getLogger(__name__)
Key = tuple[str, str, str]  # (kind, namespace, name)


@dataclass
class Outcome:
    """What a reconcile asks of the queue: run me again after ``requeue_after`` s, and poke ``also``."""

    requeue_after: float | None = None
    also: list[Key] = field(default_factory=list)


class WorkQueue:
    def __init__(self, reconcile: Callable[[Key], Awaitable[Outcome]], workers: int = 4,
                 max_backoff: float = 60.0):
        self._reconcile = reconcile
        self._workers = workers
        self._max_backoff = max_backoff
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._active: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._timers: dict[Hashable, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[Hashable, int] = {}
        self._tasks: list[asyncio.Task] = []
        self.known: set[Key] = set()

    def add(self, key: Key, delay: float = 0.0) -> None:
        """Reconcile ``key`` after ``delay`` seconds (0: as soon as a worker is free)."""
        self.known.add(key)
        if delay > 0:
            due = time.monotonic() + delay
            old = self._timers.get(key)
            if old and old[0] <= due:
                return
            if old:
                old[1].cancel()
            handle = asyncio.get_running_loop().call_later(delay, self._fire, key)
            self._timers[key] = (due, handle)
            return
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)
            metrics.QUEUE_DEPTH.set(len(self._queued))

    def forget(self, key: Key) -> None:
        """The object is gone: drop its timers and failure count."""
        self.known.discard(key)
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer:
            timer[1].cancel()

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i), name=f"reconcile-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, handle in self._timers.values():
            handle.cancel()

    async def _worker(self, index: int) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            metrics.QUEUE_DEPTH.set(len(self._queued))
            self._active.add(key)
            kind = key[0]
            started = time.perf_counter()
            try:
                outcome = await self._reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                delay = min(self._max_backoff, 0.5 * 2 ** (n - 1))
                metrics.RECONCILE_ERRORS.labels(kind=kind, error=type(exc).__name__).inc()
                metrics.RECONCILES.labels(kind=kind, result="error").inc()
                log.warning("reconcile %s/%s/%s failed (%s: %s); retrying in %.1fs", *key, type(exc).__name__, exc, delay)
                outcome = Outcome(requeue_after=delay)
            else:
                self._failures.pop(key, None)
                metrics.RECONCILES.labels(kind=kind, result="ok").inc()
            finally:
                metrics.RECONCILE_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            if outcome.requeue_after is not None:
                self.add(key, max(0.05, outcome.requeue_after))
            for other in outcome.also:
                self.add(other)
