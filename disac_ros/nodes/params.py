"""Declare node parameters from a table of specs, with descriptions and ranges, and validate them.

Each node lists its parameters once as ``Param`` specs; ``declare_params`` declares them with a
``ParameterDescriptor`` (description, range, read-only flag, so ``ros2 param describe`` is useful),
then checks type, range and choices itself and raises ``ConfigError`` naming ``<node>.<param>``.
Floats accept integer overrides (a YAML ``rate_hz: 5`` must not be a type error).

Parameters are read-only unless their spec says ``read_only=False``; ``on_parameter_change``
accepts a ``ros2 param set`` of those after the same validation plus the node's own check; rclpy
refuses the others by their read-only descriptor, whose description says why (structural). ``usage`` is the
text of a node executable's ``--help``.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Callable, Sequence

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node

from disac_ros.core.errors import ConfigError

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          list: ParameterType.PARAMETER_STRING_ARRAY}


@dataclass(frozen=True)
class Param:
    """One parameter: name, default (its type is the parameter's type), description, limits.

    ``minimum``/``maximum`` are inclusive; ``exclusive_minimum`` makes the lower bound strict (a rate
    must be > 0). ``choices`` restricts a string. A list default means a list of strings.
    """

    name: str
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] | None = None
    read_only: bool = True

    @property
    def _bool_choice(self) -> bool:
        return bool(self.choices) and {'true', 'false'} <= set(self.choices)

    @property
    def kind(self) -> type:
        """Python type of the value (bool, int, float, str or list)."""
        return type(self.default)

    def descriptor(self) -> ParameterDescriptor:
        """The ParameterDescriptor advertised for this parameter."""
        note = ' (read-only: structural, restart the node to change it)' if self.read_only else \
            ' (dynamic: ros2 param set takes effect at once)'
        d = ParameterDescriptor(name=self.name, type=_TYPES[self.kind], description=self.description + note,
                                read_only=self.read_only)
        constraints = []
        if self.choices:
            constraints.append(f'one of: {", ".join(self.choices)}')
        if self.minimum is not None or self.maximum is not None:
            lo = '-inf' if self.minimum is None else repr(self.minimum)
            hi = 'inf' if self.maximum is None else repr(self.maximum)
            constraints.append(f'range {"(" if self.exclusive_minimum else "["}{lo}, {hi}]')
        d.additional_constraints = '; '.join(constraints)
        if self.kind is float or self._bool_choice:
            # Dynamic typing so an integer override of a float (or true/false for a choice such as
            # 'auto|true|false', which the ROS parser types as bool) is accepted; checked below.
            d.dynamic_typing = True
        elif self.kind is int and self.minimum is not None and self.maximum is not None:
            d.integer_range = [IntegerRange(from_value=int(self.minimum), to_value=int(self.maximum), step=1)]
        if self.kind is float and self.minimum is not None and self.maximum is not None \
                and not self.exclusive_minimum:
            d.floating_point_range = [FloatingPointRange(from_value=float(self.minimum),
                                                         to_value=float(self.maximum), step=0.0)]
        return d


def declare_params(node: Node, specs: Sequence[Param]) -> dict[str, Any]:
    """Declare every spec on ``node`` and return ``{name: validated value}``."""
    values: dict[str, Any] = {}
    for spec in specs:
        field = f'{node.get_name()}.{spec.name}'
        try:
            value = node.declare_parameter(spec.name, spec.default, spec.descriptor()).value
        except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
            raise ConfigError(field, str(exc)) from None
        values[spec.name] = validate(spec, value, field)
    return values


def validate(spec: Param, value: Any, field: str | None = None) -> Any:
    """Check one value against its spec; return it coerced to the spec's type."""
    field = field or spec.name
    kind = spec.kind
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(field, f'expected a number, got {value!r}')
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(field, f'expected a finite number, got {value!r}')
    elif kind is str and isinstance(value, bool) and spec._bool_choice:
        value = 'true' if value else 'false'
    elif kind is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(field, f'expected a list of strings, got {value!r}')
        value = list(value)
    elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(field, f'expected {kind.__name__}, got {value!r}')
    if spec.minimum is not None:
        if spec.exclusive_minimum and not value > spec.minimum:
            raise ConfigError(field, f'must be > {spec.minimum}, got {value!r}')
        if not spec.exclusive_minimum and value < spec.minimum:
            raise ConfigError(field, f'must be >= {spec.minimum}, got {value!r}')
    if spec.maximum is not None and value > spec.maximum:
        raise ConfigError(field, f'must be <= {spec.maximum}, got {value!r}')
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(field, f'expected one of {", ".join(spec.choices)}, got {value!r}')
    return value


def on_parameter_change(node: Node, specs: Sequence[Param], values: dict[str, Any],
                        apply: Callable[[dict[str, Any]], None]) -> None:
    """Accept ``ros2 param set`` of the dynamic (``read_only=False``) specs.

    Each change is validated like a start-up value, then ``apply(changed)`` is called with the
    coerced new values and ``values`` (the node's config dict) updated; when ``apply`` raises
    ``ConfigError`` (the node's own cross-checks) the whole set is refused with that reason and
    nothing changes. Register after ``declare_params``.
    """
    by_name = {s.name: s for s in specs}

    def callback(parameters: list) -> SetParametersResult:
        changed: dict[str, Any] = {}
        for p in parameters:
            spec = by_name.get(p.name)
            if spec is None:
                continue                     # rclpy's own (use_sim_time) or undeclared: not ours
            # (read-only specs never get here: rclpy refuses them by their descriptor)
            try:
                changed[p.name] = validate(spec, p.value, f'{node.get_name()}.{p.name}')
            except ConfigError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        if not changed:
            return SetParametersResult(successful=True)
        try:
            apply(changed)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        values.update(changed)
        node.get_logger().info('parameters changed: ' + ', '.join(f'{k}={v!r}' for k, v in changed.items()))
        return SetParametersResult(successful=True)
    node.add_on_set_parameters_callback(callback)


def usage(executable: str, doc: str, specs: Sequence[Param]) -> str:
    """The ``--help`` text of a node executable: what it does, how to run it, its parameters."""
    summary = (doc or '').strip().split('\n\n')[0].strip()
    lines = [f'usage: ros2 run disac_ros {executable} [--help] [--ros-args -p NAME:=VALUE ... '
             f'--params-file FILE -r __ns:=/NS --log-level LEVEL]', '']
    if summary:
        lines += [summary, '']
    lines.append('parameters (ros2 param describe shows the same; d = dynamic, settable while running):')
    for spec in specs:
        default = spec.default if spec.kind is not str else repr(spec.default)
        limits = spec.descriptor().additional_constraints
        flag = 'd' if not spec.read_only else ' '
        lines.append(f'  {flag} {spec.name} ({spec.kind.__name__}, default {default}): {spec.description}'
                     + (f' [{limits}]' if limits else ''))
    lines += ['', 'Every node also takes use_sim_time (bool). Exit status: 0 after SIGINT/SIGTERM, '
                  '2 on a bad parameter, 1 on another failure.']
    return '\n'.join(lines)


def use_sim_time(node: Node) -> bool:
    """The node's ``use_sim_time`` (declared by rclpy itself)."""
    return bool(node.get_parameter('use_sim_time').value)
