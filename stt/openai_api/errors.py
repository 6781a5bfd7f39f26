"""Errors in the OpenAI API's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import JsonResponse

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


@dataclass
class ApiError(Exception):
    """A request the API answers with an error instead of a transcript."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    type: str = INVALID_REQUEST
    retry_after: float | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(max(1, round(self.retry_after)))
        return response


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code, param)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes (MAX_UPLOAD_BYTES)", "file_too_large",
                    "file")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, "invalid_api_key")
