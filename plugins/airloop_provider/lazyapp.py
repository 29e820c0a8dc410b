"""An ASGI app built on its first use, for the plugin's ``fastapi_apps``.

Airflow imports every plugin in every one of its processes — each task process too (the Task
SDK loads the plugins for listeners and macros before it runs a task) — but only the API server
ever calls the plugin's FastAPI apps. Building them means importing FastAPI's routers, pydantic
models and the view's templates: about a fifth of a short task's CPU in a backfill (py-spy over a
LocalExecutor backfill, ``benchmarks/backfill.py``). :class:`LazyApp` holds the factory's import
path instead and builds the app at the first request (or the first attribute asked of it, e.g.
``.routes``), once, under a lock.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any


class LazyApp:
    """ASGI app ``"module:factory"``, imported and built on first use."""

    def __init__(self, factory: str) -> None:
        module, _, name = factory.partition(":")
        if not module or not name:
            raise ValueError(f"factory must be 'module:function', not {factory!r}")
        self._factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def app(self) -> Any:
        """The built application (building it now if needed)."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    module, _, name = self._factory.partition(":")
                    self._app = getattr(importlib.import_module(module), name)()
        return self._app

    @property
    def built(self) -> bool:
        return self._app is not None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def __getattr__(self, name: str) -> Any:  # routes, state, openapi(), ... of the real app
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.app, name)

    def __repr__(self) -> str:
        return f"LazyApp({self._factory!r}, built={self.built})"
