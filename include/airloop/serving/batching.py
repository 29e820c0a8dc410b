"""Micro-batching: concurrent requests share one model call.

A scikit-learn pipeline spends most of a one-row ``predict_proba`` on per-call work (input
validation, feature-name and tag checks in every step), so ten concurrent one-record requests cost
nearly ten times what one ten-record call costs. :class:`MicroBatcher` collects the items that
requests submit on the event loop and hands them to one synchronous ``run`` call, then gives each
request exactly its own outcome back.

The policy follows the dynamic batchers of mature servers (Ray Serve's ``@serve.batch`` with
``max_batch_size`` / ``batch_wait_timeout_s``, Triton's ``max_queue_delay_microseconds`` counted
from the oldest queued request), sized in *records* rather than requests, plus one adaptive rule:

* a batch is dispatched as soon as it holds ``max_records`` records, or the oldest item has waited
  ``max_wait_s`` (counted from the end of the previous batch for items that arrived during it);
* it is also dispatched at once when no other request is on its way: nothing new was queued
  during the last turns of the event loop, no request is between its arrival and its
  :meth:`~MicroBatcher.submit` (see :meth:`~MicroBatcher.incoming`), and no *returning* client is
  expected. A client is returning when its connection (the ``source`` a request is submitted
  with: uvicorn's client address and port) got an answer less than ``max_wait_s`` ago and has not
  sent its next request yet: a closed-loop client (one request at a time per connection, as HTTP/1.1
  and every load generator work) sends its next one a round trip after its answer. Without this
  rule, the clients answered by one batch came back just after the next batch had left with the
  requests that arrived meanwhile, and ten concurrent clients settled into two alternating
  half-batches: 5 requests per model call instead of 10, and 30 % less throughput for a
  scikit-learn pipeline whose call costs ~4 ms before its first row (``benchmarks/README.md``).
  A lone client therefore pays no waiting time (its own return is its next request), a client that
  does not come back within ``max_wait_s`` is no longer waited for, and under load the batch grows
  with the load by itself.

An item of ``max_records`` records or more is never queued: it runs alone. ``run`` executes on the
event loop when the batch holds at most ``offload_records`` records (short CPU work: a thread hop
costs more than it saves and the GIL would serialise it anyway), else in a worker thread so the
loop keeps accepting requests. ``run`` returns one outcome per item, a result or an exception
object; :meth:`~MicroBatcher.submit` raises the latter in its own caller only, so one request's
failure never fails another's.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio.to_thread

T = TypeVar("T")
log = logging.getLogger(__name__)


#: Loop turns without a new arrival after which a batch stops waiting early (adaptive rule).
QUIET_TURNS = 2


@dataclass(eq=False, slots=True)
class _Pending(Generic[T]):
    item: T
    size: int
    arrived: float
    future: asyncio.Future = field(repr=False)
    #: The connection the request came on (None: not known, never waited for).
    source: Hashable | None = None


@dataclass
class BatcherStats:
    """Counters of one batcher: batches run, items and records in them, largest batch (records)."""

    batches: int = 0
    items: int = 0
    records: int = 0
    largest: int = 0

    def add(self, items: int, records: int) -> None:
        """Count one executed batch."""
        self.batches += 1
        self.items += items
        self.records += records
        self.largest = max(self.largest, records)


class MicroBatcher(Generic[T]):
    """Collects items submitted by concurrent coroutines into batches for one ``run`` call.

    ``run(items)`` is synchronous and returns one outcome per item, in order: a result, or an
    exception instance for that item alone. One worker task per event loop, started by the first
    :meth:`submit` (or :meth:`start`) and stopped by :meth:`aclose`.
    """

    def __init__(self, run: Callable[[list[T]], Sequence[Any]], *, max_wait_s: float = 0.002,
                 max_records: int = 64, offload_records: int = 256) -> None:
        """``max_wait_s`` >= 0 bounds the wait of the oldest queued item; ``max_records`` >= 1
        caps a batch (1 turns batching off: every item runs alone)."""
        if max_wait_s < 0 or max_records < 1 or offload_records < 0:
            raise ValueError("max_wait_s and offload_records must be >= 0, max_records >= 1")
        self._run = run
        self.max_wait_s = max_wait_s
        self.max_records = max_records
        self.offload_records = offload_records
        self.stats = BatcherStats()
        self._queue: deque[_Pending[T]] = deque()
        self._queued_records = 0
        self._incoming = 0
        self._arrivals = 0
        #: Connections answered less than ``max_wait_s`` ago that have not sent again: when each was answered.
        self._returning: dict[Hashable, float] = {}
        #: When the last batch finished (loop time).
        self._free_since = 0.0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ request side

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Mark a request as on its way to :meth:`submit` (reading and validating its body), so
        a forming batch waits for it (up to ``max_wait_s``). Leave the block right before
        :meth:`submit`, with no ``await`` in between."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def submit(self, item: T, size: int, source: Hashable | None = None) -> Any:
        """Queue ``item`` (``size`` records) for the next batch and return its outcome; raise the
        exception ``run`` returned for it. ``source``: the connection it came on (a forming batch
        waits for connections that were just answered, see the module's docstring)."""
        if source is not None:
            self._returning.pop(source, None)
        if size >= self.max_records:
            outcome = (await self._execute([item], size))[0]
            if source is not None:
                self._returning[source] = asyncio.get_running_loop().time()
        else:
            self.start()
            loop = asyncio.get_running_loop()
            pending = _Pending(item, size, loop.time(), loop.create_future(), source)
            self._queue.append(pending)
            self._queued_records += size
            self._arrivals += 1
            assert self._wakeup is not None
            self._wakeup.set()
            outcome = await pending.future
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def start(self) -> None:
        """Start the worker task on the running loop (no-op when it runs)."""
        loop = asyncio.get_running_loop()
        if self._worker is not None and not self._worker.done() and self._loop is loop:
            return
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._worker = loop.create_task(self._work(), name="airloop-microbatcher")

    async def aclose(self) -> None:
        """Stop the worker; items still queued get a ``RuntimeError`` outcome."""
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_result(RuntimeError("the batcher was closed"))
        self._queued_records = 0

    # ------------------------------------------------------------------ worker

    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._gather()
                batch = self._take()
                if batch:
                    await self._dispatch(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the worker: the queued requests still get answers
                log.exception("micro-batcher: unexpected error; continuing")

    async def _gather(self) -> None:
        """Wait until the queue holds a full batch, the oldest item's wait is over, or nothing
        else is on its way."""
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        # the wait counts from the oldest item's arrival, or from the end of the last batch when it
        # arrived during that batch (it waited for the model anyway; now others may join it)
        deadline = max(self._queue[0].arrived, self._free_since) + self.max_wait_s
        quiet = 0
        while self._queued_records < self.max_records:
            now = loop.time()
            remaining = deadline - now
            if remaining <= 0:
                return
            returning = self._next_return(now)
            if self._incoming or returning is not None:
                quiet = 0
                self._wakeup.clear()
                wait = remaining if self._incoming or returning is None else min(remaining, returning - now)
                try:
                    async with asyncio.timeout(wait):
                        await self._wakeup.wait()
                except TimeoutError:
                    if self._incoming or loop.time() >= deadline:
                        return
                continue
            if quiet >= QUIET_TURNS:
                return
            arrivals = self._arrivals
            await asyncio.sleep(0)  # one loop turn: reads ready sockets, runs handlers
            quiet = 0 if self._arrivals != arrivals else quiet + 1

    def _next_return(self, now: float) -> float | None:
        """When the soonest-expiring returning connection stops being waited for (None: none is
        expected); forgets those answered ``max_wait_s`` ago or earlier."""
        returning = self._returning
        horizon = now - self.max_wait_s
        while returning:
            source, answered = next(iter(returning.items()))  # insertion order = answer order
            if answered > horizon:
                return answered + self.max_wait_s
            del returning[source]
        return None

    def _take(self) -> list[_Pending[T]]:
        """Pop up to ``max_records`` records of live items (always at least one item)."""
        batch: list[_Pending[T]] = []
        records = 0
        while self._queue:
            head = self._queue[0]
            if batch and records + head.size > self.max_records:
                break
            self._queue.popleft()
            self._queued_records -= head.size
            if head.future.done():  # its request was cancelled (client gone)
                continue
            batch.append(head)
            records += head.size
        return batch

    async def _dispatch(self, batch: list[_Pending[T]]) -> None:
        outcomes = await self._execute([p.item for p in batch], sum(p.size for p in batch))
        answered = self._free_since = asyncio.get_running_loop().time()
        for pending, outcome in zip(batch, outcomes):
            if not pending.future.done():
                pending.future.set_result(outcome)
            if pending.source is not None:
                self._returning[pending.source] = answered

    async def _execute(self, items: list[T], records: int) -> Sequence[Any]:
        """Run one batch (inline, or in a thread when large); a failure of ``run`` itself
        becomes every item's outcome."""
        self.stats.add(len(items), records)
        try:
            if records > self.offload_records:
                outcomes = await anyio.to_thread.run_sync(self._run, items)
            else:
                outcomes = self._run(items)
        except Exception as err:
            log.exception("micro-batcher: a batch of %d item(s) failed as a whole", len(items))
            return [err] * len(items)
        if len(outcomes) != len(items):
            err = RuntimeError(f"batch run returned {len(outcomes)} outcomes for {len(items)} items")
            return [err] * len(items)
        return outcomes
