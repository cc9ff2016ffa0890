"""Camera projection, frames and segment-versus-box occlusion tests."""
from __future__ import annotations

import math

import numpy as np
import pytest

from disac_ros.core.geometry import CameraPose
from disac_ros.core.geometry import count_occluders
from disac_ros.core.geometry import intrinsics
from disac_ros.core.geometry import optical_rotation
from disac_ros.core.geometry import project
from disac_ros.core.geometry import rotation_to_quat_xyzw
from disac_ros.core.geometry import segments_hit_boxes
from disac_ros.core.geometry import yaw_matrix


def test_intrinsics_use_the_vertical_fov_and_opencv_centre() -> None:
    k = intrinsics(160, 120, 60.0)
    f = 60.0 / math.tan(math.radians(30.0))
    np.testing.assert_allclose(k, [[f, 0, 79.5], [0, f, 59.5], [0, 0, 1]])


def test_projection_axes_match_rep103_optical_frame() -> None:
    k = intrinsics(128, 128, 60.0)
    cam = CameraPose.from_mount(np.zeros(3), yaw=0.0, forward_m=0.0, height_m=2.0, pitch_deg=0.0)
    pts = np.array([[10.0, 0.0, 2.0],     # straight ahead
                    [10.0, 1.0, 2.0],     # to the left (body +y) -> smaller u
                    [10.0, 0.0, 3.0],     # above -> smaller v
                    [-10.0, 0.0, 2.0]])   # behind
    uv, depth = project(k, cam, pts)
    np.testing.assert_allclose(uv[0], [k[0, 2], k[1, 2]])
    assert uv[1, 0] < k[0, 2] and uv[1, 1] == pytest.approx(k[1, 2])
    assert uv[2, 1] < k[1, 2]
    assert uv[1, 0] == pytest.approx(k[0, 2] - k[0, 0] * 0.1)
    np.testing.assert_allclose(depth[:3], 10.0)
    assert depth[3] < 0


def test_pitch_and_yaw_turn_the_optical_axis() -> None:
    cam = CameraPose.from_mount(np.array([1.0, 2.0, 0.0]), yaw=math.pi / 2, forward_m=0.5,
                                height_m=6.0, pitch_deg=30.0)
    np.testing.assert_allclose(cam.t_wc, [1.0, 2.5, 6.0], atol=1e-12)
    np.testing.assert_allclose(cam.forward, [0.0, math.cos(math.radians(30)),
                                             -math.sin(math.radians(30))], atol=1e-12)
    # Image up is perpendicular to the axis and leans toward world up.
    assert cam.up @ cam.forward == pytest.approx(0.0, abs=1e-12)
    assert cam.up[2] > 0.8


def test_quaternion_of_rotations() -> None:
    np.testing.assert_allclose(rotation_to_quat_xyzw(np.eye(3)), [0, 0, 0, 1])
    q = rotation_to_quat_xyzw(yaw_matrix(math.pi / 2))
    np.testing.assert_allclose(q, [0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    # No pitch: the standard base_link -> optical rotation, all components +-0.5.
    q = rotation_to_quat_xyzw(optical_rotation(0.0))
    np.testing.assert_allclose(np.abs(q), [0.5, 0.5, 0.5, 0.5], atol=1e-12)
    for r in (optical_rotation(0.3), yaw_matrix(2.5) @ optical_rotation(-0.2)):
        x, y, z, w = rotation_to_quat_xyzw(r)
        rq = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                       [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                       [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        np.testing.assert_allclose(rq, r, atol=1e-12)


BOX_C = np.array([[5.0, 0.0, 1.0]])
BOX_H = np.array([[1.0, 1.0, 1.0]])


@pytest.mark.parametrize('p0,p1,hit', [
    ([0, 0, 1], [10, 0, 1], True),        # straight through
    ([0, 3, 1], [10, 3, 1], False),       # beside
    ([0, 0, 3], [10, 0, 3], False),       # above
    ([0, 0, 1], [3, 0, 1], False),        # stops short
    ([0, 0, 1], [4, 0, 1], False),        # ends exactly on the surface
    ([5, 0, 1], [5.5, 0, 1], True),       # inside
    ([0, 0.5, 1], [10, 0.5, 1], True),    # parallel to a slab, inside it
    ([0, 1.5, 1], [10, 1.5, 1], False),   # parallel to a slab, outside it
    ([0, -2, 1], [10, 2, 1], True),       # diagonal through
])
def test_segment_versus_axis_aligned_box(p0: list[float], p1: list[float], hit: bool) -> None:
    got = segments_hit_boxes(np.array([p0], float), np.array([p1], float), BOX_C, BOX_H)
    assert got.shape == (1, 1)
    assert bool(got[0, 0]) is hit


def test_oriented_box_uses_its_yaw() -> None:
    # A thin wall, 4 m long along its local y, centred at the origin. Rotated by +45 degrees it
    # runs from (1.41, -1.41) to (-1.41, 1.41), crossing (-1, 1); by -45 degrees it runs from
    # (-1.41, -1.41) to (1.41, 1.41), crossing (1, 1) instead.
    c = np.array([[0.0, 0.0, 1.0]])
    h = np.array([[0.1, 2.0, 1.0]])
    p0, p1 = np.array([[-3.0, 1.0, 1.0]]), np.array([[-0.5, 1.0, 1.0]])
    assert segments_hit_boxes(p0, p1, c, h, np.array([math.pi / 4]))[0, 0]
    assert not segments_hit_boxes(p0, p1, c, h, np.array([-math.pi / 4]))[0, 0]
    # Axis-aligned, the wall spans x in [-0.1, 0.1]: this segment stops before it.
    assert not segments_hit_boxes(p0, p1, c, h)[0, 0]


def test_count_occluders_counts_every_box_crossed() -> None:
    centres = np.array([[5.0, 0.0, 1.0], [10.0, 0.0, 1.0], [10.0, 5.0, 1.0]])
    half = np.ones((3, 3))
    p0 = np.zeros((3, 3)) + [0.0, 0.0, 1.0]
    p1 = np.array([[20.0, 0.0, 1.0], [7.0, 0.0, 1.0], [0.0, 5.0, 1.0]])
    np.testing.assert_array_equal(count_occluders(p0, p1, centres, half), [2, 1, 0])
    assert count_occluders(p0, p1, np.zeros((0, 3)), np.zeros((0, 3))).tolist() == [0, 0, 0]
