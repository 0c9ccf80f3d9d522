"""Merge concurrent requests into one model call, TF Serving's batching idea in one worker thread.

Each signature of each loaded version has a `Batcher`. Callers `submit` their inputs (each a dict
of arrays sharing a batch dimension) and get a `concurrent.futures.Future`, which REST awaits and
gRPC blocks on. The worker takes the first waiting request, then keeps adding requests until the
batch holds `max_batch_size` rows or `batch_timeout_ms` has passed since the first; requests whose
non-batch shapes differ run in separate calls. With a timeout of 0 it takes whatever is already
waiting, so a lone client pays no wait while clients that arrive during a model call share the next.

If a merged call fails on bad input (TensorFlow's InvalidArgumentError, e.g. an image the in-graph
decoder rejects), each request of the batch is run alone, so only the bad one fails. Python's
standard library has no batching queue; this one is written here.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
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
    future: Future
    rows: int
    key: tuple


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
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, inputs: Arrays) -> Future:
        """Queue one request; the future resolves to its outputs or raises the call's error."""
        rows = len(next(iter(inputs.values())))
        key = tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in inputs.items()))
        request = _Request(inputs, Future(), rows, key)
        with self._lock:
            if self._closed:
                raise RuntimeError("batcher is closed")
            self._queue.put(request)
        return request.future

    def close(self) -> None:
        """Finish every queued request, then stop the worker."""
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        carried = None
        while True:
            first = carried or self._queue.get()
            carried = None
            if first is None:
                return
            batch, rows = [first], first.rows
            deadline = time.monotonic() + self.timeout
            while rows < self.max_batch_size:
                try:
                    remaining = deadline - time.monotonic()
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:  # closing: run this batch, then stop at the sentinel
                    self._queue.put(None)
                    break
                if rows + nxt.rows > self.max_batch_size:
                    carried = nxt  # first of the next batch
                    break
                batch.append(nxt)
                rows += nxt.rows
            groups: dict[tuple, list[_Request]] = {}
            for request in batch:
                groups.setdefault(request.key, []).append(request)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[_Request]) -> None:
        import tensorflow as tf

        merged = group[0].inputs if len(group) == 1 else {
            name: np.concatenate([r.inputs[name] for r in group]) for name in group[0].inputs}
        rows = sum(r.rows for r in group)
        try:
            outputs = self.call(merged)
        except tf.errors.InvalidArgumentError as exc:
            if len(group) > 1:
                for request in group:
                    self._run([request])
                return
            group[0].future.set_exception(exc)
            return
        except Exception as exc:  # a server fault: every waiting request gets it
            log.exception("model call failed")
            for request in group:
                request.future.set_exception(exc)
            return
        self.on_batch(rows)
        start = 0
        for request in group:
            end = start + request.rows
            request.future.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end
