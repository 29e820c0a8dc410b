"""Safe model loading: skops only, and only vetted scikit-learn/numpy types."""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

#: Top-level packages whose classes may be instantiated from a skops file.
TRUSTED_SKOPS_PACKAGES: frozenset[str] = frozenset({"sklearn", "numpy"})


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ModelLoadError(RuntimeError):
    """A model version could not be resolved, loaded or smoke-tested.

    ``outcome`` is a short machine label (``not_found``, ``rejected``, ``unavailable``, ``busy``,
    ``error``) and ``status_code`` the HTTP status ``POST /reload`` answers with.
    """

    def __init__(self, message: str, *, outcome: str = "rejected", status_code: int = 409) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.status_code = status_code


class UntrustedModelError(ModelLoadError):
    """The model file is not skops, or needs types outside the sklearn/numpy allow-list."""


# --------------------------------------------------------------------------------------------
# skops: vetting the types a model file needs
# --------------------------------------------------------------------------------------------


def _is_trusted_type_name(type_name: str) -> bool:
    """True when ``type_name`` names a class defined in an allowed package (never a function)."""
    module_name, _, attr = type_name.rpartition(".")
    if not module_name or module_name.split(".", 1)[0] not in TRUSTED_SKOPS_PACKAGES:
        return False
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(obj, type)


def vet_skops_types(type_names: Iterable[str]) -> list[str]:
    """Return ``type_names`` sorted if every one is a sklearn/numpy class; else raise.

    Raises :class:`UntrustedModelError` listing the refused names (functions, builtins, any other
    package, names that do not resolve).
    """
    names = sorted(set(type_names))
    refused = [name for name in names if not _is_trusted_type_name(name)]
    if refused:
        raise UntrustedModelError(
            f"model file needs types outside the trusted packages {sorted(TRUSTED_SKOPS_PACKAGES)}: {refused}"
        )
    return names


def skops_trusted_types(sk_model: Any) -> list[str]:
    """The vetted ``skops_trusted_types`` to pass to ``mlflow.sklearn.log_model`` for ``sk_model``.

    MLflow reloads a skops dump right after writing it and fails unless every non-default type is
    listed (e.g. ``numpy.dtype`` for any fitted pipeline, ``sklearn.tree._tree.Tree`` for forests,
    ``...predictor.TreePredictor`` for hist gradient boosting). This computes that list from a
    dump of ``sk_model`` and refuses anything the serving process would refuse too.
    """
    import skops.io

    return vet_skops_types(skops.io.get_untrusted_types(data=skops.io.dumps(sk_model)))


def load_skops_file(path: str) -> Any:
    """Load a skops file, trusting only vetted sklearn/numpy classes (see :func:`vet_skops_types`)."""
    import skops.io

    try:
        trusted = vet_skops_types(skops.io.get_untrusted_types(file=path))
        return skops.io.load(path, trusted=trusted)
    except ModelLoadError:
        raise
    except Exception as err:  # corrupt zip, unknown node types, skops/sklearn incompatibility...
        raise ModelLoadError(f"cannot read model file {os.path.basename(path)}: {type(err).__name__}: {err}") from err


@contextmanager
def quiet_skops():
    """Silence the deprecation warnings skops triggers inside Airflow workers: to locate numpy /
    scipy ufuncs it probes every imported module, Airflow's deprecated aliases included (~1,000
    log lines per model otherwise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield
