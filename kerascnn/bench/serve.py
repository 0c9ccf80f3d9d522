"""`kerascnn bench serve RUN`: requests/s and latency of `kerascnn serve`, REST and gRPC, beside the
in-process signature call.

The server runs as its own process (`python -m kerascnn serve RUN`, default batching), as a user
would start it. For 1, 8 and 32 concurrent clients (threads, each with its own keep-alive
connection: the standard library's http.client, or a gRPC channel) sending batch-1 raw-pixel
requests to `serving_default`, it reports requests/s, p50/p99 latency, and the CPU milliseconds
per request of the server process and of the clients (this process), so a reader can tell whose
work bounds a row. The in-process reference calls the newest SavedModel version's
`serving_default` signature on the same images, one at a time. Targets: with batching, throughput
at 32 clients >= 4x throughput at 1 (`*.c32_over_c1`); at 1 client, p50 REST latency <= the
in-process p50 + 3 ms (`rest.c1_p50_minus_in_process_ms`).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from kerascnn.bench import register_bench
from kerascnn.errors import KerasCNNError
from kerascnn.rundir import SAVED_MODEL_DIR, require_run_dir

CLIENTS = (1, 8, 32)


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", help="a run directory written by `kerascnn train`")
    parser.add_argument("--requests", type=int, default=320,
                        help="requests per client count and API, split among the clients (default 320)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the server's --max-batch-size (default 32)")
    parser.add_argument("--batch-timeout-ms", type=float, default=0.0,
                        help="the server's --batch-timeout-ms (default 0)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(run_dir: Path, port: int, grpc_port: int, args) -> subprocess.Popen:
    import httpx

    process = subprocess.Popen([sys.executable, "-m", "kerascnn", "serve", str(run_dir), "--model-name", "bench",
                                "--port", str(port), "--grpc-port", str(grpc_port), "--max-batch-size",
                                str(args.max_batch_size), "--batch-timeout-ms", str(args.batch_timeout_ms)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise KerasCNNError(f"the server did not start: {process.stderr.read().strip().splitlines()[-1:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models/bench", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise KerasCNNError("the server did not answer within 300 s")


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of process `pid` so far, from /proc (None where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(clients: int, requests: int, make_client, images: np.ndarray, server_pid: int | None = None) -> dict:
    """Run `clients` threads, each calling its own `make_client()` callable on batch-1 images.

    With `server_pid`, also the server's and this process's (the clients') CPU milliseconds per request.
    """
    per_client = max(1, requests // clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    ready = threading.Barrier(clients + 1)

    def work(index: int):
        try:
            call = make_client()
            call(images[index % len(images)])  # connection set up before timing
            ready.wait()
            for i in range(per_client):
                started = time.perf_counter()
                call(images[(index + i) % len(images)])
                latencies[index].append(time.perf_counter() - started)
        except BaseException as exc:
            errors.append(exc)
            ready.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        pass  # a client failed before timing; reported below
    server_cpu = _cpu_seconds(server_pid) if server_pid is not None else None
    started, client_cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise KerasCNNError(f"a benchmark request failed: {errors[0]}")
    flat = np.concatenate([np.array(times) for times in latencies])
    result = {"req_s": len(flat) / seconds, "p50_ms": 1e3 * np.percentile(flat, 50),
              "p99_ms": 1e3 * np.percentile(flat, 99)}
    if server_pid is not None and server_cpu is not None:
        result["server_cpu_ms"] = 1e3 * (_cpu_seconds(server_pid) - server_cpu) / len(flat)
        result["client_cpu_ms"] = 1e3 * (time.process_time() - client_cpu) / len(flat)
    return result


def _rest_client(port: int):
    """Each client: one keep-alive connection of the standard library's `http.client`.

    A light client on purpose: the load generator shares the server's cores, and httpx's own
    per-request work (about 2 ms of CPU at 32 threads on the 2-core dev machine) made it, not the
    server, the bottleneck.
    """
    import http.client
    import json

    def make():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}

        def call(image):
            connection.request("POST", "/v1/models/bench:predict", json.dumps({"instances": [image.tolist()]}),
                               headers)
            reply = connection.getresponse()
            content = reply.read()
            if reply.status != 200:
                raise KerasCNNError(f"REST request failed with HTTP {reply.status}: {content[:200]!r}")
            return content

        return call

    return make


def _grpc_client(port: int):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    def make():
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

        def call(image):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "bench"
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(image[None]))
            return stub.Predict(request, timeout=60)

        return call

    return make


@register_bench("serve", help="requests/s and p50/p99 of `kerascnn serve` (REST, gRPC) at 1/8/32 clients, beside "
                              "the in-process signature call", add_arguments=add_arguments)
def run(args) -> dict:
    import tensorflow as tf

    run_dir = require_run_dir(args.run_dir)
    if args.requests < max(CLIENTS):
        raise KerasCNNError(f"--requests must be at least {max(CLIENTS)} (one per client)")
    versions = [p for p in (run_dir / SAVED_MODEL_DIR).glob("*") if p.name.isdigit()]
    if not versions:
        raise KerasCNNError(f"{str(run_dir)!r} has no SavedModel; export one with `kerascnn export {run_dir}`")
    signature = tf.saved_model.load(str(max(versions, key=lambda p: int(p.name)))).signatures["serving_default"]
    shape = [d or 1 for d in signature.structured_input_signature[1]["images"].shape[1:]]
    images = np.random.default_rng(0).uniform(0, 255, (64, *shape)).astype(np.float32)

    def in_process():
        return lambda image: signature(images=tf.constant(image[None]))["probabilities"].numpy()

    results = {"run": run_dir.name, "machine": platform.machine(), "cpu_count": os.cpu_count(),
               "requests": args.requests, "max_batch_size": args.max_batch_size,
               "batch_timeout_ms": args.batch_timeout_ms}
    for key, value in _load(1, args.requests, in_process, images).items():
        results[f"in_process.c1.{key}"] = value
    port, grpc_port = _free_port(), _free_port()
    server = _start_server(run_dir, port, grpc_port, args)
    try:
        for api, make in (("rest", _rest_client(port)), ("grpc", _grpc_client(grpc_port))):
            for clients in CLIENTS:
                for key, value in _load(clients, args.requests, make, images, server.pid).items():
                    results[f"{api}.c{clients}.{key}"] = value
            results[f"{api}.c32_over_c1"] = results[f"{api}.c32.req_s"] / results[f"{api}.c1.req_s"]
        results["rest.c1_p50_minus_in_process_ms"] = results["rest.c1.p50_ms"] - results["in_process.c1.p50_ms"]
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {key: float(f"{value:.4g}") if isinstance(value, float) else value for key, value in results.items()}
