"""Dynamic micro-batching: concurrent requests to one model are run together in a worker thread.

One ``MicroBatcher`` per model. Requests queue in the event loop; a single worker thread runs
one batch at a time (tokenising and the ONNX engine, so the event loop never blocks and the
predictor is never used by two threads at once). The policy:

- when the worker is free it takes the waiting requests in arrival order, up to ``max_batch``
  texts (a larger request runs alone); the model runs them in length-sorted slices
  (``ServedModel.texts_per_run``);
- it waits for more, up to ``max_wait`` after the oldest arrived, only while more requests for
  this model are already being received: a lone client never waits for company that is not
  coming, so batching adds no latency at low load;
- at most ``max_queue`` texts wait; beyond that a request is refused at once (``QueueFull``, a
  503 with Retry-After), so memory stays bounded however hard the server is pushed.

Results go back to each caller in the order of its own texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from edgeclin.logs import get_logger
from edgeclin.schema import Example
from edgeclin.serving.metrics import ServerMetrics

log = get_logger(__name__)
INITIAL_SECONDS_PER_TEXT = 0.05  # the Retry-After estimate before the first batch has been timed
SMOOTHING = 0.2  # weight of the newest batch in the running time-per-text estimate


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class BatchResult:
    rows: list[dict]
    queue_seconds: float = 0.0  # waiting for the worker
    run_seconds: float = 0.0  # the batch this request ran in
    batch_texts: int = 0


@dataclass
class _Waiting:
    examples: list[Example]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Queues requests for one model and runs them in batches; ``predict`` maps examples to output rows."""

    def __init__(self, name: str, predict: Callable[[list[Example]], list[dict]], *, worker: ThreadPoolExecutor,
                 max_batch: int, max_wait_s: float, max_queue: int, metrics: ServerMetrics) -> None:
        self.name, self._predict, self.metrics = name, predict, metrics
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._waiting: deque[_Waiting] = deque()
        self._queued_texts = 0
        self._receiving = 0  # requests for this model being read and checked, not yet queued
        self._seconds_per_text = INITIAL_SECONDS_PER_TEXT
        self._executor = worker  # one thread: batches run one at a time
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    # --- the caller's side -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching loop (inside the running event loop)."""
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        """Run what is still queued, then stop the loop and the worker thread."""
        self._closing = True
        self._notify()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def receiving(self) -> Iterator[None]:
        """Marks a request for this model as on its way: the batcher may wait (``max_wait``) for it."""
        self._receiving += 1
        try:
            yield
        finally:
            self._receiving -= 1
            self._notify()

    async def submit(self, examples: list[Example]) -> BatchResult:
        """The output rows of ``examples`` once their batch has run; ``QueueFull`` at once if it is full."""
        if self._closing or self._queued_texts + len(examples) > self.max_queue:
            self.metrics.rejected.labels(self.name).inc()
            raise QueueFull(self.retry_after())
        waiting = _Waiting(examples, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._set_queued(self._queued_texts + len(examples))
        self._notify()
        return await waiting.future

    def retry_after(self) -> int:
        """Seconds until the queue has room, estimated from the time per text measured so far."""
        return max(1, math.ceil(self._queued_texts * self._seconds_per_text))

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    # --- the loop ----------------------------------------------------------------------------------

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _set_queued(self, texts: int) -> None:
        self._queued_texts = texts
        self.metrics.queue_depth.labels(self.name).set(texts)

    async def _wait_for_change(self, timeout: float | None = None) -> None:
        assert self._changed is not None
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def _loop(self) -> None:
        while True:
            if not self._waiting:
                if self._closing:
                    return
                await self._wait_for_change()
                continue
            await self._gather()
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _gather(self) -> None:
        """Wait for requests already being received, until the batch is full or the oldest waited ``max_wait``."""
        deadline = self._waiting[0].queued_at + self.max_wait_s
        while self._queued_texts < self.max_batch and self._receiving > 0 and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            await self._wait_for_change(remaining)

    def _take(self) -> list[_Waiting]:
        """Waiting requests in arrival order, up to ``max_batch`` texts (at least one request)."""
        batch: list[_Waiting] = []
        texts = 0
        while self._waiting:
            head = self._waiting[0]
            if head.future.done():  # its caller is gone (cancelled): nothing to compute
                self._waiting.popleft()
                self._set_queued(self._queued_texts - len(head.examples))
                continue
            if batch and texts + len(head.examples) > self.max_batch:
                break
            self._waiting.popleft()
            batch.append(head)
            texts += len(head.examples)
        self._set_queued(self._queued_texts - texts)
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        examples = [e for waiting in batch for e in waiting.examples]
        started = time.perf_counter()
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, examples)
        except Exception as exc:
            if len(batch) > 1:  # one bad request must not fail the others: run each on its own
                for waiting in batch:
                    await self._run([waiting])
                return
            _settle(batch[0].future, exception=exc)
            return
        seconds = time.perf_counter() - started
        self._seconds_per_text += SMOOTHING * (seconds / len(examples) - self._seconds_per_text)
        self.metrics.observe_batch(self.name, len(examples), seconds)
        start = 0
        for waiting in batch:
            end = start + len(waiting.examples)
            self.metrics.queue_wait.labels(self.name).observe(started - waiting.queued_at)
            _settle(waiting.future, BatchResult(rows[start:end], started - waiting.queued_at, seconds, len(examples)))
            start = end


def _settle(future: asyncio.Future, result: BatchResult | None = None, exception: BaseException | None = None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
