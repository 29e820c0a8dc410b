"""airloop: the library behind the Airflow MLOps loop (validate, train, register, promote, deploy,
serve, monitor, retrain).

Importing the package caps OpenMP/BLAS threads at one per process unless the environment says
otherwise. On small machines the default (one thread per visible CPU, often far more than the
container may use) made a single HistGradientBoosting prediction ~14x slower (27 ms vs 2 ms
measured on the 2-core dev box) and a fit ~7x slower; parallelism comes from running several
workers (mapped Airflow tasks, uvicorn workers) instead.
"""

import os as _os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
