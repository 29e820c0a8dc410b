"""The model's input schema: pipeline config -> MLflow signature -> request validator."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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

from airloop.core.pipeline import ColumnSpec, PipelineConfig
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


class ValidatedRecords(Sequence):
    """Validated request records held column-wise: per signature column, the values in record
    order as the request validator produced them (absent optional columns as None, ints of float
    columns as floats). Indexing or iterating yields one record as ``{column: value}`` in
    signature order (built once, on first use); :meth:`RecordSchema.to_frame` reads the columns
    directly, without records."""

    __slots__ = ("names", "columns", "_records")

    def __init__(self, names: Sequence[str], columns: list[list[Any]]) -> None:
        self.names = tuple(names)
        #: One list per signature column, all of the same length.
        self.columns = columns
        self._records: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def records(self) -> list[dict[str, Any]]:
        """The records as dicts (signature order); the same list on every call."""
        if self._records is None:
            names = self.names
            self._records = [dict(zip(names, values)) for values in zip(*self.columns)]
        return self._records

    def __getitem__(self, i: Any) -> Any:
        return self.records()[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())

    def column(self, name: str) -> list[Any]:
        """The values of one column."""
        return self.columns[self.names.index(name)]

    def take(self, idx: Sequence[int]) -> "ValidatedRecords":
        """The records at positions ``idx``, in that order."""
        if len(idx) == len(self) and all(i == j for j, i in enumerate(idx)):
            return self
        return ValidatedRecords(self.names, [[col[i] for i in idx] for col in self.columns])

    @classmethod
    def concat(cls, parts: Sequence["ValidatedRecords"]) -> "ValidatedRecords":
        """The records of several parts (same signature) one after the other."""
        if len(parts) == 1:
            return parts[0]
        width = len(parts[0].names)
        return cls(parts[0].names, [[v for part in parts for v in part.columns[k]] for k in range(width)])


#: Fewer records than this are validated by pydantic alone: for one record its per-record model
#: is faster than a pass per column (15 vs 70 us for 13 columns); from about this many on, the
#: column-wise pass wins (100 records: about half the time, and no pydantic object per record).
COLUMNWISE_MIN_RECORDS = 8


#: A column the record does not have (the column-wise validator's placeholder).
_ABSENT = object()


#: Python types the column-wise validator accepts per MLflow type, exactly as the strict pydantic
#: field does (``bool`` is no ``int``; ``int`` is accepted for float columns and becomes a float).
_FAST_TYPES: dict[str, frozenset[type]] = {
    "boolean": frozenset({bool}), "integer": frozenset({int}), "long": frozenset({int}),
    "float": frozenset({float, int}), "double": frozenset({float, int}), "string": frozenset({str}),
}


def _fast_column(column: InputColumn, values: list[Any]) -> list[Any] | None:
    """``values`` of one column as the strict pydantic field validates them, or None when any of
    them would fail (or is of a type this check leaves to pydantic): one pass per check."""
    kinds = set(map(type, values))
    if object in kinds:  # absent from some records
        if column.required:
            return None
        values = [None if v is _ABSENT else v for v in values]
        kinds.discard(object)
        kinds.add(type(None))
    if type(None) in kinds:
        if column.required:
            return None
        kinds.discard(type(None))
        present = [v for v in values if v is not None]
    else:
        present = values
    if not kinds <= _FAST_TYPES[column.type]:
        return None
    if not present:  # every value null (an optional column)
        return values
    if column.type in ("float", "double"):
        if int in kinds:
            try:
                values = [float(v) if v.__class__ is int else v for v in values]
            except OverflowError:
                return None
            present = [v for v in values if v is not None]
        if not all(map(math.isfinite, present)):
            return None
    elif column.type in ("integer", "long"):
        low, high = _INT32 if column.type == "integer" else _INT64
        if min(present) < low or max(present) > high:
            return None
    return values


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
        self._by_name: dict[str, InputColumn] = {c.name: c for c in columns}
        #: Whether every column has a type the column-wise validator checks (else pydantic does it all).
        self._columnwise = all(c.type in _FAST_TYPES for c in columns)
        #: The inputs the model version was trained for (set when the version is loaded with its
        #: pipeline, :func:`feature_domain`); None: nothing is checked.
        self.domain: FeatureDomain | None = None

    def describe(self) -> list[dict[str, Any]]:
        """The input columns as JSON-friendly dicts."""
        return [{"name": c.name, "type": c.type, "required": c.required} for c in self.columns]

    def validate(self, records: list[Any]) -> ValidatedRecords:
        """Validate ``records``; raise :class:`RecordValidationError` with field-level messages.

        Column-wise first (:meth:`validate_columns`: one pass per column and check over all
        records, no object per record); when that finds any problem — or meets a value it leaves
        to pydantic — the records go through the pydantic model, whose errors (record index,
        field, message) are the answer, exactly as without the column-wise pass."""
        fast = self.validate_columns(records) if len(records) >= COLUMNWISE_MIN_RECORDS else None
        if fast is not None:
            return fast
        return self._columns_of(self.validate_models(records))

    def validate_models(self, records: list[Any]) -> list[BaseModel]:
        """Validate ``records`` one pydantic object per record (the reference validator)."""
        try:
            if len(records) == 1:
                return [self.model.model_validate(records[0])]
            return self._many.validate_python(records)
        except ValidationError as err:
            raise RecordValidationError(_field_errors(err, single=len(records) == 1)) from None

    def validate_columns(self, records: list[Any]) -> ValidatedRecords | None:
        """The records validated column by column (types, nulls, required columns, integer ranges,
        finite floats, unknown fields), or None when any record fails a check or holds something
        only pydantic decides (a non-dict record, a datetime or binary column, a subclass of a
        JSON type): :meth:`validate` then lets pydantic find and word the errors."""
        if not self._columnwise or not records or not all(r.__class__ is dict for r in records):
            return None
        columns = []
        found = 0
        for column in self.columns:
            name = column.name
            values = [r.get(name, _ABSENT) for r in records]
            checked = _fast_column(column, values)
            if checked is None:
                return None
            found += len(values) - values.count(_ABSENT)
            columns.append(checked)
        if found != sum(map(len, records)):  # some record has a field the signature does not
            return None
        return ValidatedRecords(self.names, columns)

    def validate_column_lists(self, columns: Mapping[str, list[Any]], records: Callable[[], list[Any]]
                              ) -> ValidatedRecords:
        """Validate a column-wise batch (``{feature: [values]}``, every list of one length) without
        an object per record; raise :class:`RecordValidationError` like :meth:`validate`.

        A column the signature does not have is refused by name; an optional column that is not
        sent is all null. When any value fails a check (or is one only pydantic decides), the
        batch's ``records()`` go through :meth:`validate`, so the errors name record and field
        exactly as for ``{"records": [...]}``."""
        unknown = [name for name in columns if name not in self._by_name]
        if unknown:
            raise RecordValidationError([
                {"record": None, "field": name, "message": f"unknown feature {name!r} (the model's inputs are "
                                                           f"{self.names})"} for name in unknown[:MAX_REPORTED_ERRORS]])
        n = len(next(iter(columns.values()))) if columns else 0
        out = []
        for column in self.columns:
            values = columns.get(column.name)
            if values is None and column.required:
                raise RecordValidationError([{"record": None, "field": column.name,
                                              "message": f"the required feature {column.name!r} is not among the "
                                                         "columns"}])
            checked = None
            if self._columnwise:
                checked = _fast_column(column, [None] * n if values is None else values)
            if checked is None:
                return self.validate(records())
            out.append(checked)
        return ValidatedRecords(self.names, out)

    def _columns_of(self, rows: Sequence[BaseModel]) -> ValidatedRecords:
        dicts = [row.__dict__ for row in rows]
        return ValidatedRecords(self.names, [[d[c.attr] for d in dicts] for c in self.columns])

    def as_dict(self, row: BaseModel | dict[str, Any]) -> dict[str, Any]:
        """A validated record as ``{column: value}`` in signature order (absent optional columns: None).

        A record of :class:`ValidatedRecords` is that dict already; a pydantic model's ``__dict__``
        holds exactly its fields (``extra="forbid"``) in declaration order, which is the signature's."""
        if isinstance(row, dict):
            return row
        return dict(zip(self.names, row.__dict__.values()))

    def to_frame(self, rows: ValidatedRecords | Sequence[BaseModel]) -> pd.DataFrame:
        """One DataFrame with the signature's columns, dtypes and order."""
        if isinstance(rows, ValidatedRecords):
            data = {c.name: _to_array(c, values) for c, values in zip(self.columns, rows.columns)}
        else:
            dicts = [self.as_dict(row) for row in rows]
            data = {c.name: _to_array(c, [d[c.name] for d in dicts]) for c in self.columns}
        return pd.DataFrame(data, columns=self.names, copy=False)

    def out_of_domain(self, rows: ValidatedRecords | Sequence[BaseModel]) -> list[list[str] | None]:
        """Per validated row, the features outside :attr:`domain` (None: all within it, or no domain)."""
        if self.domain is None:
            return [None] * len(rows)
        if isinstance(rows, ValidatedRecords):
            return self.domain.check_columns(rows)
        check, as_dict = self.domain.check, self.as_dict
        return [check(as_dict(row)) for row in rows]


# --------------------------------------------------------------------------------------------
# The domain of a model version: declared ranges and values, learned vocabularies
# --------------------------------------------------------------------------------------------


#: What serving does with a record outside the domain (``serving.out_of_domain`` of the pipeline file).
OUT_OF_DOMAIN_POLICIES = ("flag", "reject")


@dataclass(frozen=True)
class FeatureDomain:
    """The inputs a model version was trained for: per numeric feature its declared ``min`` /
    ``max`` (``ranges``), per category feature its declared ``values`` or the vocabulary the
    version learned from its training window (``categories``; ``learned`` names the latter).
    Features in neither are not checked; a null is never out of domain (nulls are the null
    budget's business). ``policy``: ``flag`` or ``reject`` (:data:`OUT_OF_DOMAIN_POLICIES`)."""

    ranges: dict[str, tuple[float | None, float | None]]
    categories: dict[str, frozenset[str]]
    learned: frozenset[str] = frozenset()
    policy: str = "flag"
    _checks: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.policy not in OUT_OF_DOMAIN_POLICIES:
            raise ValueError(f"out_of_domain policy must be one of {OUT_OF_DOMAIN_POLICIES}, not {self.policy!r}")
        inf = float("inf")
        checks = [(name, False, -inf if low is None else low, inf if high is None else high)
                  for name, (low, high) in self.ranges.items()]
        checks += [(name, True, allowed, None) for name, allowed in self.categories.items()]
        object.__setattr__(self, "_checks", tuple(checks))

    def check(self, record: dict[str, Any]) -> list[str] | None:
        """The features of ``record`` (``{feature: value}`` as validated) outside the domain, in
        the order ranges then categories; None when there are none (the common case: no list)."""
        out = None
        get = record.get
        for name, is_category, a, b in self._checks:
            value = get(name)
            if value is None:
                continue
            if (value not in a) if is_category else (value < a or value > b):
                if out is None:
                    out = [name]
                else:
                    out.append(name)
        return out

    def check_columns(self, records: ValidatedRecords) -> list[list[str] | None]:
        """:meth:`check` of every record, one pass per checked feature over its column: the same
        lists (features in the order ranges then categories), None for records within the domain."""
        out: list[list[str] | None] = [None] * len(records)
        index = {name: k for k, name in enumerate(records.names)}
        for name, is_category, a, b in self._checks:
            k = index.get(name)
            if k is None:
                continue
            values = records.columns[k]
            if is_category:
                flagged = [i for i, v in enumerate(values) if v is not None and v not in a]
            else:
                flagged = [i for i, v in enumerate(values) if v is not None and (v < a or v > b)]
            for i in flagged:
                found = out[i]
                if found is None:
                    out[i] = [name]
                else:
                    found.append(name)
        return out

    def allowed(self, feature: str, max_values: int = 100) -> dict[str, Any]:
        """What ``feature`` may hold: ``{"min", "max"}``, or ``{"values", "count", "learned"}`` (at
        most ``max_values`` of them, sorted)."""
        if feature in self.ranges:
            low, high = self.ranges[feature]
            return {"min": low, "max": high}
        values = sorted(self.categories.get(feature, ()))
        return {"values": values[:max_values], "count": len(values), "learned": feature in self.learned}

    def explain(self, feature: str, value: Any) -> str:
        """Why ``value`` of ``feature`` is out of domain, in words."""
        if feature in self.ranges:
            low, high = self.ranges[feature]
            bounds = f"[{'-inf' if low is None else _number(low)}, {'inf' if high is None else _number(high)}]"
            return f"out of domain: {value!r} is outside the declared range {bounds}"
        allowed = self.allowed(feature, max_values=20)
        listed = ", ".join(map(repr, allowed["values"])) + (", ..." if allowed["count"] > 20 else "")
        what = ("the vocabulary this model version learned from its training window" if allowed["learned"]
                else "the declared values")
        return f"out of domain: {value!r} is not among {what} ({allowed['count']}: {listed})"

    def describe(self) -> dict[str, Any]:
        """JSON-friendly: the policy, the ranges, and per category feature its count and origin."""
        return {"policy": self.policy,
                "ranges": {k: {"min": lo, "max": hi} for k, (lo, hi) in self.ranges.items()},
                "categories": {k: {"count": len(v), "learned": k in self.learned} for k, v in self.categories.items()}}


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _fitted_encoders(obj: Any, columns: Any = None) -> list[tuple[str, Any, int]]:
    """``(column, OneHotEncoder, index of the column in it)`` of every fitted one-hot encoder in a
    scikit-learn estimator (Pipelines and ColumnTransformers walked; columns named by string)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if isinstance(obj, OneHotEncoder):
        if not hasattr(obj, "categories_"):
            return []
        names = list(columns) if isinstance(columns, (list, tuple)) else \
            [str(n) for n in getattr(obj, "feature_names_in_", [])]
        if len(names) != len(obj.categories_) or not all(isinstance(n, str) for n in names):
            return []
        return [(name, obj, i) for i, name in enumerate(names)]
    if isinstance(obj, Pipeline):
        return [found for _, step in obj.steps for found in _fitted_encoders(step, columns)]
    if isinstance(obj, ColumnTransformer) and hasattr(obj, "transformers_"):
        return [found for _, transformer, cols in obj.transformers_ if not isinstance(transformer, str)
                for found in _fitted_encoders(transformer, cols)]
    return []


def learned_vocabulary(estimator: Any, columns: Sequence[str]) -> dict[str, list[str]]:
    """The vocabulary a fitted model learned for each of ``columns``: the categories its one-hot
    encoder encodes one by one (without the infrequent ones its ``max_categories`` bucketed, and
    without the null), as strings. A column the model has no fitted encoder for is left out
    (not checked). This is how a version stores the vocabulary of a category column without
    ``values``: in its fitted encoder (``model.skops``), the one the version's predictions use."""
    wanted = set(columns)
    out: dict[str, list[str]] = {}
    for name, encoder, i in _fitted_encoders(estimator):
        if name not in wanted or name in out:
            continue
        try:
            infrequent = encoder.infrequent_categories_  # only with max_categories / min_frequency
        except AttributeError:
            infrequent = None
        bucketed = set() if infrequent is None or infrequent[i] is None else {repr(v) for v in infrequent[i]}
        out[name] = [str(v) for v in encoder.categories_[i]
                     if v is not None and v == v and repr(v) not in bucketed]  # v == v: not NaN
    return out


def feature_domain(config: PipelineConfig, estimator: Any = None) -> FeatureDomain:
    """The domain of a model of ``config``: declared ``min``/``max`` of numeric features, declared
    ``values`` of category features, and for category features without ``values`` the vocabulary
    ``estimator`` learned (:func:`learned_vocabulary`); the policy is ``serving.out_of_domain``."""
    ranges = {name: (spec.min, spec.max) for name, spec in config.features.items()
              if spec.type != "category" and (spec.min is not None or spec.max is not None)}
    learned = [name for name, spec in config.features.items() if spec.learned]
    vocabulary = learned_vocabulary(estimator, learned) if estimator is not None and learned else {}
    categories: dict[str, frozenset[str]] = {}
    for name, spec in config.features.items():
        if spec.type == "category" and spec.values is not None:
            categories[name] = frozenset(str(v) for v in spec.values)
        elif name in vocabulary:
            categories[name] = frozenset(vocabulary[name])
    return FeatureDomain(ranges, categories, frozenset(vocabulary), config.serving.out_of_domain)


def _field_errors(err: ValidationError, single: bool) -> list[dict[str, Any]]:
    """Convert a pydantic error into ``[{"record", "field", "message"}]`` (capped)."""
    out = []
    for e in err.errors(include_url=False)[:MAX_REPORTED_ERRORS]:
        loc = list(e["loc"])
        record = 0 if single else (loc.pop(0) if loc and isinstance(loc[0], int) else None)
        field_name = ".".join(str(p) for p in loc) or None
        out.append({"record": record, "field": field_name, "message": e["msg"]})
    return out


#: The MLflow column type of each pipeline feature type (see :func:`signature_type`).
SIGNATURE_TYPES: dict[str, str] = {"float": "double", "int": "long", "category": "string", "bool": "boolean"}


def signature_type(spec: ColumnSpec) -> str:
    """The MLflow type a feature is declared with: the source's own type (``int`` -> ``long``,
    ``float`` -> ``double``, ``category`` -> ``string``, ``bool`` -> ``boolean``), so that
    ``mlflow.pyfunc`` accepts the source's rows as pandas reads them (ints stay int64).

    An ``int`` feature that may be null (``max_null_fraction > 0``) is declared ``double``: pandas
    reads a column with a missing value as float64, and MLflow's schema enforcement
    (``mlflow.models.utils._enforce_mlflow_datatype``) refuses float64 for ``long``. It refuses
    int64 for ``double`` too (int -> double only up to 4-byte ints), so a pyfunc caller passes such
    a column through :func:`signature_frame` first; serving and ``mlflow models serve`` (JSON)
    accept ints and floats for it as they are.
    """
    if spec.type == "int" and spec.max_null_fraction > 0:
        return "double"
    return SIGNATURE_TYPES[spec.type]


def signature_inputs(config: PipelineConfig):
    """The MLflow input schema of the pipeline's features (see :func:`signature_type`); a column
    may be null in requests only if the config tolerates nulls for it."""
    from mlflow.types import ColSpec, Schema

    return Schema([ColSpec(signature_type(spec), name, required=spec.max_null_fraction == 0)
                   for name, spec in config.features.items()])


def model_signature(config: PipelineConfig, output_example):
    """MLflow signature from the pipeline's schema (:func:`signature_inputs`) and an example of
    the model's output."""
    from mlflow.models import infer_signature
    from mlflow.models.signature import ModelSignature

    return ModelSignature(inputs=signature_inputs(config), outputs=infer_signature(None, output_example).outputs)


def _conform_column(series: pd.Series, type_name: str) -> pd.Series:
    """One column as MLflow's ``type_name`` wants it (values that do not fit are left as they are,
    for MLflow or serving to refuse with their own message)."""
    missing = series.isna()
    if type_name == "string":
        return series.astype(object).where(~missing, None).map(lambda v: v if v is None else str(v))
    if type_name == "boolean":
        if missing.any() or series.dtype == object:
            return series.astype(object).where(~missing, None)
        return series.astype(bool)
    numbers = pd.to_numeric(series, errors="coerce") if series.dtype == object else series
    if numbers.dtype.kind not in "iufb" or (numbers.isna() & ~missing).any():
        return series  # not numbers
    if type_name in ("long", "integer"):
        if numbers.dtype.kind == "f" and not missing.any() and (numbers == np.round(numbers)).all():
            return numbers.astype("int64" if type_name == "long" else "int32")
        return numbers  # ints already, or nulls / fractions: MLflow says what is wrong
    if type_name in ("double", "float"):
        return numbers.astype("float64" if type_name == "double" else "float32")
    return series


def signature_frame(inputs: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """The signature's columns of ``frame`` typed as ``inputs`` (an MLflow column Schema, e.g.
    ``mlflow.pyfunc.load_model(uri).metadata.get_input_schema()``) declares them: what the
    model's input example is logged as, and what to pass ``PyFuncModel.predict`` when a source
    column's pandas dtype differs from its declared type (an int column declared ``double``).
    Columns ``frame`` lacks are left out (optional ones may be absent)."""
    out = {spec.name: _conform_column(frame[spec.name], spec.type.name)
           for spec in inputs.inputs if spec.name in frame.columns}
    return pd.DataFrame(out, index=frame.index)


def input_example(config: PipelineConfig, features: pd.DataFrame, rows: int = 5) -> pd.DataFrame:
    """The input example to log with a model of ``config``: the first ``rows`` of ``features``
    typed as the signature declares them (ints as int64, not the float64 the model is fitted on)."""
    return signature_frame(signature_inputs(config), features.head(rows)).reset_index(drop=True)


def request_records(inputs: Any, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``frame`` as a JSON client sends them to serving: the signature's columns
    (:func:`signature_frame`), nulls as ``null``, and integral numbers of ``long``/``integer``
    columns as JSON integers even where a null elsewhere in the column made pandas read floats
    (serving refuses ``40.0`` for an integer column, and then only the null record is refused)."""
    typed = signature_frame(inputs, frame)
    records = json.loads(typed.to_json(orient="records", date_format="iso"))
    ints = [spec.name for spec in inputs.inputs if spec.type.name in ("long", "integer") and spec.name in typed]
    for record in records:
        for name in ints:
            value = record.get(name)
            if isinstance(value, float) and value.is_integer():
                record[name] = int(value)
    return records
