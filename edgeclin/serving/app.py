"""The FastAPI application: routes of both APIs, auth, limits, errors, request log and metrics.

``create_app(state)`` builds it from loaded models; ``edgeclin.serving.server`` runs it under
uvicorn. Bodies are read here with the size limit applied while reading, and parsed by
``protocol``; inference goes through each model's ``MicroBatcher``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeclin.errors import EdgeclinError
from edgeclin.logs import get_logger
from edgeclin.schema import Example
from edgeclin.serving.auth import CHALLENGE, AuthError, BearerAuth
from edgeclin.serving.batching import BatchResult, MicroBatcher, QueueFull
from edgeclin.serving.config import ServeConfig
from edgeclin.serving.metrics import NO_MODEL, ServerMetrics
from edgeclin.serving.protocol import (
    ApiError,
    ErrorResponse,
    InferRequest,
    InferResponse,
    PredictRequest,
    PredictResponse,
    check_outputs,
    examples_of,
    parse_json,
    v2_outputs,
    v2_texts,
    validated,
)
from edgeclin.serving.registry import ServedModel

log = get_logger(__name__)
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
BEARER = HTTPBearer(auto_error=False, description="The key in the server's --api-key-file")  # for /docs
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 413, 422, 503)}


@dataclass
class ServingState:
    """Everything the routes share: the models, their batchers, the limits, auth and metrics."""

    models: dict[str, ServedModel]
    config: ServeConfig
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    draining: bool = False

    def __post_init__(self) -> None:
        self.auth = BearerAuth(self.config.api_key)
        for name, model in self.models.items():
            self.metrics.add_model(name, model.load_seconds, model.predictor.task, model.predictor.backend,
                                   model.predictor.precision, model.digest)
            self.batchers[name] = MicroBatcher(
                name, model.predict_rows, worker=model.worker,
                max_batch=self.config.max_batch, max_wait_s=self.config.max_wait_ms / 1000,
                max_queue=self.config.max_queue, metrics=self.metrics)

    def model(self, name: str, request: Request) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise ApiError(404, f"no model named {name!r} (served: {', '.join(self.models)})")
        request.scope["edgeclin"]["model"] = name
        return model

    async def run(self, name: str, examples: list[Example], request: Request) -> BatchResult:
        info = request.scope["edgeclin"]
        info["texts"] = len(examples)
        try:
            result = await self.batchers[name].submit(examples)
        except QueueFull as exc:
            raise ApiError(503, f"model {name} is at capacity ({self.config.max_queue} texts queued); retry later",
                           {"Retry-After": str(exc.retry_after)}) from None
        except EdgeclinError as exc:
            raise ApiError(422, str(exc)) from None
        info.update(queue_ms=1000 * result.queue_seconds, batch_ms=1000 * result.run_seconds,
                    batch=result.batch_texts)
        return result


def create_app(state: ServingState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for batcher in state.batchers.values():
            batcher.start()
        yield
        for batcher in state.batchers.values():  # uvicorn has drained the connections by now
            await batcher.close()

    app = FastAPI(title="edgeclin serve", version=_version(), lifespan=lifespan,
                  description="Clinical text classification and NER with torch-free ONNX bundles: the Open "
                  "Inference Protocol v2 (KServe, Triton) and a plain JSON API.")
    app.state.serving = state
    _add_error_handlers(app)
    app.add_middleware(RequestLog, metrics=state.metrics)
    app.include_router(_health_routes(state))
    protected = [Depends(_auth_dependency(state.auth))] if state.auth.enabled else []
    app.include_router(_model_routes(state), dependencies=protected)
    app.include_router(_inference_routes(state), dependencies=protected)
    _document_bodies(app, {"/v1/models/{name}/predict": PredictRequest, "/v2/models/{name}/infer": InferRequest})
    return app


def _health_routes(state: ServingState) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/v2/health/live", summary="The process is up")
    async def live() -> dict:
        return {"live": True}

    @router.get("/v2/health/ready", summary="Every model is loaded and the server is not draining",
                responses={503: {"description": "Draining after SIGTERM"}})
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": not state.draining}, status_code=503 if state.draining else 200)

    return router


def _model_routes(state: ServingState) -> APIRouter:
    router = APIRouter(tags=["models"], responses=ERRORS)

    @router.get("/v2", summary="Server metadata (v2)")
    async def server_metadata() -> dict:
        return {"name": "edgeclin", "version": _version(), "extensions": []}

    @router.get("/v2/models/{name}", summary="Model metadata (v2): task, labels, max length, backend, "
                "precision, bundle digest")
    async def model_metadata(name: str, request: Request) -> dict:
        return state.model(name, request).v2_metadata()

    @router.get("/v2/models/{name}/ready", summary="Model readiness (v2)")
    async def model_ready(name: str, request: Request) -> JSONResponse:
        state.model(name, request)
        return JSONResponse({"name": name, "ready": not state.draining}, status_code=503 if state.draining else 200)

    @router.get("/v1/models", summary="The served models and their settings")
    async def list_models() -> dict:
        return {"models": [{"name": m.name, **m.parameters()} for m in state.models.values()]}

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        data, content_type = state.metrics.render()
        return Response(data, media_type=content_type)

    return router


def _inference_routes(state: ServingState) -> APIRouter:
    router = APIRouter(tags=["inference"], responses=ERRORS)
    limits = state.config

    @router.post("/v1/models/{name}/predict", summary="Predict: the rows `edgeclin predict` writes",
                 responses={200: {"model": PredictResponse}})
    async def predict(name: str, request: Request) -> Response:
        model = state.model(name, request)
        with state.batchers[name].receiving():
            parsed = validated(PredictRequest, parse_json(await read_body(request, limits.max_body_bytes)))
            examples = examples_of(model, parsed.texts, parsed.pairs, limits.max_texts)
        result = await state.run(name, examples, request)
        return json_response({"model": name, "model_version": model.version, "rows": result.rows},
                             headers=_server_timing(result))

    @router.post("/v2/models/{name}/infer", summary="Inference (v2): BYTES input `text` (and `text_pair`)",
                 responses={200: {"model": InferResponse}})
    async def infer(name: str, request: Request) -> Response:
        model = state.model(name, request)
        with state.batchers[name].receiving():
            parsed = validated(InferRequest, parse_json(await read_body(request, limits.max_body_bytes)))
            texts, pairs = v2_texts(model, parsed)
            examples = examples_of(model, texts, pairs, limits.max_texts, texts_field="text",
                                   pairs_field="text_pair")
            check_outputs(model, parsed.outputs)
        result = await state.run(name, examples, request)
        answer = {"model_name": name, "model_version": model.version,
                  **({"id": parsed.id} if parsed.id is not None else {}),
                  "outputs": v2_outputs(model, result.rows, parsed.outputs)}
        return json_response(answer, headers=_server_timing(result))

    return router


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body: {int(declared)} bytes; the limit is {limit} (--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # no Content-Length (chunked), or a client that sends more than it declared
            raise ApiError(413, f"body: more than {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    request.scope["edgeclin"]["bytes"] = size
    return b"".join(chunks)


def json_response(payload: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload, ensure_ascii=False).encode(), status_code=status, headers=headers,
                    media_type="application/json")


def _server_timing(result: BatchResult) -> dict[str, str]:
    """Where the time went (ms), for clients and load tests: waiting for the worker, then running the batch."""
    return {"Server-Timing": f"queue;dur={1000 * result.queue_seconds:.3f}, batch;dur={1000 * result.run_seconds:.3f}"}


def _auth_dependency(auth: BearerAuth):
    async def require_key(request: Request, _credentials: Annotated[Any, Depends(BEARER)]) -> None:
        try:
            auth.check(request.headers.get("authorization"))
        except AuthError as exc:
            raise ApiError(401, str(exc), CHALLENGE) from None

    return require_key


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: ApiError) -> Response:
        return json_response({"error": exc.message}, exc.status, exc.headers)

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return json_response({"error": str(exc.detail)}, exc.status_code, dict(exc.headers or {}))

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return json_response({"error": f"{where}: {first.get('msg')}"}, 422)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _document_bodies(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> None:
    """Put the request schemas in the OpenAPI document (the routes read and check their bodies themselves)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in bodies.items():
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
            schema["paths"][path]["post"]["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class RequestLog:
    """ASGI middleware: a request id, the metrics and one log line per request; a 500 for anything unexpected.

    The log line holds the request id, route, model, number of texts, body size, status and timings:
    never a note's text, and not the message of an unexpected error (it could quote one).
    """

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        info: dict[str, Any] = {"model": NO_MODEL, "texts": 0, "bytes": 0}
        scope["edgeclin"] = info
        status = {"code": 500, "sent": False}

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                status.update(code=message["status"], sent=True)
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error(f"request {request_id}: internal error ({type(exc).__name__})")
            if not status["sent"]:
                await _send_error(send_with_id, 500, f"internal error (request {request_id})")
        finally:
            self.metrics.in_flight.dec()
            self._record(scope, request_id, info, status["code"], time.perf_counter() - started)

    def _record(self, scope, request_id: str, info: dict, status: int, seconds: float) -> None:
        endpoint = getattr(scope.get("route"), "path", None) \
            or (scope["path"] if scope["path"] in DOC_PATHS else "unmatched")  # never a raw path: unbounded
        self.metrics.observe_request(info["model"], endpoint, status, seconds)
        timings = "".join(f" {key}={info[key]:.1f}" for key in ("queue_ms", "batch_ms") if key in info)
        batch = f" batch={info['batch']}" if "batch" in info else ""
        log.info(f"request {request_id} {scope['method']} {endpoint} model={info['model']} texts={info['texts']} "
                 f"bytes={info['bytes']} status={status}{batch}{timings} total_ms={1000 * seconds:.1f}")


def _request_id(scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            given = value.decode("latin-1")
            if REQUEST_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex[:16]


async def _send_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _version() -> str:
    try:
        return metadata.version("edgeclin")
    except metadata.PackageNotFoundError:
        return "unknown"
