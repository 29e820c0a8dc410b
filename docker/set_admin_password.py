"""Set the Airflow UI password of every admin user from ``AIRLOOP_AIRFLOW_ADMIN_PASSWORD``.

Run by the ``airflow-init`` service of ``docker/docker-compose.yaml`` (copied into the image as
``/opt/airflow/docker/set_admin_password.py``). airloop's ``airflow.cfg`` uses Airflow's simple
auth manager: its users are ``[core] simple_auth_manager_users`` (``admin:admin``) and their
passwords live in the JSON file ``[core] simple_auth_manager_passwords_file``, which the
api-server fills with generated passwords only for users missing from it. Writing the admin
password there first gives the UI a login chosen by the operator (from the secrets env file)
instead of one printed in the api-server's log. Users of other roles keep their passwords.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PASSWORD_VAR = "AIRLOOP_AIRFLOW_ADMIN_PASSWORD"


def admin_passwords(current: dict[str, str], users: list[tuple[str, str]], password: str) -> dict[str, str]:
    """``current`` with ``password`` for every ``(username, role)`` whose role is admin."""
    updated = dict(current)
    for username, role in users:
        if role.lower() == "admin":
            updated[username] = password
    return updated


def write_passwords(path: Path, passwords: dict[str, str]) -> None:
    """Write the simple auth manager's password file (owner-only permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(passwords) + "\n")
    path.chmod(0o600)


def main() -> int:
    """Update the password file configured for this Airflow installation."""
    password = os.environ.get(PASSWORD_VAR, "")
    if not password:
        print(f"{PASSWORD_VAR} is not set", file=sys.stderr)
        return 1
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    path = Path(SimpleAuthManager.get_generated_password_file())
    current = json.loads(path.read_text() or "{}") if path.is_file() else {}
    users = [(user.username, user.role) for user in SimpleAuthManager.get_users()]
    updated = admin_passwords(current, users, password)
    write_passwords(path, updated)
    admins = [username for username, role in users if role.lower() == "admin"]
    print(f"Airflow UI password set for {', '.join(admins) or 'no admin user'} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
