"""The serving API's OpenAPI document: the request bodies that routes parse by hand.

``POST /predict``, ``/feedback`` and ``/reload`` read ``await request.body()`` and validate it
themselves (the fast path, and 422 answers that name record and field), so FastAPI cannot infer
their bodies. They declare them with ``openapi_extra`` instead (:func:`body`), and
:func:`install_openapi` adds the schemas those refer to — built per pipeline, because every app
serves one (:func:`pipeline_schemas`):

* ``PredictRecord``: one record, an object of the pipeline's features with the types, ranges,
  categories and nullability its file declares (no other field);
* ``PredictBatch``: ``{"records": [...], "request_ids"?: [...], "event_ts"?: [...]}``;
* ``PredictColumns``: the same batch column-wise, ``{"columns": {feature: [...]}, ...}``;
* ``FeedbackLabel`` / ``FeedbackBatch``: one label (one of the pipeline's classes, or a number)
  or ``{"items": [...]}``;
* ``ReloadRequest`` (:class:`airloop.serving.schema.ReloadRequest`).

The declared ranges and categories are the pipeline's contract; a record outside them is still
answered with ``serving.out_of_domain: flag`` (and flagged in the log), refused with ``reject``.
``POST /explain``'s ``records`` are declared as ``PredictRecord`` items too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, TypeAdapter, create_model

from airloop.core.pipeline import ColumnSpec, PipelineConfig
from airloop.serving.protocol import OPEN_ROUTES
from airloop.serving.schema import MAX_REQUEST_ID_LENGTH, ReloadRequest, max_records

#: Where the generated schemas live in the document.
REF = "#/components/schemas/{model}"

#: The ``X-Tenant`` header as an operation parameter (checked by :func:`airloop.serving.schema.request_tenant`).
TENANT_PARAMETER: dict[str, Any] = {
    "name": "X-Tenant", "in": "header", "required": False,
    "description": "Tenant of the request (default: the pipeline's); only the route's own tenant is accepted "
                   "where the pipeline has one.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[A-Za-z0-9_.:@-]+$"},
}

#: The ``X-Request-Key`` header (the A/B routing key of tests keyed by the header).
REQUEST_KEY_PARAMETER: dict[str, Any] = {
    "name": "X-Request-Key", "in": "header", "required": False,
    "description": "Routing key of an A/B test whose key_field is the header (1-200 printable characters).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}


#: The ``X-Airloop-Replay-Interval`` header of a replay (admin token; see :mod:`airloop.serving.window`).
REPLAY_INTERVAL_PARAMETER: dict[str, Any] = {
    "name": "X-Airloop-Replay-Interval", "in": "header", "required": False,
    "description": "A replay's interval <start>/<end> (ISO 8601, admin token only): every event_ts must lie in "
                   "[start, end) instead of the window around now.",
    "schema": {"type": "string", "maxLength": 200},
}

#: The ``correct`` query parameter of ``POST /feedback`` (admin token only).
CORRECT_PARAMETER: dict[str, Any] = {
    "name": "correct", "in": "query", "required": False,
    "description": "true: apply a different label to an already-labelled prediction as an audited correction "
                   "(admin token only); without it such a label is refused (409) and kept as a revision.",
    "schema": {"type": "boolean", "default": False},
}


def _feature_type(spec: ColumnSpec) -> Any:
    """The JSON type of one feature's values as serving accepts them (see
    :func:`airloop.models.schema.signature_type`: an int feature that may be null travels as a double)."""
    bounds = {k: v for k, v in (("ge", spec.min), ("le", spec.max)) if v is not None}
    if spec.type == "bool":
        return StrictBool
    if spec.type == "category":
        return Literal[tuple(spec.values)] if spec.values else StrictStr  # type: ignore[valid-type]
    if spec.type == "int" and spec.max_null_fraction == 0:
        return Annotated[StrictInt, Field(**bounds)]
    return Annotated[float, Field(**bounds, allow_inf_nan=False)]  # JSON Schema "number": integers too


def record_model(config: PipelineConfig) -> type[BaseModel]:
    """The pydantic model of one ``/predict`` record of ``config`` (documentation only: serving
    validates against the served version's signature)."""
    fields: dict[str, Any] = {}
    for i, (name, spec) in enumerate(config.features.items()):
        py_type = _feature_type(spec)
        if spec.max_null_fraction > 0:
            fields[f"f{i}"] = (py_type | None, Field(None, alias=name))
        else:
            fields[f"f{i}"] = (py_type, Field(..., alias=name))
    return create_model(  # type: ignore[call-overload]
        "PredictRecord", __config__=ConfigDict(extra="forbid", title="PredictRecord"),
        __doc__=f"One record of pipeline {config.name}: its features (nulls only where the pipeline tolerates them).",
        **fields,
    )


def _label_type(config: PipelineConfig) -> Any:
    if config.task == "regression":
        return Annotated[float, Field(allow_inf_nan=False)]
    classes = list(config.classes or [])
    values = classes + [str(c) for c in classes if not isinstance(c, str)]
    return Literal[tuple(values)] if values else Any  # type: ignore[valid-type]


def pipeline_schemas(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """``{"predict", "feedback", "reload"}`` body schemas (refs into components) plus, under
    ``"components"``, every schema they refer to."""
    limit = max_records()
    request_id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_REQUEST_ID_LENGTH)]
    record = record_model(config)
    batch = create_model(
        "PredictBatch", __config__=ConfigDict(extra="forbid"),
        __doc__="A batch: the records and, optionally, one client request id and one business time per record.",
        records=(list[record], Field(..., min_length=1, max_length=limit)),  # type: ignore[valid-type]
        request_ids=(list[request_id] | None, Field(None, description="Unique ids, one per record")),
        event_ts=(list[Annotated[str, Field(json_schema_extra={"format": "date-time"})]] | None,
                  Field(None, description="ISO-8601 business times, one per record (naive = UTC)")),
    )
    column_fields: dict[str, Any] = {}
    for i, (name, spec) in enumerate(config.features.items()):
        value = _feature_type(spec) | None if spec.max_null_fraction > 0 else _feature_type(spec)
        optional = spec.max_null_fraction > 0  # may be left out (not sent as null)
        column_fields[f"f{i}"] = (list[value], Field(None if optional else ..., min_length=1,  # type: ignore[valid-type]
                                                     max_length=limit, alias=name))
    columns = create_model(  # type: ignore[call-overload]
        "PredictColumnValues", __config__=ConfigDict(extra="forbid", title="PredictColumnValues"),
        __doc__="One list of values per feature, all of one length (an optional feature left out is null).",
        **column_fields,
    )
    column_batch = create_model(
        "PredictColumns", __config__=ConfigDict(extra="forbid"),
        __doc__="A batch column-wise (the cheaper form for large batches): one list per feature and, "
                "optionally, one client request id and one business time per record.",
        columns=(columns, ...),
        request_ids=(list[request_id] | None, Field(None, description="Unique ids, one per record")),
        event_ts=(list[Annotated[str, Field(json_schema_extra={"format": "date-time"})]] | None,
                  Field(None, description="ISO-8601 business times, one per record (naive = UTC)")),
    )
    label = create_model(
        "FeedbackLabel", __config__=ConfigDict(extra="forbid"),
        __doc__="The label of an earlier prediction, by its request id.",
        request_id=(request_id, ...),
        label=(_label_type(config), Field(..., description="One of the pipeline's classes, or the value")),
        label_ts=(Annotated[StrictStr, Field(json_schema_extra={"format": "date-time"})] | None,
                  Field(None, description="When the label became known (default: now)")),
    )
    items = create_model(
        "FeedbackBatch", __config__=ConfigDict(extra="forbid"), __doc__="Several labels.",
        items=(list[label], Field(..., min_length=1, max_length=limit)),  # type: ignore[valid-type]
    )
    out: dict[str, Any] = {}
    components: dict[str, Any] = {}
    for key, annotation in (("predict", Union[record, batch, column_batch]), ("feedback", Union[label, items]),
                            ("reload", ReloadRequest)):
        schema = TypeAdapter(annotation).json_schema(ref_template=REF)
        components.update(schema.pop("$defs", {}))
        if "$ref" not in schema and "anyOf" not in schema:  # a model at the top: put it in components too
            title = schema.get("title", key)
            components[title] = schema
            schema = {"$ref": REF.format(model=title)}
        out[key] = schema
    out["components"] = components
    return out


def body(name: str, description: str, required: bool = True) -> dict[str, Any]:
    """The ``openapi_extra`` of a route whose body is :func:`pipeline_schemas`' ``name``: a
    placeholder that :func:`install_openapi` fills with the app's pipeline schema."""
    return {"requestBody": {"description": description, "required": required,
                            "content": {"application/json": {"x-airloop-body": name}}}}


#: The security scheme of the document: ``Authorization: Bearer <token>`` (the tenant's or the admin token).
SECURITY_SCHEME = "bearerToken"


def declare_security(document: dict[str, Any]) -> None:
    """Declare the bearer scheme and, per operation, whether it needs it: every route but the
    probes (``/health``, ``/ready``, ``/metrics``) and the documentation does (401/403 answers are
    serving's own JSON, :mod:`airloop.serving.auth`; ``AIRLOOP_SERVING_OPEN_ROUTES`` may open some)."""
    document.setdefault("components", {}).setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "http", "scheme": "bearer",
        "description": "The tenant's token (AIRLOOP_TENANT_TOKENS) or the admin token (AIRLOOP_ADMIN_TOKEN)."}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            if isinstance(operation, dict):
                operation["security"] = [] if path in OPEN_ROUTES else [{SECURITY_SCHEME: []}]


def install_openapi(app: FastAPI, config: PipelineConfig) -> None:
    """Make ``app.openapi()`` carry ``config``'s body schemas (built once, on first use)."""
    cached: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if cached:
            return cached[0]
        document = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                               description=app.description, routes=app.routes, servers=app.servers)
        schemas = pipeline_schemas(config)
        components = document.setdefault("components", {}).setdefault("schemas", {})
        components.update(schemas.pop("components"))
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                content = (operation.get("requestBody") or {}).get("content", {}).get("application/json")
                if content is not None and "x-airloop-body" in content:
                    content["schema"] = schemas[content.pop("x-airloop-body")]
        declare_security(document)
        explain = components.get("ExplainRequest", {}).get("properties", {}).get("records")
        if explain is not None:  # records "as /predict takes them"
            for option in explain.get("anyOf", [explain]):
                if option.get("type") == "array":
                    option["items"] = {"$ref": REF.format(model="PredictRecord")}
        cached.append(document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
