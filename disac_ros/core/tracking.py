"""Multi-object tracker for the aggregation center.

Each track is a constant-velocity Kalman filter in the world plane, state ``(x, y, vx, vy)``.
Every call to :meth:`MultiObjectTracker.update` takes one batch of detections at one time and:

1. predicts every live track to that time (``dt`` from the timestamps, so irregular rates work);
2. gates each (track, detection) pair with the squared Mahalanobis distance of the innovation
   against a chi-square threshold (2 degrees of freedom for a position measurement, 4 when the
   detection also measures velocity);
3. solves one optimal assignment (:func:`scipy.optimize.linear_sum_assignment`) over the gated
   pairs. The cost is the innovation's negative log-likelihood ``d^2 + ln det(2 pi S)`` plus a
   class penalty ``class_mismatch_cost * (1 - BC)``, where ``BC`` is the Bhattacharyya coefficient
   of the track's and the detection's class distributions (0 when they disagree completely);
4. updates matched tracks (Joseph-form Kalman update), counts misses on the others (they coast
   on the prediction) and starts a tentative track on each unmatched detection;
5. runs the track life cycle: a tentative track is confirmed once it has ``min_hits`` hits among
   its first ``confirm_window`` updates (M-of-N) and deleted as soon as it no longer can be; a
   confirmed track is deleted after ``max_misses`` consecutive misses or when it has not been
   updated for more than ``max_age_s`` seconds, where a gap between updates longer than
   ``outage_gap_s`` (nothing arrived at all) counts only ``outage_gap_s``.

Track ids start at 1 and only ever increase (never reused, not even after :meth:`reset`).
A track's class is the arg-max of class probabilities accumulated over its hits with exponential
forgetting (``class_decay``); its existence probability follows a simple Bayesian recursion on hits
and misses (``detection_probability``, ``false_alarm_probability``).

Bad input never raises: a detection with NaN/inf values or wrong shapes is dropped, and a batch
whose time is not finite or older than the last accepted batch is ignored. Both are counted in
:attr:`MultiObjectTracker.stats` with the reason of the last rejection, so a node can report them
(the core never logs).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
import enum
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import chi2

from disac_ros.core.errors import ConfigError
from disac_ros.core.geometry import nms_keep
from disac_ros.core.types import CLASS_NAMES

NUM_CLASSES = len(CLASS_NAMES)
_LOG_2PI = math.log(2.0 * math.pi)
# Cost of a gated-out pair: large enough that the solver only uses it when it must fill the
# assignment, after which such pairs are discarded.
_INFEASIBLE = 1e9
_H_POS = np.hstack([np.eye(2), np.zeros((2, 2))])
_H_FULL = np.eye(4)


class TrackState(str, enum.Enum):
    """Life-cycle state of a track."""

    TENTATIVE = 'tentative'
    CONFIRMED = 'confirmed'
    DELETED = 'deleted'


def class_distribution(class_id: int, confidence: float = 1.0) -> np.ndarray:
    """Return a distribution over CLASS_NAMES: ``confidence`` on ``class_id``, rest spread evenly.

    The remainder goes to the other real classes (never to index 0 'unknown').
    """
    if not 1 <= class_id < NUM_CLASSES:
        raise ValueError(f'class_id: expected 1..{NUM_CLASSES - 1}, got {class_id}')
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f'confidence: expected a value in [0, 1], got {confidence}')
    probs = np.full(NUM_CLASSES, (1.0 - confidence) / (NUM_CLASSES - 2))
    probs[0] = 0.0
    probs[class_id] = confidence
    return probs


@dataclass(frozen=True, eq=False)
class Detection:
    """One object detection in the world frame at the time of the batch it arrives in.

    Attributes:
        position: (2,) x, y in metres.
        class_probabilities: (NUM_CLASSES,) non-negative, indexed by CLASS_NAMES. Mass on index 0
            ('unknown') carries no class information and is ignored for voting.
        velocity: optional (2,) measured vx, vy in m/s (e.g. from radar Doppler or TRAM).
        position_cov: optional (2, 2) measurement covariance; default ``position_std_m**2 * I``.
        velocity_cov: optional (2, 2); default ``velocity_std_mps**2 * I``; used with velocity.
        confidence: probability in [0, 1] that the detection is a real object.
        devices: ids of the devices whose features produced this detection.
        present_devices: ids of every device in the group it was decoded from (empty =
            unknown); with ``devices`` it says whether other devices could have seen it too.

    """

    position: np.ndarray
    class_probabilities: np.ndarray
    velocity: np.ndarray | None = None
    position_cov: np.ndarray | None = None
    velocity_cov: np.ndarray | None = None
    confidence: float = 1.0
    devices: frozenset[str] = frozenset()
    present_devices: frozenset[str] = frozenset()


@dataclass(frozen=True, eq=False)
class Track:
    """A snapshot of one track at the time of the last update (positions in the world frame)."""

    id: int
    class_id: int                       # arg-max real class, 0 when no class evidence yet
    class_confidence: float             # class_probabilities[class_id]
    class_probabilities: np.ndarray     # (NUM_CLASSES,), index 0 always 0 once a class is known
    position: np.ndarray                # (2,) m
    velocity: np.ndarray                # (2,) m/s
    position_cov: np.ndarray            # (2, 2) m^2
    velocity_cov: np.ndarray            # (2, 2) (m/s)^2
    covariance: np.ndarray              # (4, 4) full state covariance (x, y, vx, vy)
    existence_probability: float
    hits: int                           # detections associated so far (birth included)
    age: int                            # tracker updates since birth, birth included
    misses: int                         # consecutive updates without a detection (coasting)
    first_seen_s: float
    last_update_s: float                # time of the last associated detection
    contributing_devices: tuple[str, ...]  # devices of the last associated detection, sorted
    state: TrackState

    @property
    def coasting(self) -> bool:
        """True when the last update had no detection for this track (pure prediction)."""
        return self.misses > 0


@dataclass
class TrackerStats:
    """Counters a node publishes as diagnostics."""

    updates: int = 0                    # accepted update() calls
    stale_updates: int = 0              # batches older than the last accepted one (ignored)
    invalid_time_updates: int = 0       # batches with a NaN/inf time (ignored)
    invalid_detections: int = 0         # detections dropped for NaN/inf or malformed fields
    tracks_born: int = 0
    tracks_confirmed: int = 0
    tracks_deleted: int = 0
    last_rejection: str = ''            # reason of the most recent rejection, for diagnostics


def _check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    kind = 'an int' if integer else 'a number'
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise ConfigError(f'tracker.{name}', f'must be {kind}, got {value!r}')
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f'tracker.{name}',
                          f'must be {">" if low_open else ">="} {low}, got {value}')
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(f'tracker.{name}',
                          f'must be {"<" if high_open else "<="} {high}, got {value}')


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker parameters (SI units). Validated on construction; errors name the field."""

    # White-noise acceleration spectral density q of the constant-velocity model, m^2/s^3.
    # Per axis Q = q * [[dt^3/3, dt^2/2], [dt^2/2, dt]]; q ~ (typical accel)^2 * (manoeuvre time).
    accel_psd: float = 2.0
    position_std_m: float = 0.5         # default position measurement noise (per axis)
    velocity_std_mps: float = 1.0       # default velocity measurement noise (per axis)
    initial_velocity_std_mps: float = 5.0  # prior velocity spread of a new track without velocity
    gate_probability: float = 0.999     # chi-square gate: P(true detection falls inside)
    class_mismatch_cost: float = 6.0    # added cost (NLL units) for completely different classes
    min_hits: int = 3                   # M of the M-of-N confirmation
    confirm_window: int = 5             # N of the M-of-N confirmation (updates since birth)
    max_misses: int = 5                 # consecutive misses that delete a confirmed track
    max_age_s: float = 2.0              # delete any track not updated for longer than this
    # A gap between two updates longer than this (nothing at all arrived: a link outage, a
    # paused bag) ages the tracks by only this much: it says nothing about whether the objects
    # are still there. 0 = every second of every gap counts towards max_age_s.
    outage_gap_s: float = 0.0
    class_decay: float = 0.9            # forgetting factor of the class votes per hit
    detection_probability: float = 0.9  # P(detected | exists), for the existence recursion
    false_alarm_probability: float = 0.1  # P(a detection lands on a non-existent track)
    birth_min_confidence: float = 0.3   # unmatched detections below this start no track
    # An unmatched detection inside the gate of a confirmed track of a similar class
    # (Bhattacharyya coefficient >= 0.5) starts no new track: it is most likely a duplicate
    # of that object, e.g. seen by two devices.
    suppress_birth_in_gate: bool = True
    # Track coalescence: a confirmed track closer than this to a confirmed track with more hits
    # is deleted, and no track is born this close to a confirmed one, whatever the classes (two
    # devices may disagree on the class of one object). 0 = off.
    merge_radius_m: float = 0.0
    # An unmatched detection that only one of several present devices reported starts a track
    # only at or above this confidence (0 = off). Measured on the session-21 model: 72 % of the
    # false detections come from one device, 81 % of the true ones from two or more.
    uncorroborated_birth_confidence: float = 0.0
    output_tentative: bool = False      # update() also returns tentative tracks

    def __post_init__(self) -> None:
        """Validate every field."""
        _check_number('accel_psd', self.accel_psd, low=0.0, low_open=True)
        _check_number('position_std_m', self.position_std_m, low=0.0, low_open=True)
        _check_number('velocity_std_mps', self.velocity_std_mps, low=0.0, low_open=True)
        _check_number('initial_velocity_std_mps', self.initial_velocity_std_mps, low=0.0,
                      low_open=True)
        _check_number('gate_probability', self.gate_probability, low=0.0, high=1.0,
                      low_open=True, high_open=True)
        _check_number('class_mismatch_cost', self.class_mismatch_cost, low=0.0)
        _check_number('min_hits', self.min_hits, low=1, integer=True)
        _check_number('confirm_window', self.confirm_window, low=1, integer=True)
        if self.min_hits > self.confirm_window:
            raise ConfigError('tracker.min_hits', f'must be <= confirm_window '
                              f'({self.confirm_window}), got {self.min_hits}')
        _check_number('max_misses', self.max_misses, low=1, integer=True)
        _check_number('max_age_s', self.max_age_s, low=0.0, low_open=True)
        _check_number('outage_gap_s', self.outage_gap_s, low=0.0)
        _check_number('class_decay', self.class_decay, low=0.0, high=1.0, low_open=True)
        _check_number('detection_probability', self.detection_probability, low=0.0, high=1.0,
                      low_open=True, high_open=True)
        _check_number('false_alarm_probability', self.false_alarm_probability, low=0.0,
                      high=1.0, low_open=True, high_open=True)
        _check_number('birth_min_confidence', self.birth_min_confidence, low=0.0, high=1.0)
        _check_number('merge_radius_m', self.merge_radius_m, low=0.0)
        _check_number('uncorroborated_birth_confidence', self.uncorroborated_birth_confidence,
                      low=0.0, high=1.0)
        for name in ('suppress_birth_in_gate', 'output_tentative'):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f'tracker.{name}', f'must be true or false, '
                                  f'got {getattr(self, name)!r}')

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> TrackerConfig:
        """Build from a mapping (e.g. a YAML ``tracker:`` section); unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ConfigError('tracker', f'must be a mapping, got {type(data).__name__}', source)
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f'tracker.{key}', f'unknown key; expected one of '
                                  f'{", ".join(sorted(known))}', source)
        try:
            return cls(**dict(data))
        except ConfigError as exc:
            if source is None:
                raise
            raise ConfigError(exc.field, exc.problem, source) from None


@dataclass
class _Measurement:
    z: np.ndarray                   # (m,) position or position+velocity
    R: np.ndarray                   # (m, m)
    probs: np.ndarray               # (NUM_CLASSES,) normalised, index 0 = no information
    confidence: float
    devices: frozenset[str]
    uncorroborated: bool = False    # one device reported it while others were present


@dataclass
class _TrackData:
    id: int
    x: np.ndarray                   # (4,)
    P: np.ndarray                   # (4, 4)
    votes: np.ndarray               # (NUM_CLASSES,) decayed class votes; index 0 unused
    existence: float
    first_seen_s: float
    last_update_s: float
    devices: frozenset[str]
    outage_credit_at_update_s: float = 0.0   # the tracker's outage credit at last_update_s
    state: TrackState = TrackState.TENTATIVE
    hits: int = 1
    age: int = 1
    misses: int = 0

    def real_class_distribution(self) -> np.ndarray | None:
        """Votes over the real classes (1..), normalised; None when there is no evidence yet."""
        total = float(self.votes[1:].sum())
        return self.votes[1:] / total if total > 0.0 else None


def _as_vector(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) else None


def _as_cov(value: Any) -> np.ndarray | None:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape != (2, 2) or not np.all(np.isfinite(arr)):
        return None
    arr = 0.5 * (arr + arr.T)
    # A covariance must be positive definite, else the gate and the update are meaningless.
    return arr if np.all(np.linalg.eigvalsh(arr) > 0.0) else None


class MultiObjectTracker:
    """Track objects across batches of world-frame detections; see the module docstring."""

    def __init__(self, config: TrackerConfig | None = None):
        """Create an empty tracker."""
        self.reconfigure(config or TrackerConfig())
        self._tracks: list[_TrackData] = []
        self._next_id = 1
        self._last_t: float | None = None
        self._outage_credit_s = 0.0     # gap time beyond outage_gap_s so far (ages no track)
        self._stats = TrackerStats()
        self._last_deleted: list[int] = []

    # ---- public API -----------------------------------------------------------------------

    def reconfigure(self, config: TrackerConfig) -> None:
        """Use ``config`` from the next update on; the current tracks are kept."""
        self.config = config
        self._gate = {2: float(chi2.ppf(config.gate_probability, 2)),
                      4: float(chi2.ppf(config.gate_probability, 4))}

    @property
    def stats(self) -> TrackerStats:
        """A copy of the counters."""
        return replace(self._stats)

    @property
    def last_time_s(self) -> float | None:
        """Time of the last accepted update, None before the first."""
        return self._last_t

    @property
    def last_deleted_ids(self) -> list[int]:
        """Ids of the tracks deleted by the last accepted update."""
        return list(self._last_deleted)

    def reset(self) -> None:
        """Drop all tracks and the time reference (e.g. when a bag loops). Ids keep increasing."""
        self._tracks = []
        self._last_t = None
        self._last_deleted = []

    def tracks(self, include_tentative: bool | None = None) -> list[Track]:
        """Snapshots of the live tracks, sorted by id (tentative ones per config by default)."""
        if include_tentative is None:
            include_tentative = self.config.output_tentative
        return [self._snapshot(tr) for tr in self._tracks
                if include_tentative or tr.state is TrackState.CONFIRMED]

    def update(self, t: float, detections: Iterable[Detection]) -> list[Track]:
        """Process the detections of one instant ``t`` (seconds) and return the tracks.

        A batch whose time is NaN/inf or older than the last accepted batch is ignored and
        counted; the current tracks are returned unchanged. Detections with non-finite or
        malformed fields are dropped and counted.
        """
        try:
            t = float(t)
        except (TypeError, ValueError):
            t = math.nan
        if not math.isfinite(t):
            self._stats.invalid_time_updates += 1
            self._stats.last_rejection = f'update time is not finite: {t}'
            return self.tracks()
        if self._last_t is not None and t < self._last_t:
            self._stats.stale_updates += 1
            self._stats.last_rejection = (f'update time {t:.6f} s is older than the last '
                                          f'update {self._last_t:.6f} s; batch ignored')
            return self.tracks()
        dt = 0.0 if self._last_t is None else t - self._last_t
        self._last_t = t
        if self.config.outage_gap_s > 0.0 and dt > self.config.outage_gap_s:
            self._outage_credit_s += dt - self.config.outage_gap_s
        self._stats.updates += 1
        self._last_deleted = []

        meas = [m for m in (self._validate(det) for det in detections) if m is not None]
        if dt > 0.0:
            for tr in self._tracks:
                self._predict(tr, dt)

        gated, cost, similarity = self._costs(meas)
        assigned_tracks: set[int] = set()
        assigned_meas: set[int] = set()
        if gated.any():
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if gated[r, c]:
                    self._correct(self._tracks[r], meas[c], t)
                    assigned_tracks.add(int(r))
                    assigned_meas.add(int(c))
        for i, tr in enumerate(self._tracks):
            tr.age += 1
            if i not in assigned_tracks:
                self._miss(tr)

        # A duplicate is a detection in the gate of a confirmed track of a similar class; the
        # track list has not changed since the costs were computed, so indices still match.
        confirmed = np.array([tr.state is TrackState.CONFIRMED for tr in self._tracks], bool)
        duplicate = gated & (similarity >= 0.5) & confirmed[:, None]
        radius = self.config.merge_radius_m
        anchors = np.array([tr.x[:2] for tr, c in zip(self._tracks, confirmed) if c]).reshape(-1, 2)
        for j, m in enumerate(meas):
            if j in assigned_meas or m.confidence < self.config.birth_min_confidence:
                continue
            if m.uncorroborated and m.confidence < self.config.uncorroborated_birth_confidence:
                continue
            if self.config.suppress_birth_in_gate and np.any(duplicate[:, j]):
                continue
            if radius > 0 and len(anchors) and \
                    float(np.min(np.hypot(*(anchors - m.z[:2]).T))) < radius:
                continue
            self._birth(m, t)

        self._life_cycle(t)
        if radius > 0:
            self._merge_close_tracks(radius)
        return self.tracks()

    def _merge_close_tracks(self, radius: float) -> None:
        """Delete confirmed tracks within ``radius`` of a confirmed track with more hits (then
        the older one): one object reported twice, e.g. by two devices a few metres apart."""
        confirmed = [tr for tr in self._tracks if tr.state is TrackState.CONFIRMED]
        if len(confirmed) <= 1:
            return
        hits = np.array([tr.hits for tr in confirmed], dtype=np.float64)
        # _tracks is sorted by id, and nms_keep's sort is stable: equal hits keep the older track
        kept = set(nms_keep(hits, np.array([tr.x[:2] for tr in confirmed]), 0.0, radius).tolist())
        dropped = {tr.id for i, tr in enumerate(confirmed) if i not in kept}
        for tr in confirmed:
            if tr.id in dropped:
                tr.state = TrackState.DELETED
                self._stats.tracks_deleted += 1
                self._last_deleted.append(tr.id)
        if dropped:
            self._tracks = [tr for tr in self._tracks if tr.id not in dropped]

    # ---- steps ----------------------------------------------------------------------------

    def _reject(self, reason: str) -> None:
        self._stats.invalid_detections += 1
        self._stats.last_rejection = reason

    def _validate(self, det: Detection) -> _Measurement | None:
        cfg = self.config
        pos = _as_vector(getattr(det, 'position', None), 2)
        if pos is None or not np.all(np.isfinite(pos)):
            self._reject(f'detection position is not a finite (2,) vector: '
                         f'{getattr(det, "position", None)!r}')
            return None
        probs = _as_vector(getattr(det, 'class_probabilities', None), NUM_CLASSES)
        if probs is None or not np.all(np.isfinite(probs)) or np.any(probs < 0.0) \
                or probs.sum() <= 0.0:
            self._reject(f'detection class_probabilities must be {NUM_CLASSES} finite '
                         f'non-negative values with a positive sum')
            return None
        conf = getattr(det, 'confidence', 1.0)
        if isinstance(conf, bool) or not isinstance(conf, (int, float, np.integer, np.floating)) \
                or not 0.0 <= float(conf) <= 1.0:
            self._reject(f'detection confidence must be in [0, 1], got {conf!r}')
            return None
        raw_pos_cov = getattr(det, 'position_cov', None)
        pos_cov = (np.eye(2) * cfg.position_std_m ** 2 if raw_pos_cov is None
                   else _as_cov(raw_pos_cov))
        if pos_cov is None:
            self._reject('detection position_cov must be a finite positive definite 2x2 matrix')
            return None
        z, R = pos, pos_cov
        raw_vel = getattr(det, 'velocity', None)
        if raw_vel is not None:
            vel = _as_vector(raw_vel, 2)
            if vel is None or not np.all(np.isfinite(vel)):
                self._reject(f'detection velocity is not a finite (2,) vector: {raw_vel!r}')
                return None
            raw_vel_cov = getattr(det, 'velocity_cov', None)
            vel_cov = (np.eye(2) * cfg.velocity_std_mps ** 2 if raw_vel_cov is None
                       else _as_cov(raw_vel_cov))
            if vel_cov is None:
                self._reject('detection velocity_cov must be a finite positive definite 2x2 '
                             'matrix')
                return None
            z = np.concatenate([pos, vel])
            R = np.zeros((4, 4))
            R[:2, :2] = pos_cov
            R[2:, 2:] = vel_cov
        devices = frozenset(getattr(det, 'devices', None) or ())
        present = frozenset(getattr(det, 'present_devices', None) or ()) | devices
        return _Measurement(z=z, R=R, probs=probs / probs.sum(), confidence=float(conf),
                            devices=devices, uncorroborated=len(devices) == 1 and len(present) > 1)

    def _predict(self, tr: _TrackData, dt: float) -> None:
        q = self.config.accel_psd
        F = np.eye(4)
        F[0, 2] = F[1, 3] = dt
        Q = np.zeros((4, 4))
        Q[0, 0] = Q[1, 1] = q * dt ** 3 / 3.0
        Q[0, 2] = Q[2, 0] = Q[1, 3] = Q[3, 1] = q * dt ** 2 / 2.0
        Q[2, 2] = Q[3, 3] = q * dt
        tr.x = F @ tr.x
        tr.P = F @ tr.P @ F.T + Q

    def _costs(self, meas: Sequence[_Measurement]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gate mask, assignment cost and class similarity, each (num_tracks, num_detections).

        The similarity is the Bhattacharyya coefficient of the real-class distributions, 1 where
        either side has no class evidence.
        """
        n_t, n_d = len(self._tracks), len(meas)
        gated = np.zeros((n_t, n_d), dtype=bool)
        cost = np.full((n_t, n_d), _INFEASIBLE)
        similarity = np.ones((n_t, n_d))
        if n_t == 0 or n_d == 0:
            return gated, cost, similarity
        X = np.stack([tr.x for tr in self._tracks])
        P = np.stack([tr.P for tr in self._tracks])
        # Detections with and without a velocity measurement are scored in two batched groups.
        for dim, H in ((2, _H_POS), (4, _H_FULL)):
            cols = [j for j, m in enumerate(meas) if m.z.shape[0] == dim]
            if not cols:
                continue
            Z = np.stack([meas[j].z for j in cols])                 # (D, m)
            R = np.stack([meas[j].R for j in cols])                 # (D, m, m)
            S = (H @ P @ H.T)[:, None] + R[None]                     # (T, D, m, m)
            y = Z[None] - (X @ H.T)[:, None]                         # (T, D, m)
            d2 = np.einsum('tdi,tdi->td', y, np.linalg.solve(S, y[..., None])[..., 0])
            logdet = np.linalg.slogdet(S)[1]
            ok = d2 <= self._gate[dim]
            gated[:, cols] = ok
            cost[:, cols] = np.where(ok, d2 + logdet + dim * _LOG_2PI, _INFEASIBLE)
        # Bhattacharyya coefficient of every (track, detection) pair of real-class
        # distributions; pairs where either side has no class evidence count as similar.
        track_votes = np.stack([tr.votes[1:] for tr in self._tracks])      # (T, C-1)
        det_probs = np.stack([m.probs[1:] for m in meas])                 # (D, C-1)
        t_sum = track_votes.sum(axis=1, keepdims=True)
        d_sum = det_probs.sum(axis=1, keepdims=True)
        sqrt_t = np.sqrt(track_votes / np.where(t_sum > 0.0, t_sum, 1.0))
        sqrt_d = np.sqrt(det_probs / np.where(d_sum > 0.0, d_sum, 1.0))
        informative = (t_sum > 0.0) & (d_sum > 0.0).T
        similarity = np.where(informative, np.clip(sqrt_t @ sqrt_d.T, 0.0, 1.0), 1.0)
        if self.config.class_mismatch_cost > 0.0:
            cost = np.where(gated, cost + self.config.class_mismatch_cost * (1.0 - similarity),
                            cost)
        return gated, cost, similarity

    def _correct(self, tr: _TrackData, m: _Measurement, t: float) -> None:
        H = _H_POS if m.z.shape[0] == 2 else _H_FULL
        S = H @ tr.P @ H.T + m.R
        K = np.linalg.solve(S, H @ tr.P).T                  # P H^T S^-1 (S, P symmetric)
        tr.x = tr.x + K @ (m.z - H @ tr.x)
        I_KH = np.eye(4) - K @ H
        # Joseph form keeps P symmetric positive definite under rounding.
        P = I_KH @ tr.P @ I_KH.T + K @ m.R @ K.T
        tr.P = 0.5 * (P + P.T)
        tr.hits += 1
        tr.misses = 0
        tr.last_update_s = t
        tr.outage_credit_at_update_s = self._outage_credit_s
        tr.devices = m.devices
        tr.votes = self.config.class_decay * tr.votes + m.confidence * m.probs
        tr.votes[0] = 0.0
        pd, pfa = self.config.detection_probability, self.config.false_alarm_probability
        e = tr.existence
        e_hit = e * pd / (e * pd + (1.0 - e) * pfa)
        # A low-confidence detection is weaker evidence: blend towards the prior.
        tr.existence = m.confidence * e_hit + (1.0 - m.confidence) * e

    def _miss(self, tr: _TrackData) -> None:
        tr.misses += 1
        pd = self.config.detection_probability
        e = tr.existence
        tr.existence = e * (1.0 - pd) / (1.0 - pd * e)

    def _birth(self, m: _Measurement, t: float) -> None:
        cfg = self.config
        x = np.zeros(4)
        P = np.zeros((4, 4))
        x[:2] = m.z[:2]
        P[:2, :2] = m.R[:2, :2]
        if m.z.shape[0] == 4:
            x[2:] = m.z[2:]
            P[2:, 2:] = m.R[2:, 2:]
        else:
            P[2:, 2:] = np.eye(2) * cfg.initial_velocity_std_mps ** 2
        votes = m.confidence * m.probs
        votes[0] = 0.0
        tr = _TrackData(id=self._next_id, x=x, P=P, votes=votes, existence=0.5 * m.confidence,
                        first_seen_s=t, last_update_s=t, devices=m.devices,
                        outage_credit_at_update_s=self._outage_credit_s)
        self._next_id += 1
        self._stats.tracks_born += 1
        if cfg.min_hits <= 1:
            tr.state = TrackState.CONFIRMED
            self._stats.tracks_confirmed += 1
        self._tracks.append(tr)

    def _life_cycle(self, t: float) -> None:
        cfg = self.config
        keep: list[_TrackData] = []
        for tr in self._tracks:
            if tr.state is TrackState.TENTATIVE:
                if tr.hits >= cfg.min_hits:
                    tr.state = TrackState.CONFIRMED
                    self._stats.tracks_confirmed += 1
                elif tr.hits + (cfg.confirm_window - tr.age) < cfg.min_hits:
                    tr.state = TrackState.DELETED   # can no longer reach M hits in N updates
            elif tr.misses >= cfg.max_misses:
                tr.state = TrackState.DELETED
            unseen_s = t - tr.last_update_s - (self._outage_credit_s - tr.outage_credit_at_update_s)
            if unseen_s > cfg.max_age_s:
                tr.state = TrackState.DELETED
            if tr.state is TrackState.DELETED:
                self._stats.tracks_deleted += 1
                self._last_deleted.append(tr.id)
            else:
                keep.append(tr)
        self._tracks = keep     # stays sorted by id: births are appended with increasing ids

    def _snapshot(self, tr: _TrackData) -> Track:
        dist = tr.real_class_distribution()
        probs = np.zeros(NUM_CLASSES)
        if dist is None:
            probs[0] = 1.0
            class_id = 0
        else:
            probs[1:] = dist
            class_id = 1 + int(np.argmax(dist))
        return Track(
            id=tr.id, class_id=class_id, class_confidence=float(probs[class_id]),
            class_probabilities=probs, position=tr.x[:2].copy(), velocity=tr.x[2:].copy(),
            position_cov=tr.P[:2, :2].copy(), velocity_cov=tr.P[2:, 2:].copy(),
            covariance=tr.P.copy(), existence_probability=float(tr.existence), hits=tr.hits,
            age=tr.age, misses=tr.misses, first_seen_s=tr.first_seen_s,
            last_update_s=tr.last_update_s, contributing_devices=tuple(sorted(tr.devices)),
            state=tr.state)


__all__ = ['NUM_CLASSES', 'Detection', 'MultiObjectTracker', 'Track', 'TrackState',
           'TrackerConfig', 'TrackerStats', 'class_distribution']
