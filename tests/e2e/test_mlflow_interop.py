"""``mlflow models serve`` on airloop's registered champion: MLflow's own scoring server loads the
model (skops, the pipeline-typed signature) and answers ``/invocations`` with ``dataframe_records``
of the source's raw rows exactly as airloop's serving scores them.

The model is built by :func:`tests.unit.models.test_signature.register_champion` (simulator files
read back through the pipeline's source, logged like training logs it, registered, aliased
champion); the scoring server is a real subprocess (``--env-manager local``) on a free port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from airloop.models.schema import request_records, signature_inputs
from airloop.serving.app import create_app
from tests.conftest import free_port
from tests.unit.models.test_signature import register_champion
from tests.unit.serving.test_app import AUTH

pytestmark = pytest.mark.e2e


def test_mlflow_models_serve_answers_like_airloop_serving(tmp_path):
    champion = register_champion(tmp_path)
    config, raw = champion.config, champion.raw
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # the scoring server runs `uvicorn` from PATH (an activated venv)
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion.uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    argv = [str(Path(bin_dir, "mlflow")), "models", "serve", "-m",
            f"models:/{config.model_name}@champion", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
            "-w", "1"]
    log = (tmp_path / "mlflow-serve.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "mlflow-serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping within 180 s"
            time.sleep(0.5)
        # the source's rows as a client has them: every column, ints as ints, missing values null
        rows = json.loads(raw.to_json(orient="records", date_format="iso"))
        answer = httpx.post(f"{url}/invocations", json={"dataframe_records": rows}, timeout=60)
        assert answer.status_code == 200, answer.text[:1000]
        theirs = np.asarray(answer.json()["predictions"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    assert theirs.shape == (len(raw), 2)
    with TestClient(create_app(champion.settings, config.name, log_predictions=False)) as client:
        ours = client.post("/predict", headers=AUTH, json={"records": request_records(signature_inputs(config), raw)})
    assert ours.status_code == 200, ours.text[:500]
    served = np.array([p["probabilities"]["1"] for p in ours.json()["predictions"]])
    # A missing category reaches the model as None from MLflow's JSON parsing but as NaN from
    # airloop serving (and from pandas): the fitted SimpleImputer imputes NaN only, so those rows
    # score differently (a training-side question: the model's imputer; see the report of issue 12).
    # Every other row, missing numbers included, scores the same.
    category_null = raw[config.categorical_features].isna().any(axis=1).to_numpy()
    assert category_null.any() and raw.loc[~category_null, "claim_amount"].isna().any()
    np.testing.assert_allclose(theirs[~category_null, 1], served[~category_null], rtol=0, atol=1e-12)
