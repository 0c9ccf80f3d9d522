"""TF Serving's REST API as a Starlette (ASGI) app, plus the page at `/` and the metrics.

Routes (`tensorflow_serving/g3doc/api_rest.md`; paths are matched with the regular expressions of
`model_servers/http_rest_api_util.cc`, so `/versions/N`, `/labels/L` and the `:verb` suffix parse
exactly as there):

    GET  /v1/models/{name}[/versions/{n}]            model status (GetModelStatusResponse as JSON)
    GET  /v1/models/{name}[/versions/{n}]/metadata   signature_def map (GetModelMetadataResponse)
    POST /v1/models/{name}[/versions/{n}]:predict    instances|inputs -> predictions|outputs
    POST /v1/models/{name}[/versions/{n}]:classify   examples -> results [[label, score], ...]
    GET  /monitoring/prometheus/metrics              Prometheus text
    GET  /                                           a page to classify an image (offline, no CDN)

Errors are `{"error": message}` with TF Serving's HTTP status for the code (400 for a bad request,
404 for an unknown model or version); 413 for a body over `max_body_bytes`.

Example (mount it in your own app):
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from kerascnn.serve import create_app
    app = Starlette(routes=[Mount("/digits", app=create_app("saved_models/digits"))])
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import time
from importlib import resources
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from kerascnn.serve.models import ModelStore, ServeOptions, classifications, serving_root
from kerascnn.serve.status import ServingError, invalid
from kerascnn.serve.tensors import examples_from_json, inputs_from_json, outputs_to_json, parse_body

log = logging.getLogger(__name__)
# The two expressions of tensorflow_serving/model_servers/http_rest_api_util.cc (RE2 syntax is Python's here).
PREDICTION_API = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                            r":(classify|regress|predict)")
MODEL_STATUS_API = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                              r"(?:\/(metadata))?")


def json_response(value, status: int = 200) -> Response:
    return Response(json.dumps(value), status_code=status, media_type="application/json")


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (BodyTooLarge) as soon as its declared or received size passes `limit`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def json_from_proto(message, preserve_names: bool = False) -> dict:
    """A proto as TF Serving prints it (MessageToJsonString with always_print_fields_with_no_presence)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=preserve_names)


class RestApi:
    """The handlers, over one `ModelStore`."""

    def __init__(self, store: ModelStore):
        self.store = store

    async def v1(self, request: Request) -> Response:
        path = "/v1/" + request.path_params["rest"]  # the path below any mount point, as TF Serving sees it
        started, api, status = time.perf_counter(), "status", "OK"
        try:
            if request.method == "POST":
                match = PREDICTION_API.fullmatch(path)
                if not match:
                    raise invalid(f"Malformed request: POST {path}")
                name, version, label, api = match.groups()
                body = await read_body(request, self.store.options.max_body_bytes)
                version = int(version) if version else None
                if api == "predict":
                    return json_response(await self.predict(name, version, label, body))
                if api == "classify":
                    return json_response(await self.classify(name, version, label, body))
                raise invalid("the regress API needs a regression signature; this model is a classifier, use "
                              ":classify or :predict")
            match = MODEL_STATUS_API.fullmatch(path)
            if not match:
                raise invalid(f"Malformed request: GET {path}")
            name, version, label, metadata = match.groups()
            if not name:
                raise invalid("Missing model name in request.")
            version = int(version) if version else None
            if metadata:
                api = "metadata"
                response = self.store.metadata(name, version, label)
                spec = json_from_proto(response.model_spec, preserve_names=True)
                signatures = json_from_proto(_unpack_signatures(response), preserve_names=True)
                return json_response({"model_spec": spec, "metadata": {"signature_def": signatures}})
            return json_response(json_from_proto(self.store.status(name, version, label)))
        except BodyTooLarge:
            status = "RESOURCE_EXHAUSTED"
            return error_response(f"request body is larger than the limit of {self.store.options.max_body_bytes:,} "
                                  f"bytes; send fewer or smaller images per request, or start the server with a "
                                  f"larger --max-body-bytes", 413)
        except ServingError as exc:
            status = exc.code
            return error_response(str(exc), exc.http_status)
        except Exception as exc:
            import tensorflow as tf

            if isinstance(exc, tf.errors.InvalidArgumentError):  # bad input found inside the graph
                status = "INVALID_ARGUMENT"
                return error_response(exc.message.strip().splitlines()[0], 400)
            status = "INTERNAL"
            log.exception("%s %s failed", request.method, path)
            return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)
        finally:
            self.store.metrics.request(self.store.name, api, "REST", status, time.perf_counter() - started)

    async def predict(self, name: str, version: int | None, label: str | None, body: bytes) -> dict:
        document = parse_body(body)
        with self.store.acquire(name, version, label) as servable:
            signature = document.get("signature_name", "")
            inputs, layout = inputs_from_json(document, servable.input_specs(signature))
            outputs = await servable.submit_async(signature, inputs)
        return outputs_to_json(outputs, layout)

    async def classify(self, name: str, version: int | None, label: str | None, body: bytes) -> dict:
        document = parse_body(body)
        with self.store.acquire(name, version, label) as servable:
            signature = servable.classify_signature(document.get("signature_name", ""))
            examples = np.array(examples_from_json(document), dtype=object)
            outputs = await servable.submit_async(signature, {"inputs": examples})
        return {"results": classifications(outputs)}

    async def metrics(self, request: Request) -> Response:
        return Response(self.store.metrics.render(), media_type="text/plain; version=0.0.4")

    async def page(self, request: Request) -> Response:
        template = resources.files("kerascnn.serve").joinpath("page.html").read_text(encoding="utf-8")
        return HTMLResponse(template.replace("{{MODEL_NAME}}", html.escape(self.store.name, quote=True)))

    async def not_found(self, request: Request, exc) -> Response:
        return error_response(f"Not found: {request.method} {request.url.path}", 404)


def _unpack_signatures(response):
    from tensorflow_serving.apis import get_model_metadata_pb2

    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    return signatures


def create_app(path: str | Path | None = None, model_name: str | None = None, options: ServeOptions | None = None,
               store: ModelStore | None = None, watch: bool = True) -> Starlette:
    """An ASGI app serving TF Serving's REST API over a run directory or serving root.

    Args:
        path: a run directory (serves its `saved_model/<version>/`) or a serving root (`<root>/<version>/`).
        model_name: the name in the URLs (default: the folder's name).
        options: batching, limits and watching (default `ServeOptions()`).
        store: an already started `ModelStore` instead of `path` (the CLI shares one with gRPC).
        watch: poll the root for new versions (default True).

    The versions are loaded here, before the app is returned (so it also works mounted inside
    another app, whose lifespan Starlette does not pass to mounted apps), and released when the app's
    lifespan ends.

    Example:
        app = create_app("saved_models/digits")   # then: uvicorn.run(app, port=8501)
    """
    import contextlib

    owned = store is None
    if owned:
        root, default_name = serving_root(path)
        store = ModelStore(root, model_name or default_name, options)
        store.start(watch)
    api = RestApi(store)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if owned:
            await asyncio.to_thread(store.close)

    routes = [Route("/", api.page), Route("/monitoring/prometheus/metrics", api.metrics),
              Route("/v1/{rest:path}", api.v1, methods=["GET", "POST"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: api.not_found, 405: api.not_found})
    app.state.store = store
    return app
