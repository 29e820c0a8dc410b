"""airloop_provider.notifiers: the alert notifiers against real local servers (an HTTP receiver and
an SMTP sink on 127.0.0.1, see ``conftest.py``), their templating as Airflow callbacks, and
``alert_senders`` as the monitoring DAG's ``alerts`` task uses it (payload, recorded failures, retry)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from airloop_provider.notifiers import (
    EmailAlertNotifier,
    WebhookAlertNotifier,
    alert_senders,
    callback_alert,
    email_html,
    email_subject,
    webhook_payload,
)

START = datetime(2024, 3, 1, tzinfo=timezone.utc)


def _alert(**overrides):
    """An alert row as ``airloop.monitoring.alerts.interval_alerts`` returns it."""
    row = {"id": 7, "dedup_key": f"claims_fraud|default|psi_drift|{START.isoformat()}", "tenant": "default",
           "pipeline": "claims_fraud", "interval_start": START, "rule": "psi_drift", "severity": "warning",
           "message": "PSI of amount 0.41 > 0.2 {{ not_a_template }}",
           "details": json.dumps({"metric": "psi", "observed": 0.41, "op": ">", "threshold": 0.2}, sort_keys=True),
           "raised_at": START, "delivery_status": "pending", "delivery_attempts": 0, "last_error": None}
    return row | overrides


@pytest.fixture
def webhook_conn(webhook, monkeypatch):
    received, url = webhook
    monkeypatch.setenv("AIRFLOW_CONN_ALERT_WEBHOOK", url)
    return received


@pytest.fixture
def smtp_conn(smtp_sink, monkeypatch):
    """The local sink as Airflow's default SMTP connection (``smtp_default``), plain SMTP."""
    received, port = smtp_sink
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", f"smtp://127.0.0.1:{port}?disable_tls=true&disable_ssl=true"
                                                    "&from_email=airloop%40example.com&retry_limit=0&timeout=10")
    return received


def _callback_context(**extra):
    """What Airflow passes an ``on_failure_callback``: the task instance, its run, the exception."""
    ti = SimpleNamespace(task_id="train_trials", state="failed", try_number=2)
    dag_run = SimpleNamespace(dag_id="claims_fraud__train", run_id="scheduled__2024-03-01", state="running")
    return {"ti": ti, "task_instance": ti, "dag_run": dag_run, "run_id": dag_run.run_id,
            "exception": ValueError("study has no trial"), "data_interval_start": START, "params": {}} | extra


# ------------------------------------------------------------------------------- formats
def test_webhook_payload_serialises_timestamps_and_parses_details():
    payload = webhook_payload(_alert())
    assert payload["interval_start"] == payload["raised_at"] == "2024-03-01T00:00:00+00:00"
    assert payload["details"] == {"metric": "psi", "observed": 0.41, "op": ">", "threshold": 0.2}
    assert payload["message"] == "PSI of amount 0.41 > 0.2 {{ not_a_template }}"
    assert json.dumps(payload)  # JSON-serialisable
    assert webhook_payload(_alert(details=None))["details"] is None
    assert webhook_payload({k: v for k, v in _alert().items() if k != "details"})["details"] is None


def test_email_subject_and_body():
    alert = _alert()
    assert email_subject(alert) == "[airloop][warning] claims_fraud: psi_drift"
    assert email_html(alert) == f"<p>{alert['message']}</p><pre>{alert['details']}</pre>"
    assert email_html(_alert(details=None)) == f"<p>{alert['message']}</p><pre></pre>"


def test_callback_alert_describes_the_failed_task():
    alert = callback_alert(_callback_context())
    assert alert["pipeline"] == "claims_fraud__train"
    assert alert["rule"] == "airflow_failed"
    assert alert["severity"] == "critical"
    assert alert["message"] == "task train_trials of claims_fraud__train ended failed: study has no trial"
    assert json.loads(alert["details"]) == {"dag_id": "claims_fraud__train", "dag_run_id": "scheduled__2024-03-01",
                                            "exception": "study has no trial", "state": "failed",
                                            "task_id": "train_trials", "try_number": 2}
    assert alert["interval_start"] == START


# --------------------------------------------------------------------------- the classes
@pytest.mark.parametrize(("cls", "fields"), [
    (WebhookAlertNotifier, ("http_conn_id", "alert", "endpoint")),
    (EmailAlertNotifier, ("to", "alert", "smtp_conn_id", "from_email")),
])
def test_template_fields(cls, fields):
    from airflow.sdk import BaseNotifier

    assert issubclass(cls, BaseNotifier)
    assert tuple(cls.template_fields) == fields


def test_init_only_assigns(monkeypatch):
    from airflow.sdk import BaseHook

    def boom(*args, **kwargs):
        raise AssertionError("a connection was read at construction")

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(boom))
    alert = _alert()
    webhook = WebhookAlertNotifier(http_conn_id="{{ params.conn }}", alert=alert)
    assert (webhook.http_conn_id, webhook.alert, webhook.endpoint) == ("{{ params.conn }}", alert, None)
    email = EmailAlertNotifier(to=["ops@example.com"])
    assert (email.to, email.alert, email.smtp_conn_id, email.from_email) == (["ops@example.com"], None, None, None)


# -------------------------------------------------------------------------------- webhook
def test_webhook_notify_posts_the_alert(webhook_conn):
    alert = _alert()
    WebhookAlertNotifier(http_conn_id="alert_webhook", alert=alert).notify({})
    [request] = webhook_conn.requests
    assert request["path"] == "/"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["json"] == webhook_payload(alert)


def test_webhook_notify_to_an_endpoint(webhook_conn):
    WebhookAlertNotifier(http_conn_id="alert_webhook", alert=_alert(), endpoint="hooks/airloop").notify({})
    assert [r["path"] for r in webhook_conn.requests] == ["/hooks/airloop"]


def test_webhook_error_propagates(webhook_conn):
    from airflow.exceptions import AirflowException

    webhook_conn.status = 500
    with pytest.raises(AirflowException, match="500"):
        WebhookAlertNotifier(http_conn_id="alert_webhook", alert=_alert()).notify({})
    assert len(webhook_conn.requests) == 1  # no retry of its own: the alerts task records and retries


def test_webhook_as_a_callback_renders_its_templates(webhook_conn):
    """Called as Airflow calls a callback: the template fields are rendered with the context."""
    notifier = WebhookAlertNotifier(http_conn_id="{{ params.webhook_conn }}", endpoint="{{ dag_run.dag_id }}",
                                    alert={"pipeline": "{{ dag_run.dag_id }}", "rule": "task_failed", "severity": "critical",
                                           "message": "{{ ti.task_id }} failed (try {{ ti.try_number }})", "details": None})
    notifier(_callback_context(params={"webhook_conn": "alert_webhook"}))
    [request] = webhook_conn.requests
    assert request["path"] == "/claims_fraud__train"
    assert request["json"] == {"pipeline": "claims_fraud__train", "rule": "task_failed", "severity": "critical",
                               "message": "train_trials failed (try 2)", "details": None}


def test_webhook_as_a_callback_without_alert_describes_the_task(webhook_conn):
    context = _callback_context()
    WebhookAlertNotifier(http_conn_id="alert_webhook")(context)
    [request] = webhook_conn.requests
    assert request["json"] == webhook_payload(callback_alert(_callback_context()))
    assert request["json"]["details"]["task_id"] == "train_trials"


# --------------------------------------------------------------------------------- e-mail
def test_email_notify_sends_the_alert(smtp_conn):
    alert = _alert()
    EmailAlertNotifier(to=["ops@example.com", "ml@example.com"], alert=alert).notify({})
    [mail] = smtp_conn.requests
    assert mail["from"] == "airloop@example.com"
    assert mail["to"] == ["ops@example.com", "ml@example.com"]
    message = mail["message"]
    assert message["Subject"] == "[airloop][warning] claims_fraud: psi_drift"
    assert message["To"] == "ops@example.com, ml@example.com"
    [body] = [part for part in message.walk() if part.get_content_type() == "text/html"]
    assert body.get_content().strip() == email_html(alert)


def test_email_with_its_own_connection_and_sender(smtp_sink, monkeypatch):
    received, port = smtp_sink
    monkeypatch.setenv("AIRFLOW_CONN_OPS_SMTP", f"smtp://127.0.0.1:{port}?disable_tls=true&disable_ssl=true&retry_limit=0")
    EmailAlertNotifier(to="ops@example.com", alert=_alert(), smtp_conn_id="ops_smtp",
                       from_email="monitoring@example.com").notify({})
    [mail] = received.requests
    assert (mail["from"], mail["to"]) == ("monitoring@example.com", ["ops@example.com"])


def test_email_as_a_callback_renders_its_templates(smtp_conn):
    notifier = EmailAlertNotifier(to="{{ params.on_call }}", alert={
        "pipeline": "{{ dag_run.dag_id }}", "rule": "task_failed", "severity": "critical",
        "message": "{{ ti.task_id }} failed", "details": None})
    notifier(_callback_context(params={"on_call": "oncall@example.com"}))
    [mail] = smtp_conn.requests
    assert mail["to"] == ["oncall@example.com"]
    assert mail["message"]["Subject"] == "[airloop][critical] claims_fraud__train: task_failed"
    assert "<p>train_trials failed</p>" in mail["message"].get_body(("html",)).get_content()


# ----------------------------------------------------------- alert_senders (the alerts task)
@pytest.fixture
def config(airloop_settings):
    from airloop.core.pipeline import load_pipeline_config

    return load_pipeline_config("claims_fraud", airloop_settings)


def _routed(config, **routes):
    return config.model_copy(update={"monitoring": config.monitoring.model_copy(update=routes)})


def test_no_route_no_sender(config):
    assert alert_senders(_routed(config, webhook_conn_id=None, email_to=[]), {}) == {}


def test_senders_deliver_the_alert_verbatim(config, webhook_conn, smtp_conn):
    senders = alert_senders(_routed(config, webhook_conn_id="alert_webhook", email_to=["ops@example.com"]), {})
    assert list(senders) == ["webhook", "email"]
    alert = _alert()
    for send in senders.values():
        send(alert)
    # the text is sent as recorded (never rendered as a template)
    assert [r["json"] for r in webhook_conn.requests] == [webhook_payload(alert)]
    [mail] = smtp_conn.requests
    assert mail["message"]["Subject"] == email_subject(alert)
    assert "{{ not_a_template }}" in mail["message"].get_body(("html",)).get_content()


def test_alerts_task_records_failures_and_retries(config, airloop_settings, webhook_conn):
    """Through the monitoring DAG's ``alerts`` stage: a failed delivery is recorded with the notifier's
    error and raised (the task retries); the retry delivers it; a delivered alert is not sent again."""
    from airloop.core import store
    from airloop.monitoring.alerts import AlertDeliveryError, interval_alerts
    from airloop.tasks import monitoring

    config = _routed(config, webhook_conn_id="alert_webhook", email_to=[])
    summary = {"interval_end": "2024-03-02T00:00:00+00:00", "alerts": [
        {"rule": "psi_drift", "severity": "warning", "message": "PSI 0.41 > 0.2", "metric": "psi", "op": ">",
         "threshold": 0.2, "observed": 0.41}]}
    senders = alert_senders(config, {})

    webhook_conn.status = 500
    with pytest.raises(AlertDeliveryError, match="psi_drift via webhook: AirflowException: 500"):
        monitoring.alert(config, airloop_settings, START, summary, senders)
    engine = store.get_engine(airloop_settings.monitoring_db_uri)
    [row] = interval_alerts(engine, config, START)
    assert (row["delivery_status"], row["delivery_attempts"]) == ("failed", 1)
    assert row["last_error"].startswith("webhook: AirflowException: 500")

    webhook_conn.status = 200
    assert monitoring.alert(config, airloop_settings, START, summary, senders) == {"delivered": 1}
    assert monitoring.alert(config, airloop_settings, START, summary, senders) == {"delivered": 0}
    [row] = interval_alerts(engine, config, START)
    assert (row["delivery_status"], row["delivery_attempts"], row["last_error"]) == ("delivered", 2, None)

    first, second = (r["json"] for r in webhook_conn.requests)
    assert len(webhook_conn.requests) == 2
    assert second["details"] == {"details": None, "metric": "psi", "observed": 0.41, "op": ">", "threshold": 0.2}
    assert (second["rule"], second["severity"], second["message"]) == ("psi_drift", "warning", "PSI 0.41 > 0.2")
    assert second["interval_start"].startswith("2024-03-01T00:00:00")
    assert (first["delivery_status"], second["delivery_status"]) == ("pending", "failed")
