"""Managed (lifecycle) behaviour shared by the device and aggregator nodes.

ROS 2 lifecycle semantics (``ros2 lifecycle get/set/list``): *unconfigured* after construction
(parameters declared and validated, nothing loaded), ``configure`` loads the model and creates the
subscriptions and timers, ``activate`` starts processing and publishing, ``deactivate`` pauses
(inputs are dropped, nothing is published), ``cleanup`` releases the model and the subscriptions.
With the ``autostart`` parameter (default true) the node configures and activates itself at start,
as an unmanaged node would; a launch system that orchestrates the start sets it false.
"""
from __future__ import annotations

from typing import Any, Callable

from rclpy.guard_condition import GuardCondition
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from disac_ros.core.errors import ConfigError
from disac_ros.nodes.params import Param

AUTOSTART = Param('autostart', True, 'configure and activate at start (false: wait for ros2 lifecycle set)')


class ManagedNode(LifecycleNode):
    """A lifecycle node whose subclass provides ``configure_io`` / ``cleanup_io``."""

    def __init__(self, name: str, **node_kwargs: Any) -> None:
        super().__init__(name, **node_kwargs)
        self.active = False
        self._configure_error: ConfigError | None = None
        self._io: list[Any] = []         # subscriptions, timers, guard conditions of configure_io

    # ---- for subclasses ---------------------------------------------------------------------

    def configure_io(self) -> None:
        """Load the model, create subscriptions and timers (use ``track``); ConfigError on a bad setting."""
        raise NotImplementedError

    def cleanup_io(self) -> None:
        """Release what ``configure_io`` made beyond the tracked entities (e.g. the model)."""

    def track(self, entity: Any) -> Any:
        """Remember a subscription, timer or guard condition so ``cleanup`` destroys it; returns it."""
        self._io.append(entity)
        return entity

    def start(self, autostart: bool) -> None:
        """End of the subclass constructor: configure + activate when ``autostart``; a
        configuration error is raised (the executable exits 2), as for an unmanaged node."""
        if not autostart:
            self.get_logger().info('unconfigured; waiting for ros2 lifecycle set ... configure / activate')
            return
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            if self._configure_error is not None:
                raise self._configure_error
            raise ConfigError(f'{self.get_name()}', 'configure failed (see the log)')
        self.trigger_activate()

    # ---- transitions ------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.configure_io()
        except ConfigError as exc:
            self._configure_error = exc
            self.get_logger().error(f'configure failed: {exc}')
            self._destroy_io()
            return TransitionCallbackReturn.FAILURE
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._destroy_io()
        self.cleanup_io()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        return super().on_shutdown(state)

    def _destroy_io(self) -> None:
        for entity in self._io:
            if hasattr(entity, 'timer_period_ns'):
                destroy: Callable[[Any], Any] = self.destroy_timer
            elif isinstance(entity, GuardCondition):
                destroy = self.destroy_guard_condition
            else:
                destroy = self.destroy_subscription
            destroy(entity)
        self._io.clear()
