"""The HTTP face of ``cityseg serve`` (FastAPI): :func:`create_app` puts these routes on a
:class:`~cityseg.serve.service.Service`:

- ``POST /v1/segment?output=json|labels|color|overlay``: an image as the raw body (``Content-Type:
  image/png``, ``image/jpeg``, ...) or as the multipart field ``image`` -> the class shares (JSON, the
  default), the trainIds PNG, the colour PNG or the overlay PNG, as ``cityseg predict`` writes them;
- ``GET /v1/model``: classes, palette, input, runtime, limits, version;
- ``GET /healthz``: 200 once the model is warm, 503 before;
- ``GET /``: the page (:mod:`cityseg.serve.page`); ``/docs``: FastAPI's OpenAPI docs, with Swagger UI's
  files served from this server when ``swagger-ui-bundle`` is installed (``cityseg[serve]``: the
  docs then work offline), else from FastAPI's default CDN.

Every refusal is a 4xx with one line of JSON, ``{"error": "..."}``; a full queue is 503 with
``Retry-After``. With a token, ``/v1/*`` needs ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import hmac
import logging
from enum import Enum

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cityseg._version import __version__
from cityseg.errors import first_line
from cityseg.serve import images, page
from cityseg.serve.images import RequestError
from cityseg.serve.pool import Busy
from cityseg.serve.service import Service

log = logging.getLogger(__name__)


class Output(str, Enum):
    json = "json"
    labels = "labels"
    color = "color"
    overlay = "overlay"


_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_SEGMENT_BODY = {"requestBody": {"required": True, "content": {
    **{t: _IMAGE_BODY for t in ("image/png", "image/jpeg", "image/webp")},
    images.MULTIPART: {"schema": {"type": "object", "required": ["image"],
                                  "properties": {"image": {"type": "string", "format": "binary"}}}},
}}}
_PNG = {"content": {"image/png": {}}, "description": "labels, color or overlay: a PNG the size of the image"}
_ERRORS = {status: {"description": text, "content": {"application/json": {"example": {"error": "one line"}}}}
           for status, text in [(400, "not an image, or a damaged one"), (401, "missing or wrong bearer token"),
                                (413, "body over --max-bytes or image over --max-pixels"),
                                (415, "not an image content type"), (422, "bad query"),
                                (503, "queue full (Retry-After) or still loading")]}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every refusal: ``{"error": "one line"}``."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def _local_swagger_ui() -> str | None:
    """The folder of Swagger UI's files from the ``swagger-ui-bundle`` package, or None without it."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return str(swagger_ui_path)


def _serve_docs_locally(app: FastAPI, folder: str) -> None:
    # FastAPI's own docs page, pointed at Swagger UI's files on this server instead of a CDN
    # (FastAPI's "self-hosting JavaScript and CSS for docs"), so /docs works with no network
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-static", StaticFiles(directory=folder), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="cityseg - API docs",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon-32x32.png")


def create_app(service: Service) -> FastAPI:
    """The FastAPI app serving ``service`` (warm it up, :meth:`Service.warm_up`, before serving)."""
    swagger = _local_swagger_ui()
    app = FastAPI(title="cityseg", version=__version__, docs_url=None if swagger else "/docs",
                  description="Semantic segmentation of street scenes: POST a photo to /v1/segment.")
    if swagger:
        _serve_docs_locally(app, swagger)
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="needed when the server was started with --token")
    limits = service.settings.limits

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        token = service.settings.token
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            what = "wrong bearer token" if given else "missing bearer token"
            raise RequestError(401, f"{what}: send the header 'Authorization: Bearer TOKEN'",
                               {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        given = f" (got {first['input']!r})" if "input" in first and first["input"] is not None else ""
        return error(422, f"{where}: {first.get('msg', 'invalid')}{given}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("cityseg serve: %s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, f"internal error: {first_line(exc)}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page.html(), headers={"Content-Security-Policy": page.CSP})

    @app.get("/healthz", summary="200 once the model is loaded and warm, 503 before")
    async def healthz() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok", "model": service.name})

    @app.get("/v1/model", dependencies=[Depends(authorize)], responses=_ERRORS,
             summary="the classes, palette, input normalisation, runtime and version")
    async def model() -> JSONResponse:
        return JSONResponse(service.model_info())

    @app.post("/v1/segment", dependencies=[Depends(authorize)], openapi_extra=_SEGMENT_BODY,
              responses={200: _PNG, **_ERRORS}, summary="segment one image")
    async def segment(request: Request, output: Output = Query(
            Output.json, description="json: size and class shares; labels: trainIds PNG; color: palette PNG; "
                                     "overlay: palette over the photo (PNG)")) -> Response:
        if not service.ready:
            raise RequestError(503, "the model is still warming up", {"Retry-After": "5"})
        data = await upload(request, limits)
        images.probe(data, limits)
        prepare, finish = service.segment(data, output.value)
        result = await service.pool.run(prepare, finish)
        if isinstance(result, dict):
            return JSONResponse(result)
        return Response(result, media_type="image/png")

    return app


async def read_body(request: Request, limits: images.Limits) -> bytes:
    """The body, refused with 413 as soon as it is over ``max_bytes`` (by Content-Length, or counted)."""
    images.check_length(request.headers.get("content-length"), limits)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_bytes:
                raise RequestError(413, images.too_many_bytes(limits))
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "the client went away before sending the whole body") from None
    return b"".join(chunks)


async def upload(request: Request, limits: images.Limits) -> bytes:
    """The image bytes of a request: its body (an image content type) or its multipart field ``image``."""
    content_type = request.headers.get("content-type")
    multipart = images.media_type(content_type) == images.MULTIPART
    if not multipart:
        images.check_image_type(content_type)
    body = await read_body(request, limits)
    return await _multipart_image(request, body) if multipart else body


async def _multipart_image(request: Request, body: bytes) -> bytes:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise RequestError(400, f"bad multipart body: {exc.message}") from None
    try:
        part = form.get("image")
        if part is None:
            raise RequestError(400, f"the {images.MULTIPART} body has no field 'image' (curl -F image=@photo.png)")
        if not isinstance(part, UploadFile):
            raise RequestError(400, "the field 'image' must be a file (curl -F image=@photo.png), not text")
        images.check_image_type(part.content_type, "the field 'image'")
        return await part.read()
    finally:
        await form.close()
