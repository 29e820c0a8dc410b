"""Shared parts of the browser tests (not a test module): a real ``airflow standalone`` on its
own metadata DB and free ports, headless Chromium (Debian's ``/usr/bin/chromium`` driven by
Playwright), the Airflow login and screenshots kept in ``$AIRLOOP_TEST_ARTIFACTS`` (default
``test-artifacts/`` in the checkout)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from airloop.ops.sandbox import free_port, restore_environ

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("AIRLOOP_TEST_ARTIFACTS") or ROOT / "test-artifacts")


@contextmanager
def airflow_standalone(settings, home: Path, dag_ids: list[str], before_start=None):
    """``airflow standalone`` (API server, scheduler, DAG processor on SQLite + LocalExecutor)
    with its state in ``home`` and the process's airloop settings; ``before_start()`` runs once
    the metadata DB is migrated. Yields ``{"api", "alive", "home", "port"}`` once ``dag_ids`` are
    parsed and unpaused; stops every component afterwards."""
    from airloop.cli.processes import _stop_all, airflow_api, start_airflow

    port = str(free_port())
    env = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(home / "logs" / "dag_processor"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    procs = {}
    try:
        migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                                 timeout=600)
        assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
        if before_start is not None:
            before_start()
        procs, _ = start_airflow(settings, home, port, triggerer=False)
        api = airflow_api(settings, port)
        api.timeout = 120.0  # a loaded machine (SQLite busy with a training run) answers slowly
        alive = lambda: all(p.poll() is None for p in procs.values())  # noqa: E731
        api.wait_healthy(alive=alive)
        api.wait_dags(dag_ids)
        for dag_id in dag_ids:
            api.unpause(dag_id)
        yield {"api": api, "alive": alive, "home": home, "port": port}
    finally:
        _stop_all(procs)
        restore_environ(saved)


@contextmanager
def chromium(artifacts: Path):
    """Headless Chromium (fails, not skips, when Debian's package is missing)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium (make test does it)")
    from playwright.sync_api import sync_playwright

    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def login(page, base: str) -> None:
    """Sign in on the Airflow login page as the generated ``admin`` user."""
    from airloop.ops.airflow_api import simple_auth_password

    page.goto(f"{base}/")
    page.get_by_label(re.compile("username", re.I)).fill("admin")
    page.get_by_label(re.compile("password", re.I)).fill(
        simple_auth_password(Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])))
    page.get_by_role("button", name=re.compile("sign in|log in|login", re.I)).click()
    page.wait_for_url(re.compile(r"^(?!.*auth/login).*$"))


def shot(page, folder: Path, name: str) -> Path:
    """A full-page screenshot ``folder/name.png``."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
