"""A/B routing: which variant answers a request key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from airloop.core.names import CHALLENGER, CHAMPION

#: ``key_field`` values besides feature names.
KEY_REQUEST_ID = "request_id"


KEY_HEADER = "header"


# ============================================================================ routing
def assign_variant(key: str, test_id: str, traffic_pct: float) -> str:
    """``"challenger"`` for ``traffic_pct`` percent of the keys, else ``"champion"``.

    The key is hashed with the test id (BLAKE2b, 64 bits → a uniform number in ``[0, 1)``), so the
    assignment is sticky (same key, same test → same variant, in any process and whatever
    ``PYTHONHASHSEED``) and independent between tests.
    """
    digest = hashlib.blake2b(f"{test_id}\x00{key}".encode(), digest_size=8).digest()
    return CHALLENGER if int.from_bytes(digest, "big") / 2.0**64 < traffic_pct / 100.0 else CHAMPION


def _key_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def request_keys(key_field: str, records: Sequence[Any], request_ids: Sequence[str],
                 header_key: str | None = None) -> list[str]:
    """The routing key of each record (see the module docstring for ``key_field``)."""
    if key_field == KEY_REQUEST_ID or (key_field == KEY_HEADER and not header_key):
        return list(request_ids)
    if key_field == KEY_HEADER:
        return [header_key] * len(records)  # type: ignore[list-item]
    out = []
    for record, request_id in zip(records, request_ids):
        value = record.get(key_field) if isinstance(record, dict) else None
        out.append(request_id if value is None else _key_text(value))
    return out
