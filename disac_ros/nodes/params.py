"""Declare node parameters from a table of specs, with descriptions and ranges, and validate them.

Each node lists its parameters once as ``Param`` specs; ``declare_params`` declares them with a
``ParameterDescriptor`` (description, range, read-only flag, so ``ros2 param describe`` is useful),
then checks type, range and choices itself and raises ``ConfigError`` naming ``<node>.<param>``.
Floats accept integer overrides (a YAML ``rate_hz: 5`` must not be a type error).
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
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
        d = ParameterDescriptor(name=self.name, type=_TYPES[self.kind], description=self.description,
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


def use_sim_time(node: Node) -> bool:
    """The node's ``use_sim_time`` (declared by rclpy itself)."""
    return bool(node.get_parameter('use_sim_time').value)
