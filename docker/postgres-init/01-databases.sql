-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d), as
-- POSTGRES_USER (airflow), after it created POSTGRES_DB (airflow: Airflow's metadata).
-- One database per store; `python -m airloop.cli init` (airflow-init) would also create any
-- that is missing, but the MLflow server starts before it and needs its database at once.
CREATE DATABASE mlflow;   -- MLflow tracking + model registry (AIRLOOP_MLFLOW_BACKEND_STORE_URI)
CREATE DATABASE airloop;  -- monitoring store: predictions, drift, alerts, ledger (AIRFLOW_CONN_AIRLOOP_MONITORING)
CREATE DATABASE optuna;   -- Optuna studies shared by the workers (AIRLOOP_OPTUNA_STORAGE)
