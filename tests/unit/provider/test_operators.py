"""airloop_provider.operators.DeployModelOperator: templating, a construction that only assigns, and
an ``execute`` that delegates to the library (``airloop.tasks.lifecycle.deploy``, patched where the
operator calls it)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.exceptions import AirflowSkipException

from airloop_provider.hooks import ServingHook
from airloop_provider.operators import DeployModelOperator

PROMOTED = {"promoted": True, "version": "3", "previous": "2", "environment": "prod"}


@pytest.fixture
def deploy_calls(monkeypatch, airloop_settings):
    """Replace the library's deploy stage; record its calls."""
    from airloop.tasks import lifecycle

    calls = []

    def fake_deploy(config, promotion, snapshot, endpoint, settings, actor, run_context):
        calls.append({"config": config, "promotion": promotion, "snapshot": snapshot, "endpoint": endpoint,
                      "settings": settings, "actor": actor, "run_context": run_context})
        return {"deployed": True, "version": promotion["version"], "serving_url": endpoint.url}

    monkeypatch.setattr(lifecycle, "deploy", fake_deploy)
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOOP_SERVING", "http://:op-token-789@127.0.0.1:8765")
    return calls


def _context(**dag_run):
    fields = {"dag_id": "claims_fraud__train", "run_id": "manual__1", "run_type": "manual", "conf": {},
              "triggering_user_name": "alice"}
    return {"dag_run": SimpleNamespace(**(fields | dag_run)), "params": {}}


def test_template_fields():
    assert tuple(DeployModelOperator.template_fields) == ("pipeline", "promotion", "snapshot", "serving_conn_id")


def test_init_only_assigns(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the connection was read at construction")

    monkeypatch.setattr(ServingHook, "get_connection", classmethod(boom))
    op = DeployModelOperator(task_id="deploy", pipeline="{{ params.pipeline }}", promotion={"promoted": True},
                             snapshot=None, serving_conn_id="{{ params.conn }}")
    assert (op.pipeline, op.promotion, op.snapshot, op.serving_conn_id) == (
        "{{ params.pipeline }}", {"promoted": True}, None, "{{ params.conn }}")
    assert "hook" not in vars(op)  # the hook is built at execute time
    assert DeployModelOperator(task_id="d2", pipeline="p", promotion={}).serving_conn_id == "airloop_serving"


def test_template_fields_render():
    op = DeployModelOperator(task_id="deploy", pipeline="{{ params.pipeline }}",
                             promotion={"reason": "{{ params.why }}"}, serving_conn_id="{{ params.conn }}_serving")
    op.render_template_fields({"params": {"pipeline": "claims_fraud", "why": "gates passed", "conn": "staging"}})
    assert op.pipeline == "claims_fraud"
    assert op.promotion == {"reason": "gates passed"}
    assert op.serving_conn_id == "staging_serving"


def test_hook_uses_the_connection_id():
    op = DeployModelOperator(task_id="deploy", pipeline="claims_fraud", promotion={}, serving_conn_id="other_serving")
    assert isinstance(op.hook, ServingHook)
    assert op.hook.serving_conn_id == "other_serving"


def test_execute_delegates_to_the_library(deploy_calls, airloop_settings):
    snapshot = {"as_of": "2024-03-01", "path": "/tmp/snapshot.parquet"}
    op = DeployModelOperator(task_id="deploy", pipeline="claims_fraud", promotion=PROMOTED, snapshot=snapshot)
    result = op.execute(_context(conf={"reason": "new data"}))

    assert result == {"deployed": True, "version": "3", "serving_url": "http://127.0.0.1:8765"}
    [call] = deploy_calls
    assert call["config"].name == "claims_fraud"
    assert call["promotion"] is PROMOTED
    assert call["snapshot"] is snapshot
    assert (call["endpoint"].url, call["endpoint"].token) == ("http://127.0.0.1:8765", "op-token-789")
    assert call["settings"] is airloop_settings
    assert call["actor"] == "user:alice"
    assert call["run_context"] == {"dag_id": "claims_fraud__train", "dag_run_id": "manual__1", "run_type": "manual",
                                   "as_of": "2024-03-01", "trigger_reason": "new data"}


def test_execute_without_snapshot_records_no_as_of(deploy_calls):
    promotion = {"promoted": True, "version": "4"}  # no environment: the serving one
    DeployModelOperator(task_id="deploy", pipeline="claims_fraud", promotion=promotion).execute(
        _context(triggering_user_name=None, run_type="scheduled"))
    [call] = deploy_calls
    assert call["snapshot"] is None
    assert call["actor"] == "airflow:scheduled"
    assert call["run_context"]["as_of"] == ""


def test_execute_skips_when_nothing_was_promoted(deploy_calls):
    op = DeployModelOperator(task_id="deploy", pipeline="claims_fraud", promotion={"promoted": False, "reason": "gates failed"})
    with pytest.raises(AirflowSkipException, match="nothing to deploy: gates failed"):
        op.execute(_context())
    assert deploy_calls == []


def test_execute_skips_an_environment_serving_does_not_answer_with(deploy_calls):
    op = DeployModelOperator(task_id="deploy", pipeline="claims_fraud", promotion=PROMOTED | {"environment": "staging"})
    with pytest.raises(AirflowSkipException, match="staging is not served"):
        op.execute(_context())
    assert deploy_calls == []
