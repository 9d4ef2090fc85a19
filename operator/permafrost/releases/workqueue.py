"""A keyed work queue: at most one worker per key, duplicates merged, delayed and retried adds.

Kopf tells Permafrost *that* something changed (a GuardedRelease, one of its Deployments or
pods, a referenced ConfigMap); the queue turns those signals into reconciles of whole releases,
like controller-runtime's work queue: a burst of events for one release becomes one reconcile,
and a release is never reconciled by two workers at once. The queue holds only keys, never
state: everything a reconcile needs is read from the cluster.

The queue belongs to the event loop that runs it: its sets and timers are touched only there.
``add`` may be called from any thread (Kopf runs synchronous handlers in a thread pool); from
another thread it hands the key over to the loop instead of touching the queue itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)

Worker = Callable[[K], Awaitable[float | None]]


class WorkQueue(Generic[K]):
    """Run ``worker(key)`` for added keys; the worker returns seconds until it wants to run again.

    - ``add(key)`` while the key waits: merged. While it runs: it runs once more afterwards.
    - A worker that raises is retried with exponential backoff (``retry_base`` doubling up to
      ``retry_max`` seconds, with up to ``jitter`` of it added at random, so that keys failing
      together do not retry in lockstep); a success resets the backoff.
    """

    def __init__(
        self,
        *,
        worker: Worker[K],
        concurrency: int = 4,
        retry_base: float = 0.5,
        retry_max: float = 60.0,
        jitter: float = 0.2,
    ) -> None:
        self._worker = worker
        self._concurrency = concurrency
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._jitter = jitter
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._waiting: set[K] = set()
        self._running: set[K] = set()
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}

    def add(self, key: K, *, after: float = 0) -> None:
        """Schedule ``key`` now, or in ``after`` seconds (the earliest schedule wins).

        Safe to call from any thread once :meth:`run` has started; before that, only from the
        loop that will run the queue.
        """
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._add, key, after)
            return
        self._add(key, after)

    def _add(self, key: K, after: float) -> None:
        if after > 0:
            loop = asyncio.get_running_loop()
            timer = self._timers.get(key)
            when = loop.time() + after
            if timer is not None and timer.when() <= when:
                return
            if timer is not None:
                timer.cancel()
            self._timers[key] = loop.call_at(when, self._fire, key)
            return
        if key in self._running:
            self._dirty.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self._add(key, 0)

    async def run(self) -> None:
        """Process keys until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        workers = [asyncio.create_task(self._work()) for _ in range(self._concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for timer in self._timers.values():
                timer.cancel()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._waiting.discard(key)
            self._running.add(key)
            try:
                again = await self._worker(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(self._retry_base * 2 ** (failures - 1), self._retry_max)
                delay += delay * self._jitter * random.random()
                logger.exception(
                    "reconcile of %s failed (attempt %d); retrying in %.1fs", key, failures, delay
                )
                again = delay
            else:
                self._failures.pop(key, None)
            finally:
                self._running.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add(key, 0)
            elif again is not None:
                self._add(key, again)
