"""`airloop init` keeps the state folder to its owner: the folder 0700, what is created in it 0600
(the monitoring store, the secrets file, MLflow's store) — no world- or group-readable databases."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from airloop.ops.sandbox import isolated_environ

ROOT = Path(__file__).resolve().parents[3]


def test_init_leaves_the_state_folder_to_its_owner(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AIRLOOP_", "AIRFLOW", "MLFLOW_"))},
           **isolated_environ(ROOT, tmp_path)}
    old = os.umask(0o022)  # the usual umask: init must not depend on the caller's
    try:
        subprocess.run([sys.executable, "-m", "airloop.cli", "init"], env=env, cwd=ROOT, check=True,
                       capture_output=True, timeout=300)
    finally:
        os.umask(old)
    state = Path(env["AIRLOOP_STATE_DIR"])
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    created = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.name == "secrets.env" for p in created) and any(p.name == "monitoring.db" for p in created)
    loose = {str(p.relative_to(state)): oct(stat.S_IMODE(p.stat().st_mode))
             for p in created if stat.S_IMODE(p.stat().st_mode) & 0o077}
    assert not loose, loose
