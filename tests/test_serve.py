"""`kerascnn serve`: the real server process, talked to with httpx and TF Serving's official gRPC stubs.

Two tiny digits runs (1 epoch, different seeds) are trained once. One server serves run A's
directory (REST + gRPC, small body limit); a second serves a serving root that run B is exported
into while a client loop runs (the hot swap), and is then stopped with SIGTERM.
"""

import base64
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
BODY_LIMIT = 300_000


def kerascnn(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "kerascnn", *args], env=ENV, capture_output=True, text=True,
                          **kwargs)


def train(output: Path, name: str, seed: int) -> Path:
    done = kerascnn("train", "--epochs", "1", "--seed", str(seed), "--no-report", "--output", str(output), "--name",
                    name, "--set", 'export.formats=["keras","saved_model"]', "--set", "train.verbose=0")
    assert done.returncode == 0, done.stderr
    return output / name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `python -m kerascnn serve` process on free loopback ports."""

    def __init__(self, path: Path, *options: str, name: str = "digits"):
        self.port, self.grpc_port, self.name = free_port(), free_port(), name
        self.log = path.parent / f"server-{self.port}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kerascnn", "serve", str(path), "--model-name", name, "--port", str(self.port),
             "--grpc-port", str(self.grpc_port), *options], env=ENV, stdout=subprocess.DEVNULL,
            stderr=open(self.log, "w"))
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = f"{self.url}/v1/models/{name}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.model, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        raise AssertionError(f"server did not start: {self.log.read_text()}")

    def stop(self) -> float:
        """SIGTERM; the seconds until the process exited."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        return time.monotonic() - started


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A, trained for one epoch, and run B: A's folder with other weights in model.keras, not yet exported."""
    import keras

    root = tmp_path_factory.mktemp("serve")
    run_a = train(root, "a", 1)
    run_b = root / "b"
    run_b.mkdir()
    for name in ("config.toml", "labels.txt"):
        shutil.copy(run_a / name, run_b / name)
    model = keras.saving.load_model(run_a / "model.keras")
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, bias + np.linspace(-1.0, 1.0, bias.size, dtype=bias.dtype)])
    model.save(run_b / "model.keras")
    return run_a, run_b


@pytest.fixture(scope="module")
def server(runs):
    server = Server(runs[0], "--max-body-bytes", str(BODY_LIMIT))
    yield server
    server.stop()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def b64(contents: bytes) -> dict:
    return {"b64": base64.b64encode(contents).decode("ascii")}


DIGIT = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)  # a test image whose PNG decodes to these pixels
PIXELS = DIGIT[..., None].astype(float).tolist()


def model_probabilities(run: Path) -> np.ndarray:
    import keras

    return keras.saving.load_model(run / "model.keras")(np.array([PIXELS], np.float32)).numpy()[0]


def test_status_and_metadata_are_tf_servings_json(server):
    status = httpx.get(server.model).json()
    assert status == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                "status": {"error_code": "OK", "error_message": ""}}]}
    assert httpx.get(f"{server.model}/versions/1").json() == status
    metadata = httpx.get(f"{server.model}/metadata").json()
    assert metadata["model_spec"] == {"name": "digits", "version": "1", "signature_name": ""}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signatures["serving_default"]["inputs"]["images"]["tensor_shape"]["dim"]] == [
        "-1", "8", "8", "1"]
    assert signatures["serving_bytes"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"
    assert set(signatures["classify"]["outputs"]) == {"classes", "scores"}
    assert httpx.get(f"{server.model}/versions/1/metadata").json() == metadata


def test_predict_rows_and_columns_match_the_saved_model(server, runs):
    expected = model_probabilities(runs[0])
    rows = httpx.post(f"{server.model}:predict", json={"instances": [PIXELS, PIXELS]}).json()["predictions"]
    assert len(rows) == 2 and set(rows[0]) == {"probabilities", "class_id", "class_name"}
    np.testing.assert_allclose(rows[0]["probabilities"], expected, atol=1e-5)
    assert rows[0]["class_name"] == str(int(np.argmax(expected))) and rows[0]["class_id"] == int(np.argmax(expected))
    columns = httpx.post(f"{server.model}/versions/1:predict", json={"inputs": {"images": [PIXELS]}}).json()["outputs"]
    np.testing.assert_allclose(columns["probabilities"][0], expected, atol=1e-5)
    assert columns["class_id"] == [rows[0]["class_id"]]
    single = httpx.post(f"{server.model}:predict", json={"inputs": [PIXELS]}).json()["outputs"]  # one unnamed input
    assert single["class_name"] == [rows[0]["class_name"]]


def test_bytes_signature_agrees_with_pixels(server):
    by_pixels = httpx.post(f"{server.model}:predict", json={"instances": [PIXELS]}).json()["predictions"][0]
    jpeg = io.BytesIO()
    Image.fromarray(DIGIT).save(jpeg, "BMP")
    by_bytes = httpx.post(f"{server.model}:predict", json={
        "signature_name": "serving_bytes", "instances": [b64(png(DIGIT)), b64(jpeg.getvalue())]}).json()["predictions"]
    for answer in by_bytes:
        assert np.abs(np.subtract(answer["probabilities"], by_pixels["probabilities"])).max() <= 1e-4
        assert answer["class_name"] == by_pixels["class_name"]


def test_classify_answers_class_names_with_scores(server, runs):
    expected = model_probabilities(runs[0])
    body = {"signature_name": "classify", "examples": [{"image": b64(png(DIGIT))}]}
    results = httpx.post(f"{server.model}:classify", json=body).json()["results"]
    assert len(results) == 1 and [label for label, _ in results[0]][:1] == [str(int(np.argmax(expected)))]
    assert sorted(label for label, _ in results[0]) == [str(d) for d in range(10)]
    scores = {label: score for label, score in results[0]}
    np.testing.assert_allclose([scores[str(d)] for d in range(10)], expected, atol=1e-4)
    assert [s for _, s in results[0]] == sorted((s for _, s in results[0]), reverse=True)
    # without signature_name TF Serving picks serving_default, a predict signature, and says so
    wrong = httpx.post(f"{server.model}:classify", json={"examples": body["examples"]})
    assert wrong.status_code == 400 and "tensorflow/serving/classify" in wrong.json()["error"]


def decompression_bomb(side: int = 12000) -> bytes:
    """A valid gray PNG of side x side black pixels: ~140 kB that decode to 144 MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row, parts = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(side):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


BAD_REQUESTS = {
    "malformed JSON": (":predict", b'{"instances": [1, 2', 400, "JSON Parse error"),
    "not an object": (":predict", b"[1, 2]", 400, "Is not object"),
    "wrong shape": (":predict", {"instances": [[[1.0, 2.0]]]}, 400, "has shape"),
    "wrong dtype": (":predict", {"instances": [[[["x"]] * 8] * 8]}, 400, "not of expected type"),
    "ragged lists": (":predict", {"instances": [[[[1.0]] * 8] * 7 + [[[1.0]] * 3]]}, 400, "same length"),
    "instances and inputs": (":predict", {"instances": [PIXELS], "inputs": [PIXELS]}, 400, "only one of"),
    "neither": (":predict", {"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
    "unknown model": ("unknown", {"instances": [PIXELS]}, 404, "Servable not found"),
    "unknown version": ("/versions/9:predict", {"instances": [PIXELS]}, 404, "Specific(digits, 9)"),
    "unknown signature": (":predict", {"signature_name": "nope", "instances": [PIXELS]}, 400, "not found in signature"),
    "invalid base64": (":predict", {"signature_name": "serving_bytes", "instances": [{"b64": "%%%"}]}, 400,
                       "base64"),
    "bytes that are no image": (":predict", {"signature_name": "serving_bytes", "instances": [b64(b"GIF89a-no")]},
                                400, "not a PNG/JPEG/BMP/GIF image"),
    "classify without examples": (":classify", {"signature_name": "classify"}, 400, "'examples' is expected"),
    "classify example without image": (":classify", {"signature_name": "classify", "examples": [{"x": 1}]}, 400,
                                       "feature 'image'"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_json_error_and_the_server_still_answers(server, case):
    route, body, status, message = BAD_REQUESTS[case]
    url = f"{server.url}/v1/models/unknown:predict" if route == "unknown" else server.model + route
    answer = httpx.post(url, content=body) if isinstance(body, bytes) else httpx.post(url, json=body)
    assert answer.status_code == status and answer.headers["content-type"] == "application/json"
    assert message in answer.json()["error"]
    assert httpx.post(f"{server.model}:predict", json={"instances": [PIXELS]}).status_code == 200


def test_decompression_bomb_and_oversized_body_are_refused_before_work(server):
    bomb = decompression_bomb()
    assert len(bomb) < BODY_LIMIT * 3 // 4
    answer = httpx.post(f"{server.model}:predict", json={"signature_name": "serving_bytes", "instances": [b64(bomb)]})
    # the message comes from the header check that runs before any decoding
    assert answer.status_code == 400 and "12000x12000 pixels, over the limit" in answer.json()["error"]
    classify = httpx.post(f"{server.model}:classify", json={"signature_name": "classify",
                                                             "examples": [{"image": b64(bomb)}]})
    assert classify.status_code == 400 and "over the limit" in classify.json()["error"]
    big = httpx.post(f"{server.model}:predict", content=b" " * (BODY_LIMIT + 1))
    assert big.status_code == 413 and "larger than the limit" in big.json()["error"]
    assert httpx.post(f"{server.model}:predict", json={"instances": [PIXELS]}).status_code == 200


def test_unknown_routes_and_status_errors(server):
    assert httpx.get(f"{server.url}/v1/models/other").status_code == 404
    assert httpx.get(f"{server.model}/versions/3").json() == {"error": "Could not find version 3 of model digits"}
    assert httpx.get(f"{server.url}/v1/models").json() == {"error": "Missing model name in request."}
    assert httpx.get(f"{server.url}/v1/nothing/here").status_code == 400
    assert httpx.get(f"{server.url}/elsewhere").status_code == 404


def test_grpc_services_with_the_official_stubs(server, runs):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                         model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.array([PIXELS], np.float32)))
    response = stub.Predict(request, timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"])[0],
                               model_probabilities(runs[0]), atol=1e-5)
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "serving_default"

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = "digits", "classify"
    classify.input.example_list.examples.add().features.feature["image"].bytes_list.value.append(png(DIGIT))
    classes = stub.Classify(classify, timeout=30).result.classifications[0].classes
    rest = httpx.post(f"{server.model}:classify", json={"signature_name": "classify",
                                                          "examples": [{"image": b64(png(DIGIT))}]}).json()
    assert [(c.label, round(c.score, 5)) for c in classes] == [(l, round(s, 5)) for l, s in rest["results"][0]]

    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata_request.model_spec.name = "digits"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(metadata_request, timeout=30).metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "serving_bytes", "classify"} <= set(signatures.signature_def)

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "digits"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)
    assert [(v.version, v.state) for v in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]

    request.model_spec.name = "other"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    request.model_spec.name = "digits"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 3, 3, 1), np.float32)))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


def test_page_and_metrics(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and 'data-model="digits"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    metrics = httpx.get(f"{server.url}/monitoring/prometheus/metrics").text
    assert ':tensorflow:serving:request_count{model_name="digits",API="predict",entrypoint="REST",status="OK"}' in metrics
    assert 'status="INVALID_ARGUMENT"' in metrics and ":tensorflow:serving:request_latency_bucket" in metrics
    assert "kerascnn_serving_batch_size_count" in metrics
    assert 'kerascnn_serving_loaded_versions{model_name="digits",version="1"} 1' in metrics


def test_concurrent_requests_are_batched(server):
    before = _batch_count(server)
    with httpx.Client() as client:
        threads = [threading.Thread(target=lambda: [client.post(f"{server.model}:predict", json={"instances": [PIXELS]})
                                                    for _ in range(10)]) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    calls = _batch_count(server) - before
    assert calls < 80  # 80 requests took fewer model calls: some were merged


def _batch_count(server) -> int:
    metrics = httpx.get(f"{server.url}/monitoring/prometheus/metrics").text
    return int(next(line for line in metrics.splitlines() if line.startswith("kerascnn_serving_batch_size_count")
                    ).split()[-1])


def test_hot_swap_under_load_then_sigterm(runs, tmp_path):
    run_a, run_b = runs
    root = tmp_path / "serving"
    shutil.copytree(run_a / "saved_model" / "1", root / "1")
    server = Server(root, "--keep-versions", "2", "--poll-seconds", "0.3")
    old, new = model_probabilities(run_a), model_probabilities(run_b)
    assert np.abs(old - new).max() > 1e-3  # the two versions answer differently
    answers, failures, stop = [], [], threading.Event()

    def client_loop():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                reply = client.post(f"{server.model}:predict", json={"instances": [PIXELS]})
                if reply.status_code != 200:
                    failures.append(reply.text)
                else:
                    answers.append(np.array(reply.json()["predictions"][0]["probabilities"]))

    clients = [threading.Thread(target=client_loop) for _ in range(2)]
    for thread in clients:
        thread.start()
    exported = kerascnn("export", str(run_b), "--serving-root", str(root), timeout=300)
    assert exported.returncode == 0, exported.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and httpx.get(f"{server.model}/versions/2").status_code != 200:
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    for thread in clients:
        thread.join()
    assert failures == [] and len(answers) > 10
    assert np.abs(answers[0] - old).max() < 1e-5 and np.abs(answers[-1] - new).max() < 1e-5
    for answer in answers:  # every answer came from one version or the other, never anything else
        assert min(np.abs(answer - old).max(), np.abs(answer - new).max()) < 1e-5
    status = httpx.get(server.model).json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
    kept = httpx.post(f"{server.model}/versions/1:predict", json={"instances": [PIXELS]}).json()["predictions"][0]
    np.testing.assert_allclose(kept["probabilities"], old, atol=1e-5)

    # a version that fails to load is reported and not served; version 2 keeps serving
    (root / ".incoming-broken").mkdir()
    (root / ".incoming-broken" / "saved_model.pb").write_bytes(b"not a graph")
    os.rename(root / ".incoming-broken", root / "3")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and httpx.get(f"{server.model}/versions/3").status_code != 200:
        time.sleep(0.2)
    broken = httpx.get(f"{server.model}/versions/3").json()["model_version_status"][0]
    assert broken["state"] == "END" and broken["status"]["error_code"] == "UNKNOWN" and broken["status"]["error_message"]
    latest = httpx.post(f"{server.model}:predict", json={"instances": [PIXELS]}).json()["predictions"][0]
    np.testing.assert_allclose(latest["probabilities"], new, atol=1e-5)

    seconds = server.stop()
    assert server.process.returncode == 0 and seconds < 20
    log = server.log.read_text()
    assert "version 3 of digits failed to load" in log and "server stopped" in log


def test_bad_paths_and_options_are_one_line_errors(tmp_path, runs, capsys):
    from kerascnn.cli import main
    from kerascnn.serve import ServeOptions, ServeSetupError
    from kerascnn.serve.models import serving_root

    assert main(["serve", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("kerascnn: error: ") and "is not a folder" in error and len(error.splitlines()) == 1
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    assert main(["serve", str(runs[0]), "--port", str(busy.getsockname()[1])]) == 2
    assert "choose another --port" in capsys.readouterr().err
    busy.close()
    with pytest.raises(ServeSetupError, match="pass the folder above it"):
        serving_root(runs[0] / "saved_model" / "1")
    assert serving_root(runs[0]) == (runs[0] / "saved_model", "a")
    with pytest.raises(ServeSetupError, match="--max-batch-size must be at least 1"):
        ServeOptions(max_batch_size=0)


def test_page_classifies_a_picked_image_in_headless_chromium(server, tmp_path):
    from chromium import chromium, classify_on_page

    if chromium() is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    image = tmp_path / "digit.png"
    Image.fromarray(DIGIT).resize((64, 64), Image.NEAREST).save(image)
    shown = classify_on_page(server.url + "/", image, tmp_path / "page.png", tmp_path / "profile")
    expected = httpx.post(f"{server.model}:classify", json={"signature_name": "classify",
                                                             "examples": [{"image": b64(image.read_bytes())}]}).json()
    label, score = expected["results"][0][0]
    assert shown[0] == "model digits, version 1" and len(shown) == 6
    assert shown[1] == f"{label} |  | {100 * score:.1f} %"
    assert Image.open(tmp_path / "page.png").size[0] == 800


def test_app_factory_mounted_in_another_app(runs):
    import asyncio

    from starlette.applications import Starlette
    from starlette.routing import Mount

    from kerascnn.serve import ServeOptions, create_app

    app = Starlette(routes=[Mount("/digits", app=create_app(runs[0], options=ServeOptions(), watch=False))])

    async def requests():  # httpx's ASGI transport runs no lifespan: the mounted app must work without one
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            status = (await client.get("/digits/v1/models/a")).json()
            answer = (await client.post("/digits/v1/models/a:predict", json={"instances": [PIXELS]})).json()
            return status, answer, (await client.get("/digits/")).text

    status, answer, page = asyncio.run(requests())
    assert status["model_version_status"][0]["state"] == "AVAILABLE" and 'data-model="a"' in page
    np.testing.assert_allclose(answer["predictions"][0]["probabilities"], model_probabilities(runs[0]), atol=1e-5)


def test_only_integer_folders_inside_the_root_are_versions(tmp_path):
    from kerascnn.serve.models import version_folders

    outside = tmp_path / "outside" / "7"
    outside.mkdir(parents=True)
    (outside / "saved_model.pb").write_bytes(b"")
    root = tmp_path / "root"
    for name in ("1", "x2", ".incoming-3"):
        (root / name).mkdir(parents=True)
        (root / name / "saved_model.pb").write_bytes(b"")
    (root / "4").mkdir()  # no saved_model.pb yet
    (root / "5").symlink_to(outside, target_is_directory=True)
    assert version_folders(root) == {1: root / "1"}


def test_requests_of_one_loop_turn_share_one_model_call():
    """Coroutines submitting in the same turn of the event loop are merged; each gets its own rows back."""
    import asyncio

    from kerascnn.serve.batching import Batcher

    calls = []

    def call(inputs):
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    batcher = Batcher(call, max_batch_size=4)

    async def clients():
        together = await asyncio.gather(*[batcher.submit_async({"x": np.full((1, 3), i, np.float32)}) for i in range(6)])
        alone = await batcher.submit_async({"x": np.full((2, 3), 7, np.float32)})
        return together, alone

    try:
        together, alone = asyncio.run(clients())
        threaded = batcher.submit({"x": np.ones((1, 3), np.float32)}).result(timeout=10)
    finally:
        batcher.close()
    assert [answer["y"].tolist() for answer in together] == [[[2.0 * i] * 3] for i in range(6)]
    assert alone["y"].tolist() == [[14.0] * 3] * 2 and threaded["y"].tolist() == [[2.0] * 3]
    assert calls == [4, 2, 2, 1]  # six requests of one turn in two calls (max 4 rows), then one call each


@pytest.mark.parametrize("array", [np.array([[0.25, 0.75]], np.float32), np.array([7, -1], np.int64),
                                   np.array([[True, False]]), np.zeros((2, 0, 3), np.float64),
                                   np.array([b"cat", b"dog"], object), np.asfortranarray(np.eye(3, dtype=np.int32))])
def test_grpc_output_tensors_read_back_as_tf_make_tensor_proto_writes_them(array):
    import tensorflow as tf
    from kerascnn.serve.grpc_service import tensor_proto

    proto = tensor_proto(array)
    assert proto.dtype == tf.make_tensor_proto(array).dtype
    back = tf.make_ndarray(proto)
    assert back.shape == array.shape and back.dtype == array.dtype and (back == array).all()
