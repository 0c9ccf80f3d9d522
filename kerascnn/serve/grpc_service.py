"""TF Serving's gRPC API: PredictionService (Predict, Classify, GetModelMetadata) and ModelService
(GetModelStatus), implemented on the servicer classes generated from tensorflow-serving-api's protos,
so the official stubs (`prediction_service_pb2_grpc.PredictionServiceStub`) work unchanged.

The server is grpc's asyncio server (`grpc.aio`) on an event loop of its own thread: each call is a
coroutine there, waiting on the batcher without a thread of its own (a pool of threads handing
requests to the batcher and back cost more CPU per request than the model call it batched).

Errors abort the call with the status code TF Serving uses (INVALID_ARGUMENT, NOT_FOUND, ...).
"""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
import numpy as np
from tensorflow_serving.apis import (classification_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from kerascnn.serve.models import ModelStore, classifications
from kerascnn.serve.status import ServingError, invalid

log = logging.getLogger(__name__)


def _spec(request) -> tuple[str, int | None, str | None]:
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    return spec.name, version, spec.version_label or None


class _Calls:
    """Turns ServingError / TensorFlow input errors into gRPC status codes and counts every call."""

    def __init__(self, store: ModelStore):
        self.store = store

    async def answer(self, api: str, context, work):
        """The response of coroutine function `work`, or the call aborted with the error's status code."""
        import time

        import tensorflow as tf

        started, status = time.perf_counter(), "OK"
        try:
            return await work()
        except ServingError as exc:
            status = exc.code
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except tf.errors.InvalidArgumentError as exc:
            status = "INVALID_ARGUMENT"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message.strip().splitlines()[0])
        except Exception as exc:
            status = "INTERNAL"
            log.exception("gRPC %s failed", api)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.store.metrics.request(self.store.name, api, "GRPC", status, time.perf_counter() - started)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer, _Calls):
    async def Predict(self, request, context):
        import tensorflow as tf

        async def work():
            name, version, label = _spec(request)
            with self.store.acquire(name, version, label) as servable:
                signature = request.model_spec.signature_name
                try:
                    inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
                except (TypeError, ValueError) as exc:
                    raise invalid(f"inputs could not be read as tensors: {exc}") from None
                outputs = await servable.submit_async(signature, inputs)
                wanted = set(request.output_filter) or set(outputs)
                unknown = wanted - set(outputs)
                if unknown:
                    raise invalid(f"output tensor alias not found in signature: {sorted(unknown)[0]} Outputs "
                                  f"expected to be in the set {{{','.join(sorted(outputs))}}}.")
                response = predict_pb2.PredictResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = signature or "serving_default"
                for key in sorted(wanted):
                    response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
                return response

        return await self.answer("predict", context, work)

    async def Classify(self, request, context):
        async def work():
            name, version, label = _spec(request)
            with self.store.acquire(name, version, label) as servable:
                signature = servable.classify_signature(request.model_spec.signature_name)
                which = request.input.WhichOneof("kind")
                if which == "example_list":
                    examples = [e.SerializeToString() for e in request.input.example_list.examples]
                elif which == "example_list_with_context":
                    listed = request.input.example_list_with_context
                    context_bytes = listed.context.SerializeToString()
                    examples = [context_bytes + e.SerializeToString() for e in listed.examples]
                else:
                    examples = []
                if not examples:
                    raise invalid("Input is empty.")
                outputs = await servable.submit_async(signature, {"inputs": np.array(examples, dtype=object)})
                response = classification_pb2.ClassificationResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = signature
                for row in classifications(outputs):
                    entry = response.result.classifications.add()
                    for label_name, score in row:
                        entry.classes.add(label=label_name, score=score)
                return response

        return await self.answer("classify", context, work)

    async def GetModelMetadata(self, request, context):
        async def work():
            fields = set(request.metadata_field)
            if fields - {"signature_def"}:
                raise invalid(f"Metadata field {sorted(fields - {'signature_def'})[0]} is not supported")
            if not fields:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            return self.store.metadata(*_spec(request))

        return await self.answer("metadata", context, work)


class ModelService(model_service_pb2_grpc.ModelServiceServicer, _Calls):
    async def GetModelStatus(self, request, context):
        async def work():
            return self.store.status(*_spec(request))

        return await self.answer("status", context, work)


class GrpcServer:
    """Both services on host:port, served by a `grpc.aio` server on its own event loop thread."""

    def __init__(self, store: ModelStore, host: str, port: int):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop", daemon=True)
        self._thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(self._start(store, host, port), self._loop).result()
        except BaseException:
            self._close_loop()
            raise

    @staticmethod
    async def _start(store: ModelStore, host: str, port: int) -> grpc.aio.Server:
        limit = store.options.max_body_bytes
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                          ("grpc.max_send_message_length", limit)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(store), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(store), server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if server.add_insecure_port(address) == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        return server

    def stop(self, grace: float) -> None:
        """Refuse new calls, let those in flight finish for at most `grace` seconds, then stop."""
        asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result()
        self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def start_grpc(store: ModelStore, host: str, port: int) -> GrpcServer:
    """A started gRPC server with both services on host:port (messages up to the body limit)."""
    return GrpcServer(store, host, port)
