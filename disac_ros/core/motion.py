"""Deterministic kinematics: objects and vehicle devices moving along scenario paths.

Every mover follows a polyline (a lane, sidewalk, crossing or bike lane) whose corners are
rounded by circular fillets, so headings turn smoothly. Its free-flow arc length is a closed-form
function of time,

    s(t) = s0 + v t + (w v / omega) (sin(omega t + phi) - sin(phi)),
    ds/dt = v (1 + w cos(omega t + phi)),

a desired speed ``v`` with a slow oscillation of relative amplitude ``w`` (``speed_wobble``;
pedestrians dawdle, cars follow traffic).

Movers interact: each step a mover goes at ``min(ds/dt, (gap - MIN_GAP_M) / HEADWAY_S)`` where
``gap`` is the free distance to the nearest object ahead inside its corridor (a leader on the
same lane, a car crossing the intersection, a pedestrian on a crossing), so queues form and
cars wait for each other and for pedestrians instead of driving through them. When two movers
block each other the lower slot goes first; after ``PATIENCE_S`` at a standstill a mover ignores
crossing traffic, so no standoff freezes the scene. The reported velocity is the speed used for
the next step times the unit tangent: positions advance by exactly ``velocity * dt`` along the
path (up to the chords of rounded corners).

Closed paths loop. At the end of an open path a mover respawns at its start as a new object:
its ``object_id`` changes (``slot + 1 + lap * ID_STRIDE``) so a tracker evaluation sees a new
track, not a teleport.

Everything random (path choice, start offset, speed, wobble phase) is drawn once, at
construction, from a seeded ``np.random.Generator``, and the stepping is deterministic: the
same scenario and seed give the same motion.

Known simplifications: the interaction only looks at what is already in the corridor (no
right-of-way rules, traffic lights or braking limits), so an object that cuts in from the side
within one step can still briefly overlap another.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Sequence

import numpy as np

from disac_ros.core.scenario import Scenario
from disac_ros.core.types import OBJECT_CLASSES

ID_STRIDE = 1000            # object_id = slot + 1 + lap * ID_STRIDE
# Interaction (see TrafficModel): keep MIN_GAP_M to whatever is ahead in the own corridor,
# closing it at most at gap / HEADWAY_S; after PATIENCE_S at a standstill a mover creeps past
# crossing traffic so that a four-way standoff cannot freeze the scene.
MIN_GAP_M = 2.0
HEADWAY_S = 1.2
LOOKAHEAD_M = 30.0
CORRIDOR_MARGIN_M = 0.3
PATIENCE_S = 4.0
PREDICT_S = (0.0, 0.5)   # look-ahead instants (s) for crossing traffic
_FILLET_STEP_RAD = math.radians(5.0)   # arc discretisation of rounded corners
_MIN_GAP_M = 15.0           # preferred start spacing of movers entering on the same path start


def _spaced_start(rng: np.random.Generator, length: float, taken: Sequence[float],
                  min_gap: float, tries: int = 32) -> float:
    """A uniform start offset at least ``min_gap`` from the others (best of ``tries`` draws)."""
    best, best_gap = 0.0, -1.0
    for _ in range(tries):
        s = float(rng.uniform(0.0, length))
        gap = min((abs(s - o) for o in taken), default=math.inf)
        if gap >= min_gap:
            return s
        if gap > best_gap:
            best, best_gap = s, gap
    return best


class Polyline:
    """An arc-length parametrised 2D path with optional rounded corners."""

    def __init__(self, points: Sequence[Sequence[float]], closed: bool = False,
                 corner_radius: float = 0.0):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if corner_radius > 0.0:
            pts = _fillet(pts, closed, corner_radius)
        if closed:
            pts = np.vstack([pts, pts[:1]])
        seg = np.diff(pts, axis=0)
        seg_len = np.linalg.norm(seg, axis=1)
        keep = seg_len > 1e-9
        # Drop zero-length segments left by fillets that consumed a whole segment.
        pts = np.vstack([pts[:1], pts[1:][keep]])
        seg = np.diff(pts, axis=0)
        seg_len = np.linalg.norm(seg, axis=1)
        self.points = pts
        self.closed = closed
        self.cum = np.concatenate([[0.0], np.cumsum(seg_len)])
        self.length = float(self.cum[-1])
        self._tangent = seg / seg_len[:, None]

    def at(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """
        Point and unit tangent at arc length ``s`` (wrapped into [0, length)).

        Returns ``(xy, tangent)`` with shapes ``(..., 2)``.
        """
        s_arr = np.mod(np.asarray(s, dtype=np.float64), self.length)
        idx = np.clip(np.searchsorted(self.cum, s_arr, side='right') - 1, 0,
                      len(self._tangent) - 1)
        frac = s_arr - self.cum[idx]
        tangent = self._tangent[idx]
        return self.points[idx] + frac[..., None] * tangent, tangent


def _fillet(pts: np.ndarray, closed: bool, radius: float) -> np.ndarray:
    """Replace each corner by a circular arc of ``radius`` (shrunk to fit short segments)."""
    n = len(pts)
    out: list[np.ndarray] = []
    corners = range(n) if closed else range(1, n - 1)
    if not closed:
        out.append(pts[0])
    for i in corners:
        prev, cur, nxt = pts[(i - 1) % n], pts[i], pts[(i + 1) % n]
        a, b = prev - cur, nxt - cur
        la, lb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        ua, ub = a / la, b / lb
        cos_inner = float(np.clip(ua @ ub, -1.0, 1.0))
        inner = math.acos(cos_inner)          # angle between the two legs at the corner
        turn = math.pi - inner
        if turn < 1e-6 or inner < 1e-6:
            out.append(cur)
            continue
        trim = radius / math.tan(0.5 * inner)
        trim = min(trim, 0.5 * la, 0.5 * lb)  # never eat more than half of either leg
        r = trim * math.tan(0.5 * inner)
        p_in, p_out = cur + ua * trim, cur + ub * trim
        bis = ua + ub
        centre = cur + bis / np.linalg.norm(bis) * (r / math.sin(0.5 * inner))
        a0 = math.atan2(*(p_in - centre)[::-1])
        a1 = math.atan2(*(p_out - centre)[::-1])
        sweep = (a1 - a0 + math.pi) % (2.0 * math.pi) - math.pi
        k = max(2, int(math.ceil(abs(sweep) / _FILLET_STEP_RAD)) + 1)
        for ang in np.linspace(a0, a0 + sweep, k):
            out.append(centre + r * np.array([math.cos(ang), math.sin(ang)]))
    if not closed:
        out.append(pts[-1])
    return np.asarray(out)


@dataclass(frozen=True)
class MoverState:
    """Kinematic state of one mover at one instant (world frame)."""

    position: np.ndarray   # (3,) box centre (z = height / 2)
    velocity: np.ndarray   # (3,) exact time derivative of position
    yaw: float             # heading of the body x axis
    lap: int               # completed passes over an open path (0 on the first)


@dataclass(frozen=True)
class Mover:
    """One object or vehicle device moving along a path with the closed-form speed profile."""

    slot: int
    class_name: str
    size: tuple[float, float, float]
    path_name: str
    path: Polyline
    start_m: float
    speed_mps: float
    wobble: float = 0.0
    omega: float = 1.0
    phase: float = 0.0
    device_id: str | None = None   # set for a vehicle that carries a sensing device

    def arc_length(self, t: float) -> tuple[float, float]:
        """Arc length travelled s(t) (unwrapped) and its rate ds/dt."""
        v, w = self.speed_mps, self.wobble
        s = self.start_m + v * t + (w * v / self.omega) * (
            math.sin(self.omega * t + self.phase) - math.sin(self.phase))
        return s, v * (1.0 + w * math.cos(self.omega * t + self.phase))

    def state(self, t: float) -> MoverState:
        """Free-flow position, velocity, yaw and lap at time ``t`` (no interaction)."""
        s, sdot = self.arc_length(t)
        return self.state_at(s, sdot)

    def state_at(self, s: float, speed: float) -> MoverState:
        """State at unwrapped arc length ``s`` moving at ``speed`` along the path."""
        lap = 0 if self.path.closed else int(math.floor(s / self.path.length))
        xy, tan = self.path.at(s)
        pos = np.array([xy[0], xy[1], 0.5 * self.size[2]])
        vel = np.array([speed * tan[0], speed * tan[1], 0.0])
        return MoverState(pos, vel, math.atan2(tan[1], tan[0]), lap)

    def object_id(self, lap: int) -> int:
        """Id of the object this mover represents during ``lap`` (a respawn is a new object)."""
        return self.slot + 1 + lap * ID_STRIDE


@dataclass(frozen=True)
class RsuPose:
    """A fixed roadside unit: base position on the ground and heading."""

    position: np.ndarray   # (3,) base_link (pole foot, z = 0)
    yaw: float


class TrafficModel:
    """
    All movers of a scenario for one seed.

    ``objects`` lists the object movers in slot order: explicit ``objects.list`` entries first,
    then ``objects.mix`` in class order (car, truck, pedestrian, cyclist), then the vehicle
    devices (they are cars other devices see and must label). The class of each slot depends
    only on the scenario, never on the seed, so one rendered scene serves every seed.
    """

    def __init__(self, scenario: Scenario, seed: int):
        self.scenario = scenario
        self.seed = int(seed)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x7A11]))
        paths = {n: Polyline(p.points, p.closed, p.corner_radius)
                 for n, p in scenario.world.paths.items()}
        self.paths = paths
        # Paths that start at the same point (a straight lane and the turns leaving it) share one
        # entry; movers are spread over entries, and on a shared entry they start apart.
        entry = {n: (round(p.points[0][0], 1), round(p.points[0][1], 1))
                 for n, p in scenario.world.paths.items()}
        occupancy = {e: 0 for e in entry.values()}
        taken: dict[tuple[float, float], list[float]] = {e: [] for e in entry.values()}
        movers: list[Mover] = []
        for dev in scenario.devices:
            if dev.kind == 'vehicle':
                assert dev.path is not None
                occupancy[entry[dev.path]] += 1
                taken[entry[dev.path]].append(dev.start_m)
        for spec in scenario.objects.explicit:
            cls = scenario.classes[spec.class_name]
            occupancy[entry[spec.path]] += 1
            taken[entry[spec.path]].append(spec.start_m)
            movers.append(self._mover(len(movers), cls.name, cls.size, spec.path, spec.start_m,
                                      spec.speed_mps, cls.speed_wobble, rng))
        for cls_name in OBJECT_CLASSES:
            count = scenario.objects.mix.get(cls_name, 0)
            cls = scenario.classes.get(cls_name)
            for _ in range(count):
                assert cls is not None
                eligible = sorted(n for n, p in scenario.world.paths.items()
                                  if p.kind in cls.path_kinds)
                # Least occupied entry first, ties broken at random.
                least = min(occupancy[entry[n]] for n in eligible)
                candidates = [n for n in eligible if occupancy[entry[n]] == least]
                path = candidates[int(rng.integers(len(candidates)))]
                occupancy[entry[path]] += 1
                start = _spaced_start(rng, paths[path].length, taken[entry[path]],
                                      _MIN_GAP_M * max(1.0, cls.size[0] / 4.0))
                taken[entry[path]].append(start)
                movers.append(self._mover(len(movers), cls_name, cls.size, path, start,
                                          float(rng.uniform(*cls.speed_mps)), cls.speed_wobble,
                                          rng))
        self.device_movers: dict[str, Mover] = {}
        for dev in scenario.devices:
            if dev.kind == 'vehicle':
                assert dev.path is not None
                car = scenario.classes.get('car')
                size = car.size if car is not None else (4.4, 1.8, 1.5)
                m = Mover(len(movers), 'car', size, dev.path, paths[dev.path], dev.start_m,
                          dev.speed_mps, device_id=dev.id)
                movers.append(m)
                self.device_movers[dev.id] = m
        self.objects: tuple[Mover, ...] = tuple(movers)
        self.rsus: dict[str, RsuPose] = {
            d.id: RsuPose(np.array([d.position[0], d.position[1], 0.0]), math.radians(d.yaw_deg))
            for d in scenario.devices if d.kind == 'rsu' and d.position is not None}
        self._t = 0.0
        self._s = np.array([m.start_m for m in movers], dtype=np.float64)
        self._stopped = np.zeros(len(movers))
        self._last_speed: np.ndarray | None = None
        self._cache: tuple[list[MoverState], np.ndarray] | None = None

    def _mover(self, slot: int, cls: str, size: tuple[float, float, float], path: str,
               start_m: float, speed: float, wobble: float, rng: np.random.Generator) -> Mover:
        # Draw the wobble parameters for every mover (even with wobble 0) so that the random
        # stream, and thus every later draw, does not depend on the wobble settings.
        period = float(rng.uniform(6.0, 14.0))
        phase = float(rng.uniform(0.0, 2.0 * math.pi))
        return Mover(slot, cls, size, path, self.paths[path], start_m, speed, wobble,
                     2.0 * math.pi / period, phase)

    # -- time stepping ---------------------------------------------------------------------
    @property
    def time_s(self) -> float:
        """Current simulation time of the model."""
        return self._t

    def object_states(self) -> list[MoverState]:
        """States of all object movers (slot order) at the current time."""
        if self._cache is None:
            self._cache = self._compute_states()
        return self._cache[0]

    def advance(self, dt: float) -> None:
        """Move every mover forward by ``dt`` seconds (vehicles at their limited speed)."""
        if self._cache is None:
            self._cache = self._compute_states()
        speeds = self._cache[1]
        self._s += speeds * dt
        self._last_speed = speeds.copy()
        self._stopped = np.where(speeds < 0.1, self._stopped + dt, 0.0)
        self._t += dt
        self._cache = None

    def _compute_states(self) -> tuple[list[MoverState], np.ndarray]:
        t = self._t
        speeds = np.array([m.arc_length(t)[1] for m in self.objects])   # desired speeds
        arc = self._s
        # Geometry at the current arc lengths (the speed only scales the velocity).
        geo = [m.state_at(a, 1.0) for m, a in zip(self.objects, arc)]
        # Crossing traffic is extrapolated at the speed it actually went last step (a queued car
        # is not about to cross); at t = 0 there is no last step: use the desired speed.
        last = speeds if self._last_speed is None else self._last_speed
        limit = self._speed_limits(geo, last)
        speeds = np.minimum(speeds, limit)
        states = [m.state_at(a, float(v)) for m, a, v in zip(self.objects, arc, speeds)]
        return states, speeds

    def _speed_limits(self, geo: list[MoverState], moving: np.ndarray) -> np.ndarray:
        """
        Per mover speed cap from what is (or soon will be) ahead in its corridor.

        Another mover j blocks i when j's footprint lies ahead of i within i's corridor, now or
        (for crossing traffic) extrapolated ``PREDICT_S`` ahead at speed ``moving``; looking
        ahead in time lets two movers heading for the same spot settle who goes before they
        touch.
        """
        n = len(geo)
        limit = np.full(n, np.inf)
        if n < 2:
            return limit
        p0 = np.array([g.position[:2] for g in geo])
        tan = np.array([[math.cos(g.yaw), math.sin(g.yaw)] for g in geo])
        half_l = np.array([0.5 * m.size[0] for m in self.objects])
        half_w = np.array([0.5 * m.size[1] for m in self.objects])
        cos_ij = np.clip(tan @ tan.T, -1.0, 1.0)                 # heading agreement
        sin_ij = np.sqrt(1.0 - cos_ij ** 2)
        # Half extents of j's footprint along and across i's heading.
        along_j = half_l[None, :] * np.abs(cos_ij) + half_w[None, :] * sin_ij
        across_j = half_l[None, :] * sin_ij + half_w[None, :] * np.abs(cos_ij)
        crossing = np.abs(cos_ij) < math.cos(math.radians(30.0))
        blocks = np.zeros((n, n), dtype=bool)
        gap = np.full((n, n), np.inf)
        for tau in PREDICT_S:
            p = p0 + tan * (moving * tau)[:, None]
            rel = p[None, :, :] - p0[:, None, :]                # [i, j] = p_j(tau) - p_i
            ahead = np.einsum('ijk,ik->ij', rel, tan)
            lat = np.abs(rel[..., 0] * tan[:, None, 1] - rel[..., 1] * tan[:, None, 0])
            g = ahead - half_l[:, None] - along_j
            b = ((ahead > 0.0) & (lat < half_w[:, None] + across_j + CORRIDOR_MARGIN_M)
                 & (g < LOOKAHEAD_M))
            if tau > 0.0:
                b &= crossing   # predict only crossing traffic; followers are seen as they are
            blocks |= b
            gap = np.where(b, np.minimum(gap, g), gap)
        np.fill_diagonal(blocks, False)
        # Two movers in each other's way: the lower slot goes first.
        mutual = blocks & blocks.T
        blocks &= ~(mutual & (np.arange(n)[:, None] < np.arange(n)[None, :]))
        # Patience: after a long stop, ignore crossing (not same-direction) traffic.
        impatient = self._stopped >= PATIENCE_S
        blocks &= ~(impatient[:, None] & crossing)
        cap = np.where(blocks, np.maximum(0.0, (gap - MIN_GAP_M) / HEADWAY_S), np.inf)
        return cap.min(axis=1)

    def device_pose(self, device_id: str) -> tuple[np.ndarray, float, np.ndarray]:
        """Base_link position (z = 0), yaw and velocity of a device at the current time."""
        if device_id in self.device_movers:
            st = self.object_states()[self.device_movers[device_id].slot]
            base = st.position.copy()
            base[2] = 0.0
            return base, st.yaw, st.velocity
        if device_id in self.rsus:
            r = self.rsus[device_id]
            return r.position.copy(), r.yaw, np.zeros(3)
        raise KeyError(f'unknown device {device_id!r}')
