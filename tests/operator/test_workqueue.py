"""The work queue: events coalesce, one object never reconciles twice at once, failures retry."""

from __future__ import annotations

import asyncio

from codeground.operator.workqueue import Outcome, WorkQueue


async def test_adds_coalesce_and_a_key_never_runs_concurrently():
    running: set = set()
    calls: list = []
    overlap = []

    async def reconcile(key):
        if key in running:
            overlap.append(key)
        running.add(key)
        calls.append(key)
        await asyncio.sleep(0.05)
        running.discard(key)
        return Outcome()

    q = WorkQueue(reconcile, workers=4)
    q.start()
    key = ("TrainingRun", "ns", "a")
    for _ in range(10):
        q.add(key)
    await asyncio.sleep(0.01)
    for _ in range(10):  # while it runs: exactly one more pass afterwards
        q.add(key)
    await asyncio.sleep(0.3)
    await q.stop()
    assert calls == [key, key] and not overlap


async def test_failures_retry_with_backoff_and_requeue_after_runs_later():
    attempts: list = []

    async def reconcile(key):
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) == 1:
            raise RuntimeError("API hiccup")
        if len(attempts) == 2:
            return Outcome(requeue_after=0.1, also=[("Sandbox", "ns", "pool")])
        return Outcome()

    seen: list = []
    q = WorkQueue(reconcile, workers=1)
    original = q._reconcile

    async def tracking(key):
        seen.append(key)
        return await original(key)

    q._reconcile = tracking
    q.start()
    q.add(("TrainingRun", "ns", "a"))
    await asyncio.sleep(1.0)
    await q.stop()
    assert len([k for k in seen if k[0] == "TrainingRun"]) == 3
    assert ("Sandbox", "ns", "pool") in seen
    assert attempts[1] - attempts[0] >= 0.45  # first retry after 0.5 s
