"""Labels are first-write-wins (issue 15): ``POST /feedback`` of the same label again is
idempotent; a different label of an already-labelled prediction is a 409 naming the item and is
kept in ``label_revisions`` (not applied); an admin applies it with ``?correct=true`` (audited,
applied). On SQLite and on the real PostgreSQL server, through the real app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from airloop.core import store
from airloop.core.settings import Settings
from airloop.monitoring.labels import same_label, write_labels
from airloop.serving.app import create_app
from tests.pg import fresh_database
from tests.unit.serving.test_auth import ADMIN, TOKENS, _auth, _settings

TENANT = _auth(TOKENS["default"])
ADMIN_AUTH = _auth(ADMIN)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Settings]]:
    tmp = tmp_path_factory.mktemp(f"feedback-{request.param}")
    if request.param == "sqlite":
        settings = _settings(tmp)
        with TestClient(create_app(settings, ab_tests=False)) as client:
            yield client, settings
        return
    with fresh_database() as uri:
        settings = _settings(tmp, AIRLOOP_MONITORING_DB_URI=uri)
        with TestClient(create_app(settings, ab_tests=False)) as client:
            yield client, settings
        store.get_engine(uri).dispose()
        store.get_engine.cache_clear()


def _truth(settings: Settings, rid: str) -> object:
    g = store.ground_truth
    with store.get_engine(settings.monitoring_db_uri).connect() as conn:
        label = conn.execute(sa.select(g.c.label).where(g.c.request_id == rid)).scalar_one()
    return json.loads(label)


def _revisions(settings: Settings, rid: str) -> list[tuple]:
    r = store.label_revisions
    with store.get_engine(settings.monitoring_db_uri).connect() as conn:
        rows = conn.execute(sa.select(r).where(r.c.request_id == rid).order_by(r.c.id)).mappings().all()
    return [(row["tenant"], row["pipeline"], json.loads(row["old_label"]), json.loads(row["new_label"]), row["actor"],
             row["applied"]) for row in rows]


def test_the_first_label_wins_and_a_repeat_is_idempotent(app):
    client, settings = app
    first = client.post("/feedback", json={"request_id": "f-1", "label": 1}, headers=TENANT)
    assert first.status_code == 200 and first.json() == {"written": 1, "unchanged": 0, "corrected": 0}
    for again in (1, "1"):  # the same class, also in its string form
        repeat = client.post("/feedback", json={"request_id": "f-1", "label": again}, headers=TENANT)
        assert repeat.status_code == 200 and repeat.json() == {"written": 0, "unchanged": 1, "corrected": 0}
    assert _truth(settings, "f-1") == 1 and _revisions(settings, "f-1") == []


def test_a_different_label_is_a_409_kept_as_a_revision(app):
    client, settings = app
    assert client.post("/feedback", json={"request_id": "f-2", "label": 1}, headers=TENANT).status_code == 200
    for _ in range(2):  # a client retrying the refused label: the revision is kept once
        refused = client.post("/feedback", json={"request_id": "f-2", "label": 0}, headers=TENANT)
        assert refused.status_code == 409, refused.text
        body = refused.json()
        (error,) = body["detail"]
        assert (error["item"], error["field"], error["request_id"]) == (0, "label", "f-2")
        assert "already labelled 1" in error["message"] and "correct=true" in error["message"]
        assert (body["conflicts"], body["written"]) == (1, 0)
    assert _truth(settings, "f-2") == 1  # not overwritten
    assert _revisions(settings, "f-2") == [("default", "claims_fraud", 1, 0, "tenant:default", False)]


def test_a_batch_stores_its_new_labels_and_names_its_conflicts(app):
    client, settings = app
    assert client.post("/feedback", json={"request_id": "b-1", "label": 0}, headers=TENANT).status_code == 200
    batch = {"items": [{"request_id": "b-0", "label": 1}, {"request_id": "b-1", "label": 1},
                       {"request_id": "b-2", "label": 0}]}
    answer = client.post("/feedback", json=batch, headers=TENANT)
    assert answer.status_code == 409
    assert [e["item"] for e in answer.json()["detail"]] == [1]
    assert (answer.json()["written"], answer.json()["conflicts"]) == (2, 1)
    assert [_truth(settings, rid) for rid in ("b-0", "b-1", "b-2")] == [1, 0, 0]


def test_an_admin_applies_a_correction_audited(app):
    client, settings = app
    assert client.post("/feedback", json={"request_id": "c-1", "label": 1}, headers=TENANT).status_code == 200
    # the tenant's token may not correct; a malformed flag is a 422 naming it
    denied = client.post("/feedback?correct=true", json={"request_id": "c-1", "label": 0}, headers=TENANT)
    assert denied.status_code == 403 and denied.json()["detail"][0]["field"] == "correct"
    bad = client.post("/feedback?correct=perhaps", json={"request_id": "c-1", "label": 0}, headers=ADMIN_AUTH)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "correct"
    # without the flag, even the admin's different label is refused
    assert client.post("/feedback", json={"request_id": "c-1", "label": 0}, headers=ADMIN_AUTH).status_code == 409
    corrected = client.post("/feedback?correct=true", json={"request_id": "c-1", "label": 0}, headers=ADMIN_AUTH)
    assert corrected.status_code == 200 and corrected.json() == {"written": 0, "unchanged": 0, "corrected": 1}
    assert _truth(settings, "c-1") == 0
    assert _revisions(settings, "c-1") == [("default", "claims_fraud", 1, 0, "admin", False),
                                           ("default", "claims_fraud", 1, 0, "admin", True)]
    # correcting to the label now stored changes nothing; a new label with the flag is just written
    again = client.post("/feedback?correct=true", json={"request_id": "c-1", "label": 0}, headers=ADMIN_AUTH)
    assert again.json() == {"written": 0, "unchanged": 1, "corrected": 0}
    fresh = client.post("/feedback?correct=true", json={"request_id": "c-2", "label": 1}, headers=ADMIN_AUTH)
    assert fresh.json() == {"written": 1, "unchanged": 0, "corrected": 0}
    assert len(_revisions(settings, "c-1")) == 2 and _revisions(settings, "c-2") == []


def test_labels_are_compared_as_values():
    assert same_label("1", "1.0") and same_label('"a"', '"a"') and same_label("true", "true")
    assert not same_label("true", "1") and not same_label("0", "false") and not same_label("1", "0")
    assert not same_label('"1"', "1")  # a string class is not the number


def test_write_labels_directly(tmp_path: Path):
    engine = store.get_engine(f"sqlite:///{tmp_path / 'labels.db'}")
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    rows = [{"request_id": f"d-{i}", "tenant": "t", "pipeline": "p", "label": "1", "label_ts": now, "received_at": now}
            for i in range(3)]
    assert write_labels(engine, rows, actor="ingest").written == 3
    changed = [dict(rows[0], label="0"), rows[1], dict(rows[2], tenant="other")]
    outcome = write_labels(engine, changed, actor="ingest")
    assert (outcome.written, outcome.unchanged, outcome.corrected) == (1, 1, 0)
    assert [(c["index"], c["request_id"], c["stored"], c["sent"]) for c in outcome.conflicts] == [(0, "d-0", "1", "0")]
    applied = write_labels(engine, changed[:1], actor="ingest", correct=True)
    assert (applied.corrected, applied.conflicts) == (1, [])
    with engine.connect() as conn:
        assert conn.execute(sa.select(store.ground_truth.c.label).where(
            store.ground_truth.c.request_id == "d-0")).scalar_one() == "0"
        assert conn.execute(sa.select(store.label_revisions.c.applied).order_by(store.label_revisions.c.id)
                            ).scalars().all() == [False, True]
