"""The model's input schema: pipeline config -> MLflow signature -> request validator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    TypeAdapter,
    ValidationError,
    create_model,
)

from airloop.core.pipeline import PipelineConfig
from airloop.models.trust import ModelLoadError

#: At most this many field errors are returned in one 422 answer.
MAX_REPORTED_ERRORS = 100


class RecordValidationError(ValueError):
    """Request records do not match the model signature; ``errors`` are field-level dicts."""

    def __init__(self, errors: list[dict[str, Any]], status_code: int = 422) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors
        self.status_code = status_code


# --------------------------------------------------------------------------------------------
# Request records: a pydantic model built from the MLflow signature
# --------------------------------------------------------------------------------------------


_INT32 = (-(2**31), 2**31 - 1)


_INT64 = (-(2**63), 2**63 - 1)


def _field_type(data_type: Any) -> Any:
    """Pydantic type for one MLflow column type (JSON-strict: no strings for numbers)."""
    from mlflow.types import DataType

    if not isinstance(data_type, DataType):
        raise ModelLoadError(f"unsupported column type in the model signature: {data_type}")
    if data_type is DataType.boolean:
        return StrictBool
    if data_type in (DataType.integer, DataType.long):
        low, high = _INT32 if data_type is DataType.integer else _INT64
        return Annotated[int, Strict(), Field(ge=low, le=high)]
    if data_type in (DataType.float, DataType.double):
        return Annotated[float, Strict(), Field(allow_inf_nan=False)]
    if data_type is DataType.string:
        return StrictStr
    if data_type is DataType.datetime:
        return datetime
    if data_type is DataType.binary:
        return bytes
    raise ModelLoadError(f"unsupported column type in the model signature: {data_type}")


@dataclass(frozen=True, slots=True)
class InputColumn:
    """One signature column: its name, MLflow type, whether it is required, and its attribute."""

    name: str
    type: str
    required: bool
    attr: str
    numpy_dtype: np.dtype | None


def _to_array(column: InputColumn, values: list[Any]) -> Any:
    """Column values as the array the model was trained on (nulls become NaN)."""
    if column.type == "datetime":
        return pd.to_datetime(values)
    dtype = column.numpy_dtype
    has_null = None in values
    if dtype is None or (has_null and dtype.kind == "b"):  # strings, bytes, nullable booleans
        if has_null:
            values = [np.nan if v is None else v for v in values]
        return np.array(values, dtype=object)
    if has_null and dtype.kind in "iu":  # a nullable integer column travels as float, like pandas
        return np.array(values, dtype=np.float64)
    return np.array(values, dtype=dtype)  # floats: None -> NaN


class RecordSchema:
    """Validates request records against a model signature and turns them into a DataFrame."""

    def __init__(self, signature_inputs: Any, title: str = "Record") -> None:
        """Build the pydantic model from ``signature.inputs`` (an MLflow column-based Schema)."""
        from mlflow.types import DataType

        if signature_inputs is None or signature_inputs.is_tensor_spec():
            raise ModelLoadError("the model signature must describe named columns (not tensors)")
        columns: list[InputColumn] = []
        fields: dict[str, Any] = {}
        for i, spec in enumerate(signature_inputs.inputs):
            if spec.name is None:
                raise ModelLoadError("the model signature has an unnamed input column")
            py_type = _field_type(spec.type)
            attr = f"c{i}"
            if spec.required:
                fields[attr] = (py_type, Field(..., alias=spec.name))
            else:
                fields[attr] = (py_type | None, Field(None, alias=spec.name))
            numpy_dtype = None
            if spec.type not in (DataType.string, DataType.binary, DataType.datetime):
                numpy_dtype = np.dtype(spec.type.to_numpy())
            columns.append(InputColumn(spec.name, spec.type.name, bool(spec.required), attr, numpy_dtype))
        self.columns: tuple[InputColumn, ...] = tuple(columns)
        self.names: list[str] = [c.name for c in columns]
        self.model: type[BaseModel] = create_model(  # type: ignore[call-overload]
            title, __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields
        )
        self._many = TypeAdapter(list[self.model])  # type: ignore[name-defined]

    def describe(self) -> list[dict[str, Any]]:
        """The input columns as JSON-friendly dicts."""
        return [{"name": c.name, "type": c.type, "required": c.required} for c in self.columns]

    def validate(self, records: list[Any]) -> list[BaseModel]:
        """Validate ``records``; raise :class:`RecordValidationError` with field-level messages."""
        try:
            if len(records) == 1:
                return [self.model.model_validate(records[0])]
            return self._many.validate_python(records)
        except ValidationError as err:
            raise RecordValidationError(_field_errors(err, single=len(records) == 1)) from None

    def as_dict(self, row: BaseModel) -> dict[str, Any]:
        """A validated record as ``{column: value}`` in signature order (absent optional columns: None).

        The model's ``__dict__`` holds exactly its fields (``extra="forbid"``) in declaration order,
        which is the signature's."""
        return dict(zip(self.names, row.__dict__.values()))

    def to_frame(self, rows: Sequence[BaseModel]) -> pd.DataFrame:
        """One DataFrame with the signature's columns, dtypes and order."""
        dicts = [row.__dict__ for row in rows]
        data = {c.name: _to_array(c, [d[c.attr] for d in dicts]) for c in self.columns}
        return pd.DataFrame(data, columns=self.names, copy=False)


def _field_errors(err: ValidationError, single: bool) -> list[dict[str, Any]]:
    """Convert a pydantic error into ``[{"record", "field", "message"}]`` (capped)."""
    out = []
    for e in err.errors(include_url=False)[:MAX_REPORTED_ERRORS]:
        loc = list(e["loc"])
        record = 0 if single else (loc.pop(0) if loc and isinstance(loc[0], int) else None)
        field_name = ".".join(str(p) for p in loc) or None
        out.append({"record": record, "field": field_name, "message": e["msg"]})
    return out


def model_signature(config: PipelineConfig, output_example):
    """MLflow signature from the pipeline's schema: numbers as double, categories as string;
    a column may be null in requests only if the config tolerates nulls for it."""
    from mlflow.models import infer_signature
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([
        ColSpec("string" if spec.type == "category" else "double", name, required=spec.max_null_fraction == 0)
        for name, spec in config.features.items()
    ])
    return ModelSignature(inputs=inputs, outputs=infer_signature(None, output_example).outputs)
