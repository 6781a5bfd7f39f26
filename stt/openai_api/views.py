"""The OpenAI-compatible HTTP API: POST /v1/audio/transcriptions, GET /v1/models[/{id}].

Async views (Daphne runs them on the event loop): the key lookup, the form parse and
the audio decode run in threads (the key lookup on stt.auth's, the rest on the file
pool of uploads.py), the transcription on the engine's workers, so a 10-minute upload
never holds the loop. Every refusal is OpenAI's error shape with the status its client
maps to an exception: 400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
413 (APIStatusError), 429 RateLimitError over the upload limits, 503 while the model is
unavailable or the server shuts down (with Retry-After).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt

from stt.audio import AudioTooLong, UndecodableAudio
from stt.auth import api_key_of_request, is_openai_placeholder, look_up_off_loop, note_key_used
from stt.engine import EngineInfo
from stt.errors import SttError
from stt.openai_api.errors import SERVER_ERROR, ApiError, bad_request, too_large, unauthorized
from stt.openai_api.formats import render
from stt.openai_api.requests import parse_transcription_request, require_file
from stt.openai_api.services import FileApiServices
from stt.openai_api.transcriber import Upload
from stt.openai_api.uploads import UploadStopped, UploadTicket

logger = logging.getLogger(__name__)

ENGINE_STATUS = {"transcription_unavailable": 503, "model_unavailable": 503, "transcription_timeout": 504}


class OpenAiApi:
    """The views, given the services they work with (built per request by `services`)."""

    def __init__(self, services: Callable[[], FileApiServices]) -> None:
        self._services = services

    async def transcriptions(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return ApiError(405, "use POST with multipart/form-data", "method_not_allowed").response()
        services = self._services()
        try:
            caller = await authenticate_caller(request)
            ticket = services.uploads.admit(caller.key)  # 429 over the limits, 503 while draining
        except ApiError as error:
            return error.response()
        streamed = False
        try:
            upload = await self._upload(request, services, caller.name, ticket)
            if upload.request.stream:
                streamed = True
                return _event_stream(services, upload, ticket)
            transcript = await services.transcriber.transcribe(upload)
        except ApiError as error:
            return error.response()
        except SttError as exc:
            return engine_error(exc).response()
        except UploadStopped as stopped:
            return stopped_error(stopped, services).response()
        finally:
            if not streamed:
                ticket.end_request()
        body, content_type = render(transcript, upload.request.response_format, upload.request.granularities)
        return HttpResponse(body, content_type=content_type)

    async def models(self, request: HttpRequest) -> HttpResponse:
        try:
            await authenticate(request)
        except ApiError as error:
            return error.response()
        return JsonResponse(self._services().catalog.listing())

    async def model(self, request: HttpRequest, model_id: str) -> HttpResponse:
        try:
            await authenticate(request)
        except ApiError as error:
            return error.response()
        catalog = self._services().catalog
        if not catalog.knows(model_id):
            return ApiError(404, f"the model {model_id!r} does not exist", "model_not_found", "model").response()
        return JsonResponse(catalog.entry(model_id))

    async def _upload(self, request: HttpRequest, services: FileApiServices, principal: str,
                      ticket: UploadTicket) -> Upload:
        """The request's form and audio; the blocking parts on the file pool (ticket.run)."""
        limit = settings.MAX_UPLOAD_BYTES
        if _content_length(request) > limit:
            raise too_large(limit)
        fields, files = await ticket.run(_form, request)
        info = await _engine_info(services)
        parsed = parse_transcription_request(fields, services.catalog, info.supports_language)
        upload = require_file(files)
        try:
            audio = await ticket.decode(services.decoder, _source(upload), settings.MAX_FILE_SECONDS)
        except (UndecodableAudio, AudioTooLong) as exc:
            raise bad_request(str(exc), "file", "invalid_audio") from None
        return Upload(parsed, audio, principal, request.META.get("REMOTE_ADDR") or "", ticket)

    def urls(self) -> dict[str, Any]:
        """The views as Django takes them (the API authenticates by key: no CSRF)."""
        return {"transcriptions": csrf_exempt(self.transcriptions), "models": csrf_exempt(self.models),
                "model": csrf_exempt(self.model)}


@dataclass(frozen=True)
class Caller:
    name: str  # the API key's name, or "anonymous"
    key: int | None  # the key's id (uploads are limited per key); None: anonymous


async def authenticate(request: HttpRequest) -> str:
    """The name of the API key the request carries (`Authorization: Bearer ftk_…`), or
    "anonymous" when AUTH_REQUIRED is off and it carries no key of ours; ApiError 401."""
    return (await authenticate_caller(request)).name


async def authenticate_caller(request: HttpRequest) -> Caller:
    """The key a request carries, as `authenticate`; looked up on the key-lookup threads
    (stt.auth.look_up_off_loop), never behind uploads' work."""
    header = request.headers.get("Authorization", "")
    credential = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not credential and not settings.AUTH_REQUIRED or is_openai_placeholder(credential, request.path):
        return Caller("anonymous", None)  # open mode: the OpenAI SDK insists on sending some key
    if not credential:
        raise unauthorized("send an API key as Authorization: Bearer ftk_...")
    key = await look_up_off_loop(_active_key, header)
    if key is None:
        raise unauthorized("the API key is not valid (unknown or revoked)")
    return Caller(key.name, key.pk)


def _active_key(header: str) -> Any:
    key = api_key_of_request(header)
    if key is not None:
        note_key_used(key)
    return key


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _form(request: HttpRequest) -> tuple[Any, Any]:
    """The multipart form (in a thread: it reads the spooled body and writes the file)."""
    if not request.content_type.startswith("multipart/form-data"):
        raise bad_request("send multipart/form-data with the audio as `file`", "file", "invalid_content_type")
    try:
        return request.POST, request.FILES
    except RequestDataTooBig:
        raise ApiError(413, f"the form's fields besides the file exceed {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes",
                       "fields_too_large") from None
    except (MultiPartParserError, SuspiciousOperation, ValueError) as exc:
        raise bad_request(f"the multipart form cannot be read: {exc}", None, "invalid_form") from None


def _source(upload: Any) -> Any:
    """A path for an upload spooled to disk, else the file object itself."""
    path = getattr(upload, "temporary_file_path", None)
    if path is not None:
        return path()
    upload.seek(0)
    return upload


async def _engine_info(services: FileApiServices) -> EngineInfo:
    try:
        return await services.transcriber.engine.ready()
    except SttError as exc:
        raise engine_error(exc) from None


def engine_error(exc: SttError) -> ApiError:
    """An engine failure in the API's shape: 503/504 while it is unavailable or overloaded
    (with Retry-After), else 500."""
    return ApiError(ENGINE_STATUS.get(exc.code, 500), exc.message, exc.code, None, SERVER_ERROR,
                    retry_after=exc.retry_after if exc.code in ENGINE_STATUS else None)


def stopped_error(stopped: UploadStopped, services: FileApiServices) -> ApiError:
    """An upload the server ended (shutdown): 503 with Retry-After, to send it again."""
    return ApiError(503, "the server is shutting down: the transcription was stopped; send the file again",
                    "server_shutting_down", None, SERVER_ERROR, retry_after=services.uploads.retry_after())


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def _event_stream(services: FileApiServices, upload: Upload, ticket: UploadTicket) -> StreamingHttpResponse:
    events = _events(services, upload, ticket)
    ticket.end_with(events)  # even if the stream is never iterated (its client left at once)
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies pass each event on at once
    return response


async def _events(services: FileApiServices, upload: Upload, ticket: UploadTicket) -> AsyncIterator[bytes]:
    """OpenAI's streamed transcription: a `transcript.text.delta` per chunk with text, then
    `transcript.text.done`; a failure (or the server's shutdown) ends the stream with an
    `error` event."""
    texts: list[str] = []
    try:
        try:
            async for chunk in services.transcriber.chunks(upload):
                if chunk.text:
                    yield _sse({"type": "transcript.text.delta", "delta": (" " if texts else "") + chunk.text})
                    texts.append(chunk.text)
        except SttError as exc:
            yield _sse(engine_error(exc).body())
            return
        except UploadStopped as stopped:
            yield _sse(stopped_error(stopped, services).body())
            return
        yield _sse({"type": "transcript.text.done", "text": " ".join(texts)})
    finally:
        ticket.end_request()
