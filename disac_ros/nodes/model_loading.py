"""Load a node's model from a model folder, retrying while it is missing or corrupt.

A device or aggregator without a usable model must not die: it logs the error once per distinct
message, shows it in diagnostics (``model_error``, ``model_load_failures``) and tries again every
``period_s`` until the folder loads.
"""
from __future__ import annotations

from pathlib import Path
import time
from typing import Callable, Generic, TypeVar

from rclpy.node import Node

from disac_ros.core.errors import DisacError
from disac_ros.nodes.diagnostics import Diagnostics

T = TypeVar('T')


class RetryingModelLoader(Generic[T]):
    """Build a model from ``model_dir`` now and, while that fails, again every ``period_s``."""

    def __init__(self, node: Node, diag: Diagnostics, what: str, model_dir: str,
                 build: Callable[[Path], T], on_loaded: Callable[[T, Path, float], None],
                 period_s: float = 5.0):
        self.error = ''
        self._node, self._diag, self._what = node, diag, what
        self._model_dir, self._build, self._on_loaded = model_dir, build, on_loaded
        self._loaded = False
        self._timer = None
        if not self._attempt():
            self._timer = node.create_timer(period_s, self._attempt)

    def cancel(self) -> None:
        """Stop retrying (lifecycle cleanup)."""
        if self._timer is not None:
            self._timer.cancel()
            self._node.destroy_timer(self._timer)
            self._timer = None

    def _attempt(self) -> bool:
        from disac_ros.core.inference import find_model_dir
        if self._loaded:
            return True
        t0 = time.monotonic()
        model_dir = find_model_dir(self._model_dir)
        try:
            model = self._build(model_dir)
        except DisacError as exc:
            if str(exc) != self.error:
                self._node.get_logger().error(f'cannot load the {self._what} (retrying): {exc}')
            self.error = str(exc)
            self._diag.set('model_error', self.error)
            self._diag.count('model_load_failures')
            return False
        self._loaded = True
        self.error = ''
        self._diag.set('model_error', '')
        if self._timer is not None:
            self._timer.cancel()
        self._on_loaded(model, model_dir, time.monotonic() - t0)
        return True
