"""``/docs`` (Swagger UI) and ``/redoc`` with their JavaScript, CSS and icon served by the grader
from the ``fastapi-offline`` package's data: the pages work with no internet (no CDN, no web
fonts, no online validator; ReDoc's one hard-coded image, its footer logo, is served inline)."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSET_URL = "/docs-assets"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
_CACHE = {"Cache-Control": "public, max-age=86400"}
# the ReDoc bundle's footer logo points at a CDN: a blank inline image instead (no request at all)
_REDOC_LOGO = (b"https://cdn.redoc.ly/redoc/logo-mini.svg",
               b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/%3E")
_patched: dict[str, bytes] = {}

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - Swagger UI",
                               oauth2_redirect_url=OAUTH2_REDIRECT, swagger_js_url=f"{root}{ASSET_URL}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{ASSET_URL}/swagger-ui.css", swagger_favicon_url=f"{root}{ASSET_URL}/favicon.png",
                               swagger_ui_parameters={"validatorUrl": None})


@router.get(OAUTH2_REDIRECT)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - ReDoc",
                          redoc_js_url=f"{root}{ASSET_URL}/redoc.standalone.js", redoc_favicon_url=f"{root}{ASSET_URL}/favicon.png",
                          with_google_fonts=False)


@router.get(ASSET_URL + "/{name}")
async def asset(name: str) -> Response:
    path = ASSETS / name
    if "/" in name or name.startswith(".") or path.suffix not in _TYPES or not path.is_file():
        raise HTTPException(404, f"no documentation asset {name!r}")
    if name == "redoc.standalone.js":
        if name not in _patched:
            _patched[name] = path.read_bytes().replace(*_REDOC_LOGO)
        return Response(_patched[name], media_type=_TYPES[path.suffix], headers=_CACHE)
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_CACHE)
