"""The one error type of a serving request, with TF Serving's status codes and their HTTP statuses.

A `ServingError` carries a canonical status code name (as `absl::StatusCode`); the REST layer turns
it into `{"error": message}` with the HTTP status TF Serving's `http_server.cc` maps that code to,
and the gRPC layer aborts the call with the same code. Anything else that escapes a handler is a
server fault (INTERNAL, HTTP 500).
"""

from __future__ import annotations

# absl::StatusCode -> HTTP status, as tensorflow_serving/model_servers/http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {"OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
               "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
               "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
               "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}


class ServingError(Exception):
    """A request that cannot be answered; `code` is the canonical status name (INVALID_ARGUMENT, ...)."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.code = code

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


def invalid(message: str) -> ServingError:
    return ServingError(message, "INVALID_ARGUMENT")


def not_found(message: str) -> ServingError:
    return ServingError(message, "NOT_FOUND")
