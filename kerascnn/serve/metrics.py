"""Prometheus metrics of the server, in the text exposition format at TF Serving's path.

`prometheus_client` is not among kerascnn's dependencies, and the format is a few lines of text
(https://prometheus.io/docs/instrumenting/exposition_formats/), so counters and histograms are
written here. Names follow TF Serving's where it has the metric (`:tensorflow:serving:request_count`,
`:tensorflow:serving:request_latency` in microseconds); the rest are `kerascnn_serving_*`.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
                      5_000_000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _labels(labels: tuple[tuple[str, str], ...], extra: str = "") -> str:
    parts = ['{}="{}"'.format(key, str(value).replace("\\", "\\\\").replace('"', '\\"')) for key, value in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Metrics:
    """Thread-safe counters, histograms and gauges; `render()` gives the exposition text."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests = defaultdict(int)  # (model_name, API, entrypoint, status) -> count
        self._latency = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS_US) + 1) + [0.0])  # counts..., +Inf, sum
        self._batches = [0] * (len(BATCH_BUCKETS) + 1) + [0.0]
        self.loaded_versions = lambda: {}  # model name -> list of loaded versions, set by the server

    def request(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        micros = seconds * 1e6
        with self._lock:
            self._requests[(("model_name", model), ("API", api), ("entrypoint", entrypoint), ("status", status))] += 1
            self._observe(self._latency[(("model_name", model), ("API", api), ("entrypoint", entrypoint))],
                          LATENCY_BUCKETS_US, micros)

    def batch(self, rows: int) -> None:
        with self._lock:
            self._observe(self._batches, BATCH_BUCKETS, rows)

    @staticmethod
    def _observe(histogram: list, buckets: tuple, value: float) -> None:
        index = next((i for i, bound in enumerate(buckets) if value <= bound), len(buckets))
        histogram[index] += 1
        histogram[-1] += value

    @staticmethod
    def _histogram(name: str, labels: tuple, histogram: list, buckets: tuple) -> list[str]:
        lines, cumulative = [], 0
        for bound, count in zip((*buckets, "+Inf"), histogram[:-1]):
            cumulative += count
            bucket = 'le="{}"'.format(bound)
            lines.append(f"{name}_bucket{_labels(labels, bucket)} {cumulative}")
        lines.append(f"{name}_sum{_labels(labels)} {histogram[-1]:g}")
        lines.append(f"{name}_count{_labels(labels)} {cumulative}")
        return lines

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP :tensorflow:serving:request_count The total number of requests, by status.",
                     "# TYPE :tensorflow:serving:request_count counter"]
            lines += [f":tensorflow:serving:request_count{_labels(k)} {v}" for k, v in sorted(self._requests.items())]
            lines += ["# HELP :tensorflow:serving:request_latency Request latency in microseconds.",
                      "# TYPE :tensorflow:serving:request_latency histogram"]
            for labels, histogram in sorted(self._latency.items()):
                lines += self._histogram(":tensorflow:serving:request_latency", labels, histogram, LATENCY_BUCKETS_US)
            lines += ["# HELP kerascnn_serving_batch_size Rows in each model call after batching.",
                      "# TYPE kerascnn_serving_batch_size histogram"]
            lines += self._histogram("kerascnn_serving_batch_size", (), self._batches, BATCH_BUCKETS)
        lines += ["# HELP kerascnn_serving_loaded_versions 1 for each loaded model version.",
                  "# TYPE kerascnn_serving_loaded_versions gauge"]
        for model, versions in sorted(self.loaded_versions().items()):
            lines += [f"kerascnn_serving_loaded_versions{_labels((('model_name', model), ('version', v)))} 1"
                      for v in versions]
        return "\n".join(lines) + "\n"
