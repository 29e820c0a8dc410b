"""Offline API docs: Swagger UI at ``/docs`` with its JS/CSS from the ``swagger_ui_bundle`` package.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN (jsdelivr) and its favicon from
fastapi.tiangolo.com, so it stays blank on a machine without internet access. Both airloop APIs
(serving, and the lifecycle API the Airflow plugin mounts at ``/airloop``) are built with
``docs_url=None, redoc_url=None`` and get their docs here instead (:func:`mount_offline_docs`):

* ``GET /docs`` — the Swagger UI page;
* ``GET /docs/assets/<file>`` — the three files it loads (:data:`ASSETS`), served by a
  :class:`~starlette.staticfiles.StaticFiles` of the installed ``swagger_ui_bundle`` package (no
  network; ETag/304 as usual). A route per file, not a ``Mount``: a pipeline app's tenant guard
  rewrites ``path``/``root_path`` in a way a nested mount cannot follow under
  ``/t/<tenant>/<pipeline>``;
* ``GET /docs/openapi.json`` — the schema the page shows: the app's ``/openapi.json`` (OpenAPI
  3.1, unchanged) rewritten as OpenAPI 3.0 (:func:`openapi_30`), because the Swagger UI of
  ``swagger_ui_bundle`` (4.15) refuses to render 3.1 ("Unable to render this definition");
* ``GET /openapi.json`` — FastAPI's schema route, moved in front of the app's routes.

The page refers to its assets and schema with *relative* URLs (``docs/assets/…``,
``docs/openapi.json``), and the schema copy names its server relatively (``..``: the folder above
``docs/``), so the browser resolves everything against the page's own address: the docs and
"Try it out" work under any prefix the app is mounted at (``/airloop`` on the Airflow API server,
a tenant route of the serving gateway, a reverse proxy) without trusting ``root_path``. These
routes are plain Starlette routes: FastAPI dependencies of the app (the lifecycle API's admin
token) do not apply to them; they are read-only documentation. No ReDoc: its bundle and fonts
would come from a CDN.
"""

from __future__ import annotations

from typing import Any

from fastapi.openapi.docs import get_swagger_ui_html
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

#: Route of the Swagger UI page; its files and schema copy are under it.
DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
DOCS_SCHEMA_PATH = "/docs/openapi.json"
#: The files of ``swagger_ui_bundle`` the page loads (nothing else of the folder is served).
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")


def swagger_ui_dir() -> str:
    """The folder of swagger-ui-bundle.js, swagger-ui.css and the favicons (``swagger_ui_bundle``)."""
    import swagger_ui_bundle

    return str(swagger_ui_bundle.swagger_ui_path)


def openapi_30(node: Any) -> Any:
    """A copy of an OpenAPI 3.1 document (FastAPI's) in OpenAPI 3.0 form, for Swagger UI 4: the
    ``openapi`` field says 3.0.3, and the JSON Schema 2020-12 forms pydantic emits become their 3.0
    spellings — ``anyOf: [X, {type: null}]`` / ``type: [X, "null"]`` → ``nullable``, ``const`` →
    ``enum``, numeric ``exclusiveMinimum``/``exclusiveMaximum`` → ``minimum`` + ``true``, an
    ``examples`` list → ``example``. Only values of those shapes are touched (a property *named*
    ``type`` or ``const`` holds a schema object and is left alone)."""
    if isinstance(node, list):
        return [openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("anyOf", "oneOf") and isinstance(value, list) and {"type": "null"} in value:
            rest = [openapi_30(v) for v in value if v != {"type": "null"}]
            out["nullable"] = True
            if len(rest) != 1:
                out[key] = rest
            elif "$ref" in rest[0]:
                out["allOf"] = rest  # 3.0 ignores siblings of a $ref
            else:
                out.update(rest[0])
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            out["type"], out["nullable"] = (types[0] if len(types) == 1 else types), "null" in value
        elif key == "const" and not isinstance(value, (dict, list)):
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool) \
                and isinstance(value, (int, float)):
            out["minimum" if key == "exclusiveMinimum" else "maximum"], out[key] = value, True
        elif key == "examples" and isinstance(value, list):
            if value:
                out["example"] = openapi_30(value[0])
        else:
            out[key] = openapi_30(value)
    if "openapi" in out and isinstance(out["openapi"], str) and out["openapi"].startswith("3.1"):
        out["openapi"] = "3.0.3"
    return out


def mount_offline_docs(app: Any, title: str | None = None, schema_of: Any | None = None) -> None:
    """Add ``/docs``, ``/docs/assets/<file>`` and ``/docs/openapi.json`` to the FastAPI ``app``
    (built with ``docs_url=None, redoc_url=None``), in front of its routes, and move its
    ``/openapi.json`` route in front too (a catch-all ``Mount("/")`` of the serving gateway would
    otherwise take it).

    ``schema_of``: another FastAPI app whose schema ``app`` publishes (the gateway publishes its
    default pipeline's app, which it mounts at ``/``).
    """
    if not app.openapi_url:
        raise ValueError("mount_offline_docs needs the app's openapi_url")
    if schema_of is not None:
        app.openapi = schema_of.openapi
    page_title = f"{title or app.title} - Swagger UI"
    assets_rel = ASSETS_PATH.lstrip("/")
    files = StaticFiles(directory=swagger_ui_dir())
    copy: list[dict[str, Any]] = []  # the 3.0 copy, built on first use (the schema is fixed by then)

    async def swagger_ui(_: Request) -> HTMLResponse:
        # relative to the page (<prefix>/docs): docs/assets/x -> <prefix>/docs/assets/x
        return get_swagger_ui_html(
            openapi_url=DOCS_SCHEMA_PATH.lstrip("/"), title=page_title,
            swagger_js_url=f"{assets_rel}/swagger-ui-bundle.js", swagger_css_url=f"{assets_rel}/swagger-ui.css",
            swagger_favicon_url=f"{assets_rel}/favicon-32x32.png", oauth2_redirect_url=None,
        )

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            raise HTTPException(404)
        return await files.get_response(name, request.scope)

    async def docs_schema(_: Request) -> JSONResponse:
        if not copy:
            schema = openapi_30(app.openapi())
            # relative to <prefix>/docs/openapi.json: "Try it out" calls <prefix>/...
            schema.setdefault("servers", [{"url": "..", "description": "this server"}])
            copy.append(schema)
        return JSONResponse(copy[0])

    schema_routes = [r for r in app.router.routes if getattr(r, "path", None) == app.openapi_url]
    for route in schema_routes:
        app.router.routes.remove(route)
    app.router.routes[0:0] = [
        Route(DOCS_PATH, swagger_ui, methods=["GET"], include_in_schema=False),
        Route(ASSETS_PATH + "/{name}", asset, methods=["GET", "HEAD"], include_in_schema=False),
        Route(DOCS_SCHEMA_PATH, docs_schema, methods=["GET"], include_in_schema=False),
        *schema_routes,
    ]
