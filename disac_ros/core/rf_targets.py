"""Radar targets: point scatterers and the per-class scatterer models with micro-Doppler.

Each object is a handful of point scatterers on its bounding box. The rigid-body points move with
the object; the moving parts (limbs, pedals, wheels) add a periodic velocity on top, so classes
differ in Doppler spread, not only in radar cross-section (RCS). Everything is a deterministic
function of ``time_s`` (and the optional ``gait_phase``), so a scene replays exactly.

Total RCS per class (order of magnitude of published 77 GHz measurements; aspect dependence
is ignored):

==========  =========  ==========================================================================
class       RCS (m^2)  scatterers (RCS m^2) and micro-motion
==========  =========  ==========================================================================
car         10         front (2.8), rear (2.2), left/right sides (1.6 each), roof (1.4);
                       4 wheel rim points (0.1 each): rolling, radial speed sweeps 0..2v
truck       30         front (8.5), rear (7.0), sides (5.0 each), roof (3.9);
                       6 wheel rim points (0.1 each)
pedestrian  0.7        torso (0.35), head (0.05); 2 arms (0.05 each) and 2 legs (0.1 each)
                       swinging along the heading at the gait frequency 0.9 + 0.35 * speed Hz
                       (about 1.4 Hz walking), swing speed 0.9 (arms) and 1.1 (legs) x speed,
                       capped at 3 m/s: about +-1.5 m/s when walking at 1.4 m/s
cyclist     2.0        bike frame (0.85), rider torso (0.5), head (0.05); 2 feet (0.15 each) on
                       pedal circles (radius 0.17 m, about 1.3 Hz cadence while moving);
                       2 wheel rim points (0.15 each)
unknown     1.0        one point, no micro-motion
==========  =========  ==========================================================================

A rim point at angle ``a`` from the top of a wheel of radius ``r`` rolling at forward speed ``v``
moves at ``v * (1 + cos a)`` forward and ``-v * sin a`` vertically (the contact point is still,
the top moves at 2v). Self-occlusion of the far side of an object is not modelled.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from disac_ros.core.errors import ConfigError


@dataclass(frozen=True)
class Scatterer:
    """One point reflector: world-frame position and velocity, RCS and extra path loss."""

    position: np.ndarray    # (3,) world frame, metres
    velocity: np.ndarray    # (3,) world frame, m/s
    rcs_m2: float
    extra_loss_db: float = 0.0   # two-way extra attenuation on this radar's path (occlusion)

    def __post_init__(self) -> None:
        for name in ('position', 'velocity'):
            arr = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if arr.shape != (3,) or not np.all(np.isfinite(arr)):
                raise ConfigError(f'Scatterer.{name}', f'expected 3 finite numbers, got {arr!r}')
            object.__setattr__(self, name, arr)
        if not (math.isfinite(self.rcs_m2) and self.rcs_m2 >= 0):
            raise ConfigError('Scatterer.rcs_m2', f'must be finite and >= 0, got {self.rcs_m2!r}')
        if not math.isfinite(self.extra_loss_db):
            raise ConfigError('Scatterer.extra_loss_db',
                              f'must be finite, got {self.extra_loss_db!r}')


# Rigid-body points: (x, y, z) as fractions of (length, width, height) from the box centre, RCS.
_CAR_BODY = (((0.5, 0.0, -0.1), 2.8), ((-0.5, 0.0, -0.1), 2.2), ((0.0, 0.5, -0.1), 1.6),
             ((0.0, -0.5, -0.1), 1.6), ((0.1, 0.0, 0.5), 1.4))
_TRUCK_BODY = (((0.5, 0.0, -0.1), 8.5), ((-0.5, 0.0, -0.1), 7.0), ((0.0, 0.5, -0.1), 5.0),
               ((0.0, -0.5, -0.1), 5.0), ((0.0, 0.0, 0.5), 3.9))
CLASS_RCS_M2: dict[str, float] = {'car': 10.0, 'truck': 30.0, 'pedestrian': 0.7, 'cyclist': 2.0,
                                  'unknown': 1.0}
_WHEEL_RCS_M2 = {'car': 0.1, 'truck': 0.1, 'cyclist': 0.15}


def object_scatterers(class_name: str, position: ArrayLike, velocity: ArrayLike, yaw: float,
                      size: Sequence[float], time_s: float, *,
                      gait_phase: float = 0.0) -> list[Scatterer]:
    """
    Return the point scatterers of one object at time ``time_s`` (world frame).

    ``position`` is the box centre, ``size`` is (length, width, height), ``yaw`` the heading of
    the body x axis. ``gait_phase`` (radians) offsets the limb/wheel cycles so that objects of the
    same class do not move in lockstep (pass e.g. a value derived from the object id).

    Raises
    ------
        ConfigError: for an unknown class or a malformed size.

    """
    pos = np.asarray(position, dtype=np.float64).reshape(3)
    vel = np.asarray(velocity, dtype=np.float64).reshape(3)
    if len(size) != 3 or not all(math.isfinite(s) and s > 0 for s in size):
        raise ConfigError('size', f'expected (length, width, height) > 0, got {size!r}')
    length, width, height = (float(s) for s in size)
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    # Forward speed along the heading drives wheels and gait (negative when reversing).
    v_fwd = float(vel @ rot[:, 0])
    dims = np.array([length, width, height])
    parts: list[tuple[np.ndarray, np.ndarray, float]] = []   # (offset body, extra vel body, rcs)

    def rigid(points: Sequence[tuple[tuple[float, float, float], float]]) -> None:
        for frac, rcs in points:
            parts.append((np.asarray(frac) * dims, np.zeros(3), rcs))

    def wheels(centres: Sequence[tuple[float, float]], radius: float, rcs: float) -> None:
        # Rim point angle a from the top; a grows as the wheel rolls forward.
        omega = v_fwd / radius
        for i, (fx, fy) in enumerate(centres):
            a = omega * time_s + gait_phase + i * (2.0 * math.pi / len(centres))
            centre = np.array([fx * length, fy * width, -0.5 * height + radius])
            offset = centre + radius * np.array([math.sin(a), 0.0, math.cos(a)])
            extra = v_fwd * np.array([math.cos(a), 0.0, -math.sin(a)])
            parts.append((offset, extra, rcs))

    if class_name == 'car':
        rigid(_CAR_BODY)
        r = min(0.33, 0.25 * height)
        wheels([(0.33, 0.5), (0.33, -0.5), (-0.33, 0.5), (-0.33, -0.5)], r, _WHEEL_RCS_M2['car'])
    elif class_name == 'truck':
        rigid(_TRUCK_BODY)
        r = min(0.5, 0.2 * height)
        wheels([(0.38, 0.5), (0.38, -0.5), (-0.2, 0.5), (-0.2, -0.5), (-0.38, 0.5),
                (-0.38, -0.5)], r, _WHEEL_RCS_M2['truck'])
    elif class_name == 'pedestrian':
        rigid((((0.0, 0.0, 0.1), 0.35), ((0.0, 0.0, 0.45), 0.05)))
        speed = abs(v_fwd)
        freq = 0.9 + 0.35 * speed
        sign = 1.0 if v_fwd >= 0 else -1.0
        # (lateral fraction, height fraction, swing gain, phase, rcs); arms swing against legs.
        limbs = ((0.5, 0.1, 0.9, 0.0, 0.05), (-0.5, 0.1, 0.9, math.pi, 0.05),
                 (0.25, -0.3, 1.1, math.pi, 0.1), (-0.25, -0.3, 1.1, 0.0, 0.1))
        for fy, fz, gain, phase, rcs in limbs:
            amp = min(gain * speed, 3.0)
            ph = 2.0 * math.pi * freq * time_s + gait_phase + phase
            # Velocity amp*sin(ph) along the heading; position is its integral.
            dx = -amp / (2.0 * math.pi * freq) * math.cos(ph)
            offset = np.array([sign * dx, fy * width, fz * height])
            parts.append((offset, np.array([sign * amp * math.sin(ph), 0.0, 0.0]), rcs))
    elif class_name == 'cyclist':
        rigid((((0.0, 0.0, -0.1), 0.85), ((-0.1, 0.0, 0.25), 0.5), ((0.0, 0.0, 0.45), 0.05)))
        crank, cadence = 0.17, (1.3 if abs(v_fwd) > 0.3 else 0.0)
        for i in range(2):
            a = 2.0 * math.pi * cadence * time_s + gait_phase + i * math.pi
            offset = np.array([crank * math.sin(a), 0.0, -0.25 * height + crank * math.cos(a)])
            w = 2.0 * math.pi * cadence * crank
            parts.append((offset, w * np.array([math.cos(a), 0.0, -math.sin(a)]), 0.15))
        wheels([(0.35, 0.0), (-0.35, 0.0)], min(0.34, 0.2 * height), _WHEEL_RCS_M2['cyclist'])
    elif class_name == 'unknown':
        rigid((((0.0, 0.0, 0.0), CLASS_RCS_M2['unknown']),))
    else:
        raise ConfigError('class_name', f'unknown class {class_name!r}; expected one of '
                                        f'{", ".join(sorted(CLASS_RCS_M2))}')
    return [Scatterer(position=pos + rot @ off, velocity=vel + rot @ extra, rcs_m2=rcs)
            for off, extra, rcs in parts]
