"""Genesis scene for the simulated world: static map, objects built from primitives, cameras.

Genesis ships no vehicle or person meshes, so every class is a few coloured primitives (below)
with a distinct shape and colour. Everything uses the visual-only ``Kinematic`` material:
objects are posed kinematically each step (``set_pos``/``set_quat``), there is no physics to
fight, and the build compiles far fewer kernels than a rigid-body scene.

Genesis is imported lazily, and ``gs.init`` runs at most once per process (CPU backend,
headless rasteriser through EGL). The first ``scene.build()`` on a machine compiles kernels
(about a minute); later builds reuse the on-disk cache (a few seconds).
"""
from __future__ import annotations

from dataclasses import dataclass
import math
import os
from typing import Any
from typing import Sequence

import numpy as np

from disac_ros.core.geometry import CameraPose
from disac_ros.core.scenario import Scenario

# One primitive of a class body: kind, size parameters, offset (fractions of the object's
# length/width/height from the box centre), colour, and whether it is rotated with the yaw.
#   box: dims = (fl, fw, fh) fractions of (L, W, H)
#   cylinder: dims = (radius_m, fh) -- vertical axis; sphere: dims = (radius_fraction_of_H,)


@dataclass(frozen=True)
class Part:
    """One primitive of a composed object body."""

    kind: str                          # 'box' | 'cylinder' | 'sphere'
    dims: tuple[float, ...]
    offset: tuple[float, float, float]  # fractions of (L, W, H) from the box centre
    color: tuple[float, float, float]


# Distinct colour per class (the body part holding the box centre carries it, so the pixel at a
# projected object centre shows the class colour).
CLASS_COLORS: dict[str, tuple[float, float, float]] = {
    'car': (0.80, 0.12, 0.10),
    'truck': (0.92, 0.78, 0.12),
    'pedestrian': (0.12, 0.62, 0.20),
    'cyclist': (0.55, 0.22, 0.80),
}
DEVICE_CAR_COLOR = (0.93, 0.93, 0.95)

CLASS_PARTS: dict[str, tuple[Part, ...]] = {
    'car': (Part('box', (1.0, 1.0, 0.55), (0.0, 0.0, -0.075), CLASS_COLORS['car']),
            Part('box', (0.55, 0.92, 0.35), (-0.05, 0.0, 0.325), (0.15, 0.18, 0.24))),
    'truck': (Part('box', (0.72, 1.0, 0.85), (-0.14, 0.0, 0.075), CLASS_COLORS['truck']),
              Part('box', (0.25, 0.96, 0.7), (0.37, 0.0, -0.15), (0.85, 0.35, 0.08))),
    'pedestrian': (Part('cylinder', (0.2, 0.78), (0.0, 0.0, -0.11), CLASS_COLORS['pedestrian']),
                   Part('sphere', (0.11,), (0.0, 0.0, 0.39), (0.85, 0.65, 0.5))),
    'cyclist': (Part('box', (1.0, 0.2, 0.42), (0.0, 0.0, -0.29), (0.12, 0.12, 0.12)),
                Part('cylinder', (0.2, 0.55), (0.0, 0.0, 0.1), CLASS_COLORS['cyclist']),
                Part('sphere', (0.0625,), (0.0, 0.0, 0.4375), (0.85, 0.65, 0.5))),
}

_SURFACE_TOP = {'road': 0.010, 'sidewalk': 0.030, 'crossing': 0.035, 'marking': 0.040}
_SURFACE_THICKNESS = 0.01
_initialised = False


def init_genesis() -> Any:
    """Import Genesis and run ``gs.init`` once per process (CPU backend, warnings only)."""
    global _initialised
    # Headless rendering: EGL software GL; never try to open a window.
    os.environ.setdefault('PYOPENGL_PLATFORM', 'egl')
    import genesis as gs
    if not _initialised and not getattr(gs, '_initialized', False):
        gs.init(backend=gs.cpu, logging_level='warning')
    _initialised = True
    return gs


def _wxyz(yaw: float) -> np.ndarray:
    return np.array([math.cos(0.5 * yaw), 0.0, 0.0, math.sin(0.5 * yaw)])


class GenesisRenderer:
    """
    The Genesis scene of one scenario: builds once, then poses objects and renders cameras.

    ``object_classes`` gives the class of each object slot (``TrafficModel.objects`` order);
    ``device_slots`` maps a vehicle device id to its slot (drawn in the device-car colour).
    """

    def __init__(self, scenario: Scenario, object_classes: Sequence[str],
                 object_sizes: Sequence[Sequence[float]], device_slots: dict[str, int]):
        gs = init_genesis()
        self.scenario = scenario
        lit = scenario.lighting
        cam = scenario.camera
        self.scene = gs.Scene(
            show_viewer=False,
            renderer=gs.renderers.Rasterizer(),
            vis_options=gs.options.VisOptions(
                show_world_frame=False, ambient_light=lit.ambient,
                background_color=lit.background, shadow=lit.shadows,
                lights=[{'type': 'directional', 'dir': lit.sun_dir, 'color': (1.0, 1.0, 1.0),
                         'intensity': lit.sun_intensity}]),
        )
        self._mat = gs.materials.Kinematic()
        self._gs = gs
        self._add_static()
        slot_device = {s: d for d, s in device_slots.items()}
        # parts[slot] = list of (entity, Part, size)
        self._parts: list[list[tuple[Any, Part, tuple[float, float, float]]]] = []
        for slot, (cls, size) in enumerate(zip(object_classes, object_sizes)):
            size3 = (float(size[0]), float(size[1]), float(size[2]))
            entries = []
            for i, part in enumerate(CLASS_PARTS[cls]):
                color = part.color
                if slot in slot_device and i == 0:
                    color = DEVICE_CAR_COLOR
                entries.append((self._add_part(part, size3, color), part, size3))
            self._parts.append(entries)
        for dev in scenario.devices:
            if dev.kind == 'rsu' and dev.position is not None:
                cam_mount = scenario.mount_of(dev).camera
                self._add_rsu(dev.position, math.radians(dev.yaw_deg + cam_mount.yaw_deg),
                              cam_mount.height_m)
        self.cameras = {
            dev.id: self.scene.add_camera(res=(cam.width, cam.height), pos=(0.0, 0.0, 10.0),
                                          lookat=(1.0, 0.0, 10.0), fov=cam.fov_deg,
                                          near=cam.near_m, far=cam.far_m, GUI=False)
            for dev in scenario.devices}
        self.scene.build()
        self._links_idx = np.array([ent.base_link_idx for entries in self._parts
                                    for ent, _, _ in entries], dtype=np.int64)

    # -- scene construction ----------------------------------------------------------------
    def _box(self, pos: Sequence[float], size: Sequence[float],
             color: Sequence[float], yaw: float = 0.0) -> Any:
        gs = self._gs
        return self.scene.add_entity(
            gs.morphs.Box(pos=tuple(float(p) for p in pos), size=tuple(float(s) for s in size),
                          euler=(0.0, 0.0, math.degrees(yaw)), fixed=True),
            material=self._mat, surface=gs.surfaces.Default(color=tuple(color)))

    def _add_static(self) -> None:
        w = self.scenario.world
        gx, gy = w.ground_size
        self._box((0.0, 0.0, -0.05), (gx, gy, 0.1), w.ground_color)
        for surf in w.surfaces:
            top = _SURFACE_TOP[surf.kind]
            for a, b in zip(surf.points[:-1], surf.points[1:]):
                ax, ay = a
                bx, by = b
                length = math.hypot(bx - ax, by - ay)
                yaw = math.atan2(by - ay, bx - ax)
                # Extend each segment by half a width so consecutive segments join without gaps.
                self._box((0.5 * (ax + bx), 0.5 * (ay + by), top - 0.5 * _SURFACE_THICKNESS),
                          (length + surf.width, surf.width, _SURFACE_THICKNESS), surf.color, yaw)
        for bld in w.buildings:
            self._box((bld.center[0], bld.center[1], 0.5 * bld.size[2]), bld.size, bld.color)

    def _add_rsu(self, position: Sequence[float], yaw: float, height: float) -> None:
        gs = self._gs
        self.scene.add_entity(
            gs.morphs.Cylinder(pos=(position[0], position[1], 0.5 * height), radius=0.12,
                               height=height, fixed=True),
            material=self._mat, surface=gs.surfaces.Default(color=(0.45, 0.45, 0.48)))
        # Sensor head slightly behind the camera so the camera does not see it.
        c, s = math.cos(yaw), math.sin(yaw)
        self._box((position[0] - 0.25 * c, position[1] - 0.25 * s, height + 0.1),
                  (0.3, 0.3, 0.3), (0.25, 0.25, 0.3), yaw)

    def _add_part(self, part: Part, size: tuple[float, float, float],
                  color: Sequence[float]) -> Any:
        gs = self._gs
        length, width, height = size
        surf = gs.surfaces.Default(color=tuple(color))
        far = (0.0, 0.0, -100.0)   # parked below the ground until the first pose update
        if part.kind == 'box':
            morph = gs.morphs.Box(pos=far, size=(part.dims[0] * length, part.dims[1] * width,
                                                 part.dims[2] * height))
        elif part.kind == 'cylinder':
            morph = gs.morphs.Cylinder(pos=far, radius=part.dims[0],
                                       height=part.dims[1] * height)
        else:
            morph = gs.morphs.Sphere(pos=far, radius=part.dims[0] * height)
        return self.scene.add_entity(morph, material=self._mat, surface=surf)

    # -- per step -------------------------------------------------------------------------
    def set_object_poses(self, positions: np.ndarray, yaws: np.ndarray) -> None:
        """Pose every object slot: box centres (M, 3) and yaws (M,); one batched solver call."""
        import torch
        gs = self._gs
        pos_out = np.empty((len(self._links_idx), 3))
        quat_out = np.empty((len(self._links_idx), 4))
        k = 0
        for entries, pos, yaw in zip(self._parts, positions, yaws):
            c, s = math.cos(float(yaw)), math.sin(float(yaw))
            quat = _wxyz(float(yaw))
            for _ent, part, (length, width, height) in entries:
                ox, oy, oz = part.offset
                dx, dy = ox * length, oy * width
                pos_out[k] = (pos[0] + c * dx - s * dy, pos[1] + s * dx + c * dy,
                              pos[2] + oz * height)
                quat_out[k] = quat
                k += 1
        # Per-entity set_pos/set_quat cost ~0.2 ms each; the batched solver call ~0.5 ms total.
        solver = self.scene.sim.kinematic_solver
        links = torch.as_tensor(self._links_idx, device=gs.device)
        solver.set_base_links_pos(torch.as_tensor(pos_out, dtype=gs.tc_float, device=gs.device),
                                  links_idx=links, relative=False, skip_forward=True)
        solver.set_base_links_quat(torch.as_tensor(quat_out, dtype=gs.tc_float,
                                                   device=gs.device),
                                   links_idx=links, relative=False)

    def render(self, camera_poses: dict[str, CameraPose]) -> dict[str, np.ndarray]:
        """Render each device camera at its pose: uint8 (H, W, 3) RGB per device id."""
        for dev_id, cam in self.cameras.items():
            pose = camera_poses[dev_id]
            cam.set_pose(pos=pose.t_wc, lookat=pose.t_wc + pose.forward, up=pose.up)
        images = {}
        first = True
        for dev_id, cam in self.cameras.items():
            # Kinematic pose changes do not advance the simulation clock, so force one scene
            # sync per frame (the first camera); the other cameras reuse it.
            rgb = cam.render(rgb=True, force_render=first)[0]
            first = False
            images[dev_id] = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
        return images

    def close(self) -> None:
        """Release the scene's GL resources (Genesis stays initialised for later scenes)."""
        try:
            self.scene.destroy()
        except Exception:  # noqa: BLE001 - best-effort cleanup at shutdown must not raise
            pass
