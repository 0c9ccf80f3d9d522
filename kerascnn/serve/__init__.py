"""Serve a run's SavedModel versions with TF Serving's REST and gRPC APIs (`kerascnn serve PATH`).

    serve(path, ...)        run REST (and gRPC) until SIGTERM / Ctrl-C      (kerascnn.serve.server)
    create_app(path, ...)   the REST API as an ASGI app to mount in your own (kerascnn.serve.rest)
    ModelStore              versions: load, warm up, hot-swap, unload       (kerascnn.serve.models)

Modules: `tensors` (TF Serving's JSON <-> tensor mapping), `batching` (merging concurrent requests),
`grpc_service` (PredictionService, ModelService), `metrics` (Prometheus text), `status` (error codes).
"""

from kerascnn.serve.models import ModelStore, ServeOptions, ServeSetupError
from kerascnn.serve.rest import create_app
from kerascnn.serve.server import serve

__all__ = ["ModelStore", "ServeOptions", "ServeSetupError", "create_app", "serve"]
