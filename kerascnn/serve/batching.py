"""Merge concurrent requests into one model call, TF Serving's batching idea in one worker thread.

Each signature of each loaded version has a `Batcher`. Callers submit their inputs (each a dict of
arrays sharing a batch dimension): threads with `submit` (a `concurrent.futures.Future`), coroutines
with `submit_async` (an awaitable). The worker takes the first waiting request, then keeps adding
requests until the batch holds `max_batch_size` rows or `batch_timeout_ms` has passed since the
first; requests whose non-batch shapes differ run in separate calls. With a timeout of 0 it takes
whatever is already waiting, so a lone client pays no wait while clients that arrive during a model
call share the next.

Coroutines cost the event loop as little as possible, because under load the loop's thread is the
server's bottleneck (one Python thread holds the GIL at a time): the requests submitted during one
turn of the loop are handed to the worker together at the end of that turn (one wake-up, not one
per request; a lone request is handed over in the same turn, so it does not wait), and a batch's
answers for one loop are delivered with one `call_soon_threadsafe`, not one per request.

If a merged call fails on bad input (TensorFlow's InvalidArgumentError, e.g. an image the in-graph
decoder rejects), each request of the batch is run alone, so only the bad one fails. Python's
standard library has no batching queue; this one is written here.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]


@dataclasses.dataclass
class _Request:
    inputs: Arrays
    future: Future | asyncio.Future
    rows: int
    key: tuple
    loop: asyncio.AbstractEventLoop | None = None  # set for submit_async: the future belongs to this loop


class Batcher:
    """Run `call(inputs) -> outputs` (dicts of arrays, batch-major) over merged requests in one thread.

    Args:
        call: the model call; every output's first dimension is the batch.
        max_batch_size: most rows in one call (default 32); a bigger request runs alone.
        batch_timeout_ms: longest wait for more requests after the first (default 0: none).
        on_batch: called with each call's row count (metrics).
        name: thread name, for logs.
    """

    def __init__(self, call: Callable[[Arrays], Arrays], max_batch_size: int = 32, batch_timeout_ms: float = 0.0,
                 on_batch: Callable[[int], None] | None = None, name: str = "batcher"):
        self.call, self.max_batch_size, self.timeout = call, max_batch_size, batch_timeout_ms / 1000
        self.on_batch = on_batch or (lambda rows: None)
        self._waiting: collections.deque[_Request] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._turns: dict[asyncio.AbstractEventLoop, list[_Request]] = {}  # requests of each loop's current turn
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, inputs: Arrays) -> Future:
        """Queue one request; the future resolves to its outputs or raises the call's error."""
        request = self._request(inputs, Future())
        self._enqueue([request])
        return request.future

    def submit_async(self, inputs: Arrays) -> asyncio.Future:
        """`submit` for a coroutine on the running loop: await the result for the outputs."""
        loop = asyncio.get_running_loop()
        request = self._request(inputs, loop.create_future(), loop)
        turn = self._turns.get(loop)
        if turn is None:  # the first request of this turn: hand the turn's requests over once it ends
            self._turns[loop] = turn = []
            loop.call_soon(self._end_turn, loop)
        turn.append(request)
        return request.future

    @staticmethod
    def _request(inputs: Arrays, future, loop=None) -> _Request:
        rows = len(next(iter(inputs.values())))
        key = tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in inputs.items()))
        return _Request(inputs, future, rows, key, loop)

    def _end_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        requests = self._turns.pop(loop)
        try:
            self._enqueue(requests)
        except RuntimeError as exc:
            _settle([(request.future, True, exc) for request in requests])

    def _enqueue(self, requests: list[_Request]) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError("batcher is closed")
            self._waiting.extend(requests)
            self._ready.notify()

    def close(self) -> None:
        """Finish every queued request, then stop the worker."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()

    def _next_batch(self) -> list[_Request] | None:
        """The next batch to run, or None once closed with nothing left."""
        with self._ready:
            self._ready.wait_for(lambda: self._waiting or self._closed)
            if not self._waiting:
                return None
            batch = [self._waiting.popleft()]
            rows = batch[0].rows
            deadline = time.monotonic() + self.timeout
            while rows < self.max_batch_size:
                if not self._waiting:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        break
                    self._ready.wait(remaining)
                    continue
                if rows + self._waiting[0].rows > self.max_batch_size:
                    break  # the first of the next batch
                batch.append(self._waiting.popleft())
                rows += batch[-1].rows
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            groups: dict[tuple, list[_Request]] = {}
            for request in batch:
                groups.setdefault(request.key, []).append(request)
            answers: list[tuple[_Request, bool, object]] = []  # (request, failed, outputs or error)
            for group in groups.values():
                self._run(group, answers)
            self._deliver(answers)

    def _run(self, group: list[_Request], answers: list) -> None:
        import tensorflow as tf

        merged = group[0].inputs if len(group) == 1 else {
            name: np.concatenate([r.inputs[name] for r in group]) for name in group[0].inputs}
        rows = sum(r.rows for r in group)
        try:
            outputs = self.call(merged)
        except tf.errors.InvalidArgumentError as exc:
            if len(group) > 1:
                for request in group:
                    self._run([request], answers)
                return
            answers.append((group[0], True, exc))
            return
        except Exception as exc:  # a server fault: every waiting request gets it
            log.exception("model call failed")
            answers.extend((request, True, exc) for request in group)
            return
        self.on_batch(rows)
        start = 0
        for request in group:
            end = start + request.rows
            answers.append((request, False, {name: value[start:end] for name, value in outputs.items()}))
            start = end

    @staticmethod
    def _deliver(answers: list[tuple[_Request, bool, object]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for request, failed, value in answers:
            if request.loop is None:
                if failed:
                    request.future.set_exception(value)
                else:
                    request.future.set_result(value)
            else:
                by_loop.setdefault(request.loop, []).append((request.future, failed, value))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # the loop was closed meanwhile: nobody waits for these answers
                pass


def _settle(settled: list[tuple[asyncio.Future, bool, object]]) -> None:
    """In the loop's thread: resolve a batch's futures (skipping those whose caller gave up)."""
    for future, failed, value in settled:
        if not future.done():
            if failed:
                future.set_exception(value)
            else:
                future.set_result(value)
