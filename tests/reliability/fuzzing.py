"""The schema-driven fuzzer of ``tests/reliability``: schemathesis over an app's own OpenAPI document.

:func:`fuzz` runs every operation of a loaded schema in both generation modes (positive: bodies,
parameters and headers that fit the schema; negative: ones that do not) for at most
``max_examples`` cases each, sends them to the app in process (ASGI transport) and checks every
answer with :data:`CHECKS`: no 5xx, a documented status code, a documented content type, and a
body that fits the documented schema of that status. A failure raises (Hypothesis shrinks it
first); the answered statuses are counted either way.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

#: What every answer must satisfy.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@dataclass
class FuzzReport:
    """What a run tried: cases per operation and answers by status code."""

    cases: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    #: Answers by ``"METHOD /path"`` and status code.
    by_operation: dict[str, Counter] = field(default_factory=dict)
    #: Answers by generation mode and status code.
    by_mode: dict[str, Counter] = field(default_factory=dict)
    #: Operations without anything to make invalid (no negative cases).
    unnegatable: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Cases sent."""
        return sum(self.cases.values())

    def count(self, low: int, high: int) -> int:
        """Answers with a status in ``[low, high)``."""
        return sum(n for status, n in self.statuses.items() if low <= status < high)

    def summary(self, name: str) -> str:
        """One JSON line of the figures."""
        return json.dumps({"fuzz": name, "cases": self.total, "2xx": self.count(200, 300),
                           "4xx": self.count(400, 500), "5xx": self.count(500, 600),
                           "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                           "by_mode": {m: {str(k): v for k, v in sorted(c.items())} for m, c in self.by_mode.items()},
                           "operations": dict(sorted(self.cases.items()))})


def operations(schema: Any) -> list[Any]:
    """The schema's operations (a schema error fails the test)."""
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(schema: Any, report: FuzzReport, *, headers: dict[str, str] | None = None, max_examples: int = 25,
         limits: dict[str, int] | None = None, modes: Iterable[GenerationMode] = MODES,
         skip: Iterable[str] = (), path_parameters: dict[str, Any] | None = None) -> FuzzReport:
    """Fuzz every operation of ``schema`` (``"METHOD /path"`` in ``skip`` left out) with
    ``headers`` on every request; ``limits`` caps the cases of slow operations by label;
    ``path_parameters`` are fixed in a second positive pass (e.g. a pipeline that exists, so
    the cases get past its 404)."""
    limits = limits or {}
    skipped = set(skip)
    for operation in operations(schema):
        label = f"{operation.method.upper()} {operation.path}"
        if label in skipped:
            continue
        cap = limits.get(label, max_examples)
        for mode in modes:
            _run(operation, mode, report, headers or {}, cap, label)
        fixed = {k: v for k, v in (path_parameters or {}).items() if f"{{{k}}}" in operation.path}
        if fixed:
            _run(operation, GenerationMode.POSITIVE, report, headers or {}, cap, label, fixed)
    return report


def _run(operation: Any, mode: GenerationMode, report: FuzzReport, headers: dict[str, str], max_examples: int,
         label: str, path_parameters: dict[str, Any] | None = None) -> None:
    tag = mode.value + (" fixed" if path_parameters else "")

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case: Any) -> None:
        response = case.call(headers=headers)
        report.cases[f"{label} ({tag})"] += 1
        report.statuses[response.status_code] += 1
        report.by_operation.setdefault(label, Counter())[response.status_code] += 1
        report.by_mode.setdefault(tag, Counter())[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        report.unnegatable.append(label)  # no parameter or body to make invalid (e.g. GET /health)
