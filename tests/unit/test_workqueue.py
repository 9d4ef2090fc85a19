"""The work queue: merged keys, one worker per key, retries, and adds from other threads."""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import threading
from collections.abc import AsyncIterator, Callable

import kopf
import pytest

from permafrost import handlers
from permafrost.releases import workqueue

THREADS = 8
KEYS_PER_THREAD = 250


class Recorder:
    """A worker that records its runs and checks that no key ever runs twice at once."""

    def __init__(self, *, result: Callable[[str], float | None] = lambda _: None) -> None:
        self.runs: collections.Counter[str] = collections.Counter()
        self.running: set[str] = set()
        self.overlaps: list[str] = []
        self.result = result

    async def __call__(self, key: str) -> float | None:
        if key in self.running:
            self.overlaps.append(key)
        self.running.add(key)
        try:
            await asyncio.sleep(0)
            self.runs[key] += 1
            return self.result(key)
        finally:
            self.running.discard(key)


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., workqueue.WorkQueue[str]]]:
    tasks: list[asyncio.Task[None]] = []

    def start(worker: workqueue.Worker[str], **options: float) -> workqueue.WorkQueue[str]:
        queue: workqueue.WorkQueue[str] = workqueue.WorkQueue(worker=worker, **options)  # type: ignore[arg-type]
        tasks.append(asyncio.create_task(queue.run()))
        return queue

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _until(predicate: Callable[[], bool], *, within: float = 10) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (the workers do not signal; they are polled)
            await asyncio.sleep(0.01)


async def test_keys_added_from_many_threads_at_once_are_all_processed(
    running: Callable[..., workqueue.WorkQueue[str]],
) -> None:
    recorder = Recorder()
    queue = running(recorder)
    await asyncio.sleep(0)  # the queue runs: from now on, other threads may add

    def add_many(thread: int) -> None:
        for i in range(KEYS_PER_THREAD):
            queue.add(f"{thread}-{i}")
            queue.add(f"shared-{i % 10}", after=0.05)

    threads = [threading.Thread(target=add_many, args=(t,)) for t in range(THREADS)]
    await asyncio.to_thread(lambda: [(t.start(), t.join()) for t in threads])
    expected = {f"{t}-{i}" for t in range(THREADS) for i in range(KEYS_PER_THREAD)}
    expected |= {f"shared-{i}" for i in range(10)}
    await _until(lambda: expected <= set(recorder.runs))
    assert recorder.overlaps == []


async def test_a_key_added_while_it_runs_runs_once_more_never_beside_itself(
    running: Callable[..., workqueue.WorkQueue[str]],
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def worker(key: str) -> None:
        runs.append(key)
        started.set()
        await release.wait()

    queue = running(worker, concurrency=4)
    queue.add("web")
    await started.wait()
    for _ in range(5):
        queue.add("web")
    await asyncio.sleep(0.05)
    assert runs == ["web"]
    release.set()
    await _until(lambda: len(runs) == 2)
    await asyncio.sleep(0.05)
    assert runs == ["web", "web"]


async def test_a_failing_key_is_retried_with_a_growing_jittered_delay(
    running: Callable[..., workqueue.WorkQueue[str]],
) -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def worker(_: str) -> None:
        times.append(loop.time())
        if len(times) < 4:
            raise RuntimeError("the apiserver said no")

    queue = running(worker, retry_base=0.05, retry_max=1.0, jitter=0.5)
    queue.add("web")
    await _until(lambda: len(times) == 4)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for attempt, gap in enumerate(gaps, start=1):
        base = 0.05 * 2 ** (attempt - 1)
        assert base * 0.9 <= gap <= base * 1.5 + 0.2, (attempt, gaps)


def test_every_event_handler_runs_on_the_event_loop_not_in_a_thread() -> None:
    """Kopf runs a plain ``def`` handler in its thread pool, where the queues are not safe."""
    registry = kopf.get_default_registry()
    handlers_seen = [
        h
        for h in registry._watching.get_all_handlers()  # NB: Kopf has no public listing
        if getattr(h.fn, "__module__", None) == handlers.__name__
    ]
    assert len(handlers_seen) >= 9
    for handler in handlers_seen:
        assert inspect.iscoroutinefunction(handler.fn), handler.fn.__name__
