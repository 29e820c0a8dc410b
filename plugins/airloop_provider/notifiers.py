"""Alert delivery through Airflow notifiers: a webhook (HTTP provider) and e-mail (SMTP provider)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def alert_senders(config, context) -> dict[str, Callable[[dict[str, Any]], None]]:
    """Senders for the pipeline's configured alert routes (``monitoring.webhook_conn_id`` and
    ``monitoring.email_to``), each wrapping an Airflow notifier; empty when none is configured."""
    senders: dict[str, Callable[[dict[str, Any]], None]] = {}
    routes = config.monitoring
    if routes.webhook_conn_id:
        from airflow.providers.http.notifications.http import HttpNotifier

        def webhook(alert: dict[str, Any]) -> None:
            payload = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in alert.items()}
            payload["details"] = json.loads(alert["details"]) if alert.get("details") else None
            HttpNotifier(http_conn_id=routes.webhook_conn_id, json=payload,
                         headers={"Content-Type": "application/json"}).notify(context)

        senders["webhook"] = webhook
    if routes.email_to:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        def email(alert: dict[str, Any]) -> None:
            SmtpNotifier(to=routes.email_to, subject=f"[airloop][{alert['severity']}] {alert['pipeline']}: {alert['rule']}",
                         html_content=f"<p>{alert['message']}</p><pre>{alert.get('details') or ''}</pre>").notify(context)

        senders["email"] = email
    return senders
