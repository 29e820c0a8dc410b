"""Notifications: alert delivery through Airflow notifiers, a webhook (HTTP provider) and e-mail
(SMTP provider).

:class:`WebhookAlertNotifier` and :class:`EmailAlertNotifier` send one alert row of the monitoring
store (``include/airloop/monitoring/alerts.py``). The monitoring DAG builds them per alert through
:func:`alert_senders`; they are also plain Airflow notifiers, usable as task or DAG callbacks
(``on_failure_callback=WebhookAlertNotifier(http_conn_id="ops_webhook")``), where, with no alert
given, they describe the task instance of the callback's context.

Light at import time (the providers are imported when a notification is sent), so a DAG file can
import this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from airflow.sdk import BaseNotifier


def webhook_payload(alert: dict[str, Any]) -> dict[str, Any]:
    """The webhook's JSON body: the alert row with timestamps as ISO strings and ``details`` parsed."""
    payload = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in alert.items()}
    payload["details"] = json.loads(alert["details"]) if alert.get("details") else None
    return payload


def email_subject(alert: dict[str, Any]) -> str:
    """``[airloop][<severity>] <pipeline>: <rule>``."""
    return f"[airloop][{alert['severity']}] {alert['pipeline']}: {alert['rule']}"


def email_html(alert: dict[str, Any]) -> str:
    """The e-mail body: the message, then the details (JSON)."""
    return f"<p>{alert['message']}</p><pre>{alert.get('details') or ''}</pre>"


def callback_alert(context) -> dict[str, Any]:
    """An alert describing the task instance of a callback's context (a notifier used as
    ``on_failure_callback`` and the like, without an alert of its own)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag_id = getattr(dag_run, "dag_id", None) or getattr(context.get("dag"), "dag_id", None) or ""
    task_id = getattr(ti, "task_id", None)
    state = getattr(ti, "state", None) or getattr(dag_run, "state", None)
    exception = context.get("exception")
    subject = f"task {task_id}" if task_id else "DAG run"
    message = f"{subject} of {dag_id}{f' ended {state}' if state else ''}{f': {exception}' if exception else ''}"
    details = {"dag_id": dag_id, "dag_run_id": getattr(dag_run, "run_id", None) or context.get("run_id"),
               "task_id": task_id, "try_number": getattr(ti, "try_number", None),
               "state": str(state) if state else None, "exception": str(exception) if exception else None}
    return {
        "pipeline": dag_id,
        "rule": f"airflow_{state or 'callback'}",
        "severity": "critical" if exception or str(state) == "failed" else "info",
        "message": message,
        "details": json.dumps(details, default=str, sort_keys=True),
        "interval_start": context.get("data_interval_start"),
    }


class WebhookAlertNotifier(BaseNotifier):
    """POST an alert as JSON to the webhook of an HTTP connection (through Airflow's ``HttpNotifier``).

    :param http_conn_id: HTTP connection of the webhook (base URL, credentials).
    :param alert: the alert row to send (see :func:`webhook_payload`); ``None``: the callback's task
        instance (:func:`callback_alert`).
    :param endpoint: path below the connection's base URL; ``None``: the base URL itself.
    """

    template_fields: Sequence[str] = ("http_conn_id", "alert", "endpoint")

    def __init__(self, *, http_conn_id: str, alert: dict[str, Any] | None = None, endpoint: str | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.http_conn_id = http_conn_id
        self.alert = alert
        self.endpoint = endpoint

    def notify(self, context) -> None:
        """Send the alert (errors propagate: the caller records and retries them)."""
        from airflow.providers.http.notifications.http import HttpNotifier

        alert = self.alert if self.alert is not None else callback_alert(context)
        HttpNotifier(http_conn_id=self.http_conn_id, endpoint=self.endpoint, json=webhook_payload(alert),
                     headers={"Content-Type": "application/json"}).notify(context)


class EmailAlertNotifier(BaseNotifier):
    """E-mail an alert (through Airflow's ``SmtpNotifier``).

    :param to: recipient address(es).
    :param alert: the alert row to send (:func:`email_subject`, :func:`email_html`); ``None``: the
        callback's task instance (:func:`callback_alert`).
    :param smtp_conn_id: SMTP connection; ``None``: Airflow's ``[email] email_conn_id``
        (default ``smtp_default``).
    :param from_email: sender address; ``None``: the connection's ``from_email`` extra.
    """

    template_fields: Sequence[str] = ("to", "alert", "smtp_conn_id", "from_email")

    def __init__(self, *, to: str | Iterable[str], alert: dict[str, Any] | None = None,
                 smtp_conn_id: str | None = None, from_email: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.to = to
        self.alert = alert
        self.smtp_conn_id = smtp_conn_id
        self.from_email = from_email

    def notify(self, context) -> None:
        """Send the alert (errors propagate: the caller records and retries them)."""
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        alert = self.alert if self.alert is not None else callback_alert(context)
        SmtpNotifier(to=self.to, from_email=self.from_email, smtp_conn_id=self.smtp_conn_id,
                     subject=email_subject(alert), html_content=email_html(alert)).notify(context)


def alert_senders(config, context) -> dict[str, Callable[[dict[str, Any]], None]]:
    """Senders for the pipeline's configured alert routes (``monitoring.webhook_conn_id`` and
    ``monitoring.email_to``), by route name; empty when none is configured.

    Each sender builds the route's notifier for one alert and calls its ``notify`` directly, not
    the notifier itself: the alert is delivered as recorded, its text never rendered as a template.
    """
    routes = config.monitoring
    notifiers: dict[str, Callable[..., BaseNotifier]] = {}
    if routes.webhook_conn_id:
        notifiers["webhook"] = lambda alert: WebhookAlertNotifier(http_conn_id=routes.webhook_conn_id, alert=alert)
    if routes.email_to:
        notifiers["email"] = lambda alert: EmailAlertNotifier(to=routes.email_to, alert=alert)
    return {name: _sender(build, context) for name, build in notifiers.items()}


def _sender(build: Callable[[dict[str, Any]], BaseNotifier], context) -> Callable[[dict[str, Any]], None]:
    def send(alert: dict[str, Any]) -> None:
        build(alert).notify(context)

    return send
