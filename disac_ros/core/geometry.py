"""Sensor geometry: camera poses and projection, line-of-sight tests against boxes, 2-D
non-maximum suppression (used by detection_fusion and the tracker).

Frames (REP 103 / REP 105):

* world: x east, y north, z up.
* base_link of a device: x forward, y left, z up; yaw about +z; origin on the ground.
* camera optical frame: z forward (along the optical axis), x right, y down.
* radar frame: x boresight, y left, z up (the RF model in ``rf.py`` uses the same frame).

The pinhole intrinsics follow the OpenCV convention (pixel centres at integer coordinates):
``u = fx * x / z + cx`` with ``fx = fy = (H / 2) / tan(fov_v / 2)``, ``cx = (W - 1) / 2``,
``cy = (H - 1) / 2``. ``fov`` is the *vertical* field of view, which is how Genesis defines it;
a test renders a known object and checks the colour at the projected pixel.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

_EPS = 1e-9


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation (3, 3) about +z by ``yaw`` (body -> world)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def optical_rotation(pitch: float) -> np.ndarray:
    """
    Rotation (3, 3) from the camera optical frame to base_link for a camera pitched down.

    Columns are the optical x (right), y (down), z (forward) axes expressed in base_link.
    ``pitch`` > 0 tilts the optical axis below the horizon.
    """
    cp, sp = math.cos(pitch), math.sin(pitch)
    z_fwd = np.array([cp, 0.0, -sp])
    x_right = np.array([0.0, -1.0, 0.0])
    y_down = np.cross(z_fwd, x_right)
    return np.stack([x_right, y_down, z_fwd], axis=1)


def mount_rotation(pitch_deg: float, yaw_deg: float = 0.0) -> np.ndarray:
    """Optical frame -> base_link (3, 3) of a camera pitched down ``pitch_deg`` and turned
    ``yaw_deg`` counter-clockwise about the body z axis."""
    r = optical_rotation(math.radians(pitch_deg))
    if yaw_deg == 0.0:
        return r            # exactly the unyawed matrix (no identity product round-off)
    return yaw_matrix(math.radians(yaw_deg)) @ r


def rotation_to_quat_xyzw(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a rotation matrix (Shepperd's method, w >= 0)."""
    m = np.asarray(r, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0.0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    qa = np.asarray(q)
    qa /= np.linalg.norm(qa)
    return -qa if qa[3] < 0 else qa


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """Pinhole K (3, 3) for a vertical field of view ``fov_deg`` (square pixels)."""
    f = 0.5 * height / math.tan(math.radians(0.5 * fov_deg))
    return np.array([[f, 0.0, 0.5 * (width - 1)], [0.0, f, 0.5 * (height - 1)], [0.0, 0.0, 1.0]])


class CameraPose:
    """A camera in the world: optical-frame rotation ``r_wc`` (3, 3) and position ``t_wc`` (3,)."""

    def __init__(self, r_wc: np.ndarray, t_wc: np.ndarray):
        self.r_wc = np.asarray(r_wc, dtype=np.float64)
        self.t_wc = np.asarray(t_wc, dtype=np.float64)

    @classmethod
    def from_mount(cls, base_position: np.ndarray, yaw: float, forward_m: float,
                   height_m: float, pitch_deg: float, yaw_deg: float = 0.0) -> 'CameraPose':
        """Camera pose of a device at ``base_position``/``yaw`` with the given mount
        (``yaw_deg``: the camera's own turn about the body z axis, see ``mount_rotation``)."""
        r_wb = yaw_matrix(yaw)
        t = np.asarray(base_position, dtype=np.float64) + r_wb @ np.array([forward_m, 0.0,
                                                                             height_m])
        return cls(r_wb @ mount_rotation(pitch_deg, yaw_deg), t)

    @property
    def forward(self) -> np.ndarray:
        """Optical axis in the world frame."""
        return self.r_wc[:, 2]

    @property
    def up(self) -> np.ndarray:
        """Image-up direction (minus optical y) in the world frame."""
        return -self.r_wc[:, 1]

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) -> optical frame (..., 3)."""
        return (np.asarray(points, dtype=np.float64) - self.t_wc) @ self.r_wc


def project(k: np.ndarray, pose: CameraPose, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """
    Project world points (N, 3) with intrinsics ``k``.

    Returns ``(uv (N, 2), depth (N,))``; depth is the optical z (<= 0 means behind the camera,
    where uv is meaningless).
    """
    pc = pose.to_camera(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    z = pc[:, 2]
    zs = np.where(np.abs(z) < _EPS, _EPS, z)
    u = k[0, 0] * pc[:, 0] / zs + k[0, 2]
    v = k[1, 1] * pc[:, 1] / zs + k[1, 2]
    return np.stack([u, v], axis=1), z


def segments_hit_boxes(p0: np.ndarray, p1: np.ndarray, centers: np.ndarray, half: np.ndarray,
                       yaws: np.ndarray | None = None) -> np.ndarray:
    """
    Which segments cross which boxes: bool (S, B).

    ``p0``, ``p1``: segment end points (S, 3). Boxes are given by centres (B, 3), half extents
    (B, 3) and yaw about +z (B,) (None: axis-aligned). Slab test in each box's own frame. A
    segment that only touches a box at an end point within 1e-6 of the segment length does
    not count, so a point on a box surface is not occluded by that box.
    """
    p0 = np.asarray(p0, dtype=np.float64).reshape(-1, 3)
    p1 = np.asarray(p1, dtype=np.float64).reshape(-1, 3)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    half = np.asarray(half, dtype=np.float64).reshape(-1, 3)
    s_n, b_n = len(p0), len(centers)
    if s_n == 0 or b_n == 0:
        return np.zeros((s_n, b_n), dtype=bool)
    rel0 = p0[:, None, :] - centers[None, :, :]          # (S, B, 3)
    d = (p1 - p0)[:, None, :].repeat(b_n, axis=1)          # (S, B, 3)
    if yaws is not None:
        c = np.cos(np.asarray(yaws, dtype=np.float64))
        s = np.sin(np.asarray(yaws, dtype=np.float64))

        def to_box(v: np.ndarray) -> np.ndarray:
            # Rotate by -yaw: world offsets into each box's frame.
            return np.stack([c * v[..., 0] + s * v[..., 1], -s * v[..., 0] + c * v[..., 1],
                             v[..., 2]], axis=-1)

        rel0, d = to_box(rel0), to_box(d)
    with np.errstate(divide='ignore', invalid='ignore'):
        inv = 1.0 / d
        t_a = (-half[None] - rel0) * inv
        t_b = (half[None] - rel0) * inv
    t_lo = np.minimum(t_a, t_b)
    t_hi = np.maximum(t_a, t_b)
    # A segment parallel to a slab is inside it for all t, or never.
    parallel = np.abs(d) < _EPS
    inside = np.abs(rel0) <= half[None]
    t_lo = np.where(parallel, np.where(inside, -np.inf, np.inf), t_lo)
    t_hi = np.where(parallel, np.where(inside, np.inf, -np.inf), t_hi)
    enter = t_lo.max(axis=-1)
    leave = t_hi.min(axis=-1)
    tol = 1e-6
    return (enter <= leave) & (leave > tol) & (enter < 1.0 - tol)


def count_occluders(p0: np.ndarray, p1: np.ndarray, centers: np.ndarray, half: np.ndarray,
                    yaws: np.ndarray | None = None) -> np.ndarray:
    """Number of boxes each segment (S,) passes through: int (S,)."""
    return segments_hit_boxes(p0, p1, centers, half, yaws).sum(axis=1)


def box_corners_2d(center: Sequence[float], size: Sequence[float], yaw: float) -> np.ndarray:
    """The 4 ground-plane corners (4, 2) of a box footprint (for drawing and clutter)."""
    c, s = math.cos(yaw), math.sin(yaw)
    hx, hy = 0.5 * size[0], 0.5 * size[1]
    local = np.array([[hx, hy], [-hx, hy], [-hx, -hy], [hx, -hy]])
    rot = np.array([[c, -s], [s, c]])
    return local @ rot.T + np.asarray(center[:2], dtype=np.float64)


def to_frame_2d(xy: np.ndarray, x: float, y: float, yaw: float,
                translate: bool = True) -> np.ndarray:
    """World (..., 2) points (or vectors, ``translate=False``) into a 2-D frame at (x, y, yaw)."""
    c, s = np.cos(yaw), np.sin(yaw)
    d = np.asarray(xy) - (np.array([x, y]) if translate else 0.0)
    return np.stack((c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]), axis=-1)


def nms_keep(score: np.ndarray, position: np.ndarray, threshold: float,
             radius_m: float) -> np.ndarray:
    """
    Indices of detections kept: score >= threshold, then greedy non-maximum suppression by
    score over 2-D positions (class-agnostic: two reports of one object from different devices
    may disagree on the class). ``radius_m <= 0`` disables the suppression.
    """
    order = np.argsort(-score, kind='stable')
    order = order[score[order] >= threshold]
    if radius_m <= 0 or order.size <= 1:
        return order
    kept: list[int] = []
    pts = np.asarray(position, dtype=np.float64)[:, :2]
    for q in order:
        if kept and float(np.min(np.hypot(*(pts[kept] - pts[q]).T))) < radius_m:
            continue
        kept.append(int(q))
    return np.asarray(kept, dtype=np.int64)
