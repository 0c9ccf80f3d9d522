"""TF Serving's gRPC API: PredictionService (Predict, Classify, GetModelMetadata) and ModelService
(GetModelStatus), implemented on the servicer classes generated from tensorflow-serving-api's protos,
so the official stubs (`prediction_service_pb2_grpc.PredictionServiceStub`) work unchanged.

Errors abort the call with the status code TF Serving uses (INVALID_ARGUMENT, NOT_FOUND, ...).
"""

from __future__ import annotations

import logging
import time
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import (classification_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from kerascnn.serve.models import ModelStore, classifications
from kerascnn.serve.status import ServingError, invalid

log = logging.getLogger(__name__)


def _spec(request) -> tuple[str, int | None, str | None]:
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    return spec.name, version, spec.version_label or None


def tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """`tf.make_tensor_proto(array)` for a numeric array in a quarter of its time (measured: 4 against 16 us a
    call): the bytes as `tensor_content`, as tf.make_tensor_proto writes them too; strings go through it."""
    if array.dtype.kind not in "biuf":
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(array.dtype).as_datatype_enum,
                                   tensor_content=np.ascontiguousarray(array).tobytes())
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape)
    return proto


class _Calls:
    """Turns ServingError / TensorFlow input errors into gRPC status codes and counts every call."""

    def __init__(self, store: ModelStore):
        self.store = store

    def answer(self, api: str, context, work):
        started, status = time.perf_counter(), "OK"
        try:
            return work()
        except ServingError as exc:
            status = exc.code
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except tf.errors.InvalidArgumentError as exc:
            status = "INVALID_ARGUMENT"
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message.strip().splitlines()[0])
        except Exception as exc:
            status = "INTERNAL"
            log.exception("gRPC %s failed", api)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.store.metrics.request(self.store.name, api, "GRPC", status, time.perf_counter() - started)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer, _Calls):
    def Predict(self, request, context):
        def work():
            name, version, label = _spec(request)
            with self.store.acquire(name, version, label) as servable:
                signature = request.model_spec.signature_name
                try:
                    inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
                except (TypeError, ValueError) as exc:
                    raise invalid(f"inputs could not be read as tensors: {exc}") from None
                outputs = servable.submit(signature, inputs).result()
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
                    response.outputs[key].CopyFrom(tensor_proto(outputs[key]))
                return response

        return self.answer("predict", context, work)

    def Classify(self, request, context):
        def work():
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
                outputs = servable.submit(signature, {"inputs": np.array(examples, dtype=object)}).result()
                response = classification_pb2.ClassificationResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = signature
                for row in classifications(outputs):
                    entry = response.result.classifications.add()
                    for label_name, score in row:
                        entry.classes.add(label=label_name, score=score)
                return response

        return self.answer("classify", context, work)

    def GetModelMetadata(self, request, context):
        def work():
            fields = set(request.metadata_field)
            if fields - {"signature_def"}:
                raise invalid(f"Metadata field {sorted(fields - {'signature_def'})[0]} is not supported")
            if not fields:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            return self.store.metadata(*_spec(request))

        return self.answer("metadata", context, work)


class ModelService(model_service_pb2_grpc.ModelServiceServicer, _Calls):
    def GetModelStatus(self, request, context):
        return self.answer("status", context, lambda: self.store.status(*_spec(request)))


def start_grpc(store: ModelStore, host: str, port: int, workers: int = 64) -> grpc.Server:
    """A started gRPC server with both services on host:port (messages up to the body limit)."""
    limit = store.options.max_body_bytes
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit)])
    calls = PredictionService(store)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(calls, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(store), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server
