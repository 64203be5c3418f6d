"""Dynamic batching: the requests waiting for one specialist run through it as one batch.

As inference servers do (Triton's dynamic batcher is the model): each specialist has
a queue. A batch starts as soon as the specialist is free and takes every request
queued by then, up to ``max_batch``; while it runs, the next requests queue and form
the next batch. "Free" means fewer than ``per_specialist`` of its batches are running
(an onnxruntime session is safe to run from several threads): the hub allows one per
worker, so that a task served by one specialist uses every core. Before a batch starts
it may wait up to ``window_ms`` for more, but only while other requests for the same
task are still being decoded (on their way to this queue): with nothing else in flight
the window closes at once, so a lone request is never delayed. Retrieval runs in the
same job, one faiss search over the whole batch's embeddings.

The specialists share the hub's worker threads: with ``slots`` set, at most that
many batches exist at once (running or waiting in the executor's queue), and a
specialist's next batch is formed only when one of them ends, so that the requests
which arrive while the workers are busy join it rather than queueing behind it as
batches of their own. The hub sets two slots per worker (one batch running, one
ready to start): with one per worker, a worker that finished waited for the event
loop to form the next batch (at concurrency 1 with ten specialists, 17.0 -> 19.6 ms).

A failed batch is retried one request at a time, so one input that onnxruntime
refuses fails only its own request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from numpy.typing import NDArray

from hub._runtime import LoadedSpecialist, Neighbour
from hub.errors import SpecialistRuntimeError
from protocol import decide

__all__ = ["BatchingOptions", "SpecialistBatcher", "SpecialistOutput"]


@dataclass(frozen=True)
class BatchingOptions:
    """How requests are grouped. ``max_batch=1`` turns batching off."""

    window_ms: float = 2.0  # the longest a batch waits for requests already on their way
    max_batch: int = 32
    slots: int | None = None  # batches formed at once, all specialists (None: no bound)
    per_specialist: int = 1  # batches of one specialist at once (its session is thread-safe)

    def __post_init__(self) -> None:
        if self.window_ms < 0:
            raise ValueError("window_ms must be >= 0")
        if self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if self.slots is not None and self.slots < 1:
            raise ValueError("slots must be >= 1")
        if self.per_specialist < 1:
            raise ValueError("per_specialist must be >= 1")


@dataclass(frozen=True)
class SpecialistOutput:
    """One request's share of a batch."""

    probabilities: NDArray[np.float64]  # [K], calibrated
    values: list[float]  # the same, as Python floats
    label_index: int  # the label they stand for (protocol.decide)
    embedding: NDArray[np.float32]  # [1, D]
    neighbours: list[Neighbour]  # the top_k asked for (empty when 0)
    batch_size: int  # how many requests shared the run
    search_ms: float  # the batch's faiss search (0 without retrieval)


@dataclass
class _Item:
    inputs: NDArray[np.float32]  # [1, C, H, W]
    top_k: int
    done: asyncio.Future[SpecialistOutput] = field(repr=False)


def _run_batch(specialist: LoadedSpecialist, items: list[_Item]) -> list[SpecialistOutput]:
    """One onnxruntime run and one faiss search for ``items`` (in a worker thread)."""
    stacked = np.concatenate([item.inputs for item in items]) if len(items) > 1 else items[0].inputs
    probs, embeddings = specialist.run(stacked)
    k = max(item.top_k for item in items)
    found: list[list[Neighbour]] = [[] for _ in items]
    search_ms = 0.0
    if k > 0:
        started = time.perf_counter()
        wanted = [i for i, item in enumerate(items) if item.top_k > 0]
        for i, neighbours in zip(wanted, specialist.search(embeddings[wanted], k), strict=True):
            found[i] = neighbours[: items[i].top_k]
        search_ms = (time.perf_counter() - started) * 1000
    chosen = decide(probs, specialist.task.task_type).tolist()
    values = probs.tolist()
    return [
        SpecialistOutput(
            probs[i], values[i], chosen[i], embeddings[i : i + 1], found[i], len(items), search_ms
        )
        for i in range(len(items))
    ]


class SpecialistBatcher:
    """The queue of one specialist. Used from the event loop only.

    ``inbound()`` says how many requests for the specialist's task are still on their
    way (being decoded); the window is waited only while it is above zero. ``slots()``
    gives the running loop's semaphore of batch slots, shared by the batchers of one
    executor (``BatchingOptions.slots`` of them), or None for no bound.
    """

    def __init__(
        self,
        specialist: LoadedSpecialist,
        executor: Executor,
        options: BatchingOptions,
        inbound: Callable[[], int],
        slots: Callable[[], asyncio.Semaphore | None] = lambda: None,
    ) -> None:
        self.specialist = specialist
        self._executor = executor
        self._options = options
        self._inbound = inbound
        self._slots = slots
        self._queue: list[_Item] = []
        self._arrived = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._running: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._answering: set[asyncio.Task[None]] = set()  # batches running (strong refs)

    def submit(
        self, inputs: NDArray[np.float32], top_k: int = 0
    ) -> asyncio.Future[SpecialistOutput]:
        """Queues one request's preprocessed input ``[1, C, H, W]``; call from the loop.

        The future resolves to its probabilities, embedding and ``top_k`` neighbours,
        or fails with :class:`SpecialistRuntimeError` when onnxruntime fails on it.
        """
        loop = asyncio.get_running_loop()
        item = _Item(inputs, top_k, loop.create_future())
        self._queue.append(item)
        self._arrived.set()
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return item.done

    async def run(self, inputs: NDArray[np.float32], top_k: int = 0) -> SpecialistOutput:
        """:meth:`submit`, awaited."""
        return await self.submit(inputs, top_k)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        options = self._options
        try:
            while self._queue:
                if options.window_ms > 0 and len(self._queue) < options.max_batch:
                    deadline = loop.time() + options.window_ms / 1000
                    while len(self._queue) < options.max_batch and self._inbound() > 0:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        self._arrived.clear()
                        try:
                            await asyncio.wait_for(self._arrived.wait(), remaining)
                        except TimeoutError:
                            break
                # The batch is formed once this specialist may start another and, with
                # slots, once one is free (a worker is about to be).
                running = self._running_semaphore(loop)
                await running.acquire()
                slots = self._slots()
                try:
                    if slots is not None:
                        await slots.acquire()
                except BaseException:
                    running.release()
                    raise
                batch = self._queue[: options.max_batch]
                del self._queue[: options.max_batch]
                answering = loop.create_task(self._answer(batch))
                self._answering.add(answering)
                answering.add_done_callback(partial(self._answered, running, slots))
        finally:
            self._drainer = None

    def _running_semaphore(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        """The running loop's bound on this specialist's batches (``per_specialist``)."""
        if self._running is None or self._running[0] is not loop:
            self._running = (loop, asyncio.Semaphore(self._options.per_specialist))
        return self._running[1]

    def _answered(
        self,
        running: asyncio.Semaphore,
        slots: asyncio.Semaphore | None,
        answering: asyncio.Task[None],
    ) -> None:
        self._answering.discard(answering)
        running.release()
        if slots is not None:
            slots.release()

    async def _answer(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, _run_batch, self.specialist, batch)
        except SpecialistRuntimeError as exc:
            if len(batch) == 1:
                if not batch[0].done.done():
                    batch[0].done.set_exception(exc)
                return
            for item in batch:  # one at a time: only a request whose input fails, fails
                await self._answer([item])
            return
        except BaseException as exc:  # a bug: every waiting request learns of it
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for item, output in zip(batch, outputs, strict=True):
            if not item.done.done():  # its request may have been cancelled meanwhile
                item.done.set_result(output)
