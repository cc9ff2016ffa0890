"""The simulated world: scenario -> per-step images, RF cubes and ground truth (ROS-free).

One ``World`` owns a Genesis scene (``render_genesis.py``), the deterministic traffic
(``motion.py``) and the RF synthesis per device (``rf.py``). Each :meth:`World.step` samples the
world at ``time_s`` and then advances it by ``dt``:

* every device's RGB image (uint8 ``(H, W, 3)``) from its camera;
* every device's FMCW radar cube (complex64 ``(num_rx, num_chirps, num_samples)``) synthesised
  from the objects' point scatterers (``rf.object_scatterers``) plus static clutter at building
  corners, each path attenuated by ``occlusion_loss_db`` per building it crosses (RF is
  attenuated, the camera is blinded);
* ground truth per object: class, box centre, velocity, yaw, size, and per device
  ``visible_camera`` (see below) and ``in_rf_range`` (``rf.in_rf_coverage``: range and azimuth
  field of view, regardless of occlusion).

``visible_camera`` for (object, device): the object's centre or its upper part (centre + 0.3 of
its height) is in front of the camera, projects inside the image, lies within
``camera.max_range_m``, appears at least ``camera.min_object_px`` tall, and the line of sight to
that point crosses no building and no other object's box.

Each device's camera and radar sit where ``Scenario.mount_of(device)`` says: the device's own
``mount`` when the scenario gives one, otherwise its kind's entry under ``mounts``.

Vehicle devices are cars too: they appear in the ground truth as class ``car`` (other devices
see them), drawn white; a device never labels its own body (both flags are False).

:meth:`World.reset` restarts the traffic and the RF noise with a new seed and keeps the Genesis
scene (the classes of the object slots do not depend on the seed), so one build serves many
seeds. The same scenario and seed give identical frames.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from disac_ros.core import rf
from disac_ros.core.geometry import CameraPose
from disac_ros.core.geometry import count_occluders
from disac_ros.core.geometry import intrinsics
from disac_ros.core.geometry import mount_rotation
from disac_ros.core.geometry import project
from disac_ros.core.geometry import rotation_to_quat_xyzw
from disac_ros.core.geometry import segments_hit_boxes
from disac_ros.core.geometry import yaw_matrix
from disac_ros.core.motion import TrafficModel
from disac_ros.core.rf_config import RadarConfig
from disac_ros.core.scenario import Scenario
from disac_ros.core.types import DeviceObservation
from disac_ros.core.types import ObjectTruth
from disac_ros.core.types import Pose
from disac_ros.core.types import WorldFrame

RENDERERS: tuple[str, ...] = ('genesis', 'none')
CLUTTER_RCS_M2 = 5.0          # building corner (a strong static reflector)
CLUTTER_HEIGHT_M = 1.0
_UPPER_SAMPLE = 0.3           # second visibility sample: centre + 0.3 * height
_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


@dataclasses.dataclass
class StepTiming:
    """Wall-clock cost of the last step, in seconds."""

    motion_gt: float = 0.0
    render: float = 0.0
    rf: float = 0.0


class World:
    """
    A scenario simulated with Genesis (cameras) and numpy (motion, ground truth, RF).

    ``renderer='none'`` skips Genesis and returns black images: for RF/ground-truth-only uses
    and fast tests; everything else is identical.
    """

    def __init__(self, scenario: Scenario, seed: int = 0, renderer: str = 'genesis'):
        if renderer not in RENDERERS:
            raise ValueError(f'renderer: unknown {renderer!r}; expected one of {RENDERERS}')
        self.scenario = scenario
        self.renderer_name = renderer
        self._k = intrinsics(scenario.camera.width, scenario.camera.height,
                             scenario.camera.fov_deg)
        bld = scenario.world.buildings
        self._bld_centers = np.array([[b.center[0], b.center[1], 0.5 * b.size[2]] for b in bld])
        self._bld_half = np.array([[0.5 * s for s in b.size] for b in bld])
        self._clutter = _corner_clutter(self._bld_centers, self._bld_half)
        self.last_timing = StepTiming()
        self.reset(seed)
        self._renderer = None
        if renderer == 'genesis':
            from disac_ros.core.render_genesis import GenesisRenderer
            self._renderer = GenesisRenderer(
                scenario, [m.class_name for m in self.traffic.objects],
                [m.size for m in self.traffic.objects],
                {d: m.slot for d, m in self.traffic.device_movers.items()})

    # -- public API ----------------------------------------------------------------------
    def reset(self, seed: int) -> None:
        """Restart at t = 0 with new traffic and RF noise drawn from ``seed``."""
        self.seed = int(seed)
        self.traffic = TrafficModel(self.scenario, self.seed)
        self._rf_rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5F0]))
        self._step = 0

    @property
    def dt(self) -> float:
        """Step length in seconds (1 / rate_hz)."""
        return self.scenario.dt

    @property
    def time_s(self) -> float:
        """Simulation time of the next frame ``step()`` returns."""
        return self._step * self.dt

    @property
    def device_ids(self) -> list[str]:
        """Device ids in scenario order."""
        return self.scenario.device_ids

    @property
    def image_size(self) -> tuple[int, int]:
        """Camera image (width, height) in pixels."""
        return self.scenario.camera.width, self.scenario.camera.height

    @property
    def num_object_slots(self) -> int:
        """Number of objects in every frame (scenario objects plus vehicle devices)."""
        return len(self.traffic.objects)

    def camera_intrinsics(self, device_id: str) -> np.ndarray:
        """Pinhole K (3, 3), OpenCV convention, matching the rendered image."""
        self._check_device(device_id)
        return self._k.copy()

    def sensor_extrinsics(self, device_id: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """
        Sensor poses relative to the device's base_link: ``{name: (xyz (3,), quat xyzw (4,))}``.

        ``camera_optical`` is the REP 103 optical frame (z forward, x right, y down); ``radar``
        has x along the boresight, y left, z up.
        """
        self._check_device(device_id)
        mount = self.scenario.mount_of(device_id)
        cam = mount.camera
        return {
            'camera_optical': (np.array([cam.forward_m, 0.0, cam.height_m]),
                               rotation_to_quat_xyzw(mount_rotation(cam.pitch_deg,
                                                                    cam.yaw_deg))),
            'radar': (np.array([mount.radar.forward_m, 0.0, mount.radar.height_m]),
                      np.array([0.0, 0.0, 0.0, 1.0])),
        }

    def radar_config(self, device_id: str) -> RadarConfig:
        """The radar parameters of a device (all devices share the scenario's radar)."""
        self._check_device(device_id)
        return self.scenario.radar

    def step(self) -> WorldFrame:
        """Sample the world at ``time_s`` (images, RF, ground truth), then advance by ``dt``."""
        t0 = time.perf_counter()
        t = self.time_s
        sc = self.scenario
        movers = self.traffic.objects
        states = self.traffic.object_states()
        pos = np.array([s.position for s in states]).reshape(-1, 3)
        vel = np.array([s.velocity for s in states]).reshape(-1, 3)
        yaw = np.array([s.yaw for s in states])
        size = np.array([m.size for m in movers]).reshape(-1, 3)
        own_slot = {d: m.slot for d, m in self.traffic.device_movers.items()}

        poses: dict[str, tuple[np.ndarray, float, np.ndarray]] = {}
        cam_poses: dict[str, CameraPose] = {}
        visible: dict[str, np.ndarray] = {}
        in_rf: dict[str, np.ndarray] = {}
        radar_pos: dict[str, np.ndarray] = {}
        for dev in sc.devices:
            base, dyaw, dvel = self.traffic.device_pose(dev.id)
            poses[dev.id] = (base, dyaw, dvel)
            mount = sc.mount_of(dev)
            cam_poses[dev.id] = CameraPose.from_mount(base, dyaw, mount.camera.forward_m,
                                                      mount.camera.height_m,
                                                      mount.camera.pitch_deg,
                                                      mount.camera.yaw_deg)
            rpos = base + yaw_matrix(dyaw) @ np.array([mount.radar.forward_m, 0.0,
                                                       mount.radar.height_m])
            radar_pos[dev.id] = rpos
            vis = self._camera_visibility(cam_poses[dev.id], pos, yaw, size)
            cov = np.array([rf.in_rf_coverage(sc.radar, rpos, dyaw, p) for p in pos], dtype=bool)
            if dev.id in own_slot:
                vis[own_slot[dev.id]] = False
                cov[own_slot[dev.id]] = False
            visible[dev.id], in_rf[dev.id] = vis, cov
        t1 = time.perf_counter()

        images = self._render(pos, yaw, cam_poses)
        t2 = time.perf_counter()

        cubes = self._synthesize_rf(t, pos, vel, yaw, size, poses, radar_pos, own_slot)
        t3 = time.perf_counter()

        objects = []
        for i, (m, st) in enumerate(zip(movers, states)):
            objects.append(ObjectTruth(
                object_id=m.object_id(st.lap), class_name=m.class_name,
                position=pos[i].copy(), velocity=vel[i].copy(), yaw=float(yaw[i]),
                size=m.size,
                visible_camera={d: bool(visible[d][i]) for d in self.device_ids},
                in_rf_range={d: bool(in_rf[d][i]) for d in self.device_ids}))
        devices = [DeviceObservation(
            device_id=dev.id, kind=dev.kind,
            pose=Pose((float(poses[dev.id][0][0]), float(poses[dev.id][0][1]),
                       float(poses[dev.id][0][2])), float(poses[dev.id][1])),
            image=images[dev.id], rf=cubes[dev.id]) for dev in sc.devices]
        frame = WorldFrame(step=self._step, time_s=t, devices=devices, objects=objects)
        self.skip(1)
        self.last_timing = StepTiming(motion_gt=t1 - t0, render=t2 - t1, rf=t3 - t2)
        return frame

    def skip(self, steps: int) -> None:
        """Advance the traffic ``steps`` steps without sensing (no images, RF or ground truth);
        the next :meth:`step` samples the world that much later. RF noise draws only happen in
        :meth:`step`, so skipping is cheap and the result is still a function of the seed."""
        if steps < 0:
            raise ValueError(f'skip: steps must be >= 0, got {steps}')
        for _ in range(int(steps)):
            self.traffic.advance(self.dt)
            self._step += 1

    def close(self) -> None:
        """Release the Genesis scene."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # -- internals -------------------------------------------------------------------------
    def _check_device(self, device_id: str) -> str:
        for d in self.scenario.devices:
            if d.id == device_id:
                return d.kind
        raise KeyError(f'unknown device {device_id!r}; known: {self.device_ids}')

    def _camera_visibility(self, cam: CameraPose, pos: np.ndarray, yaw: np.ndarray,
                           size: np.ndarray) -> np.ndarray:
        """Bool (M,) visible_camera for one camera (see the module docstring)."""
        cs = self.scenario.camera
        m = len(pos)
        if m == 0:
            return np.zeros(0, dtype=bool)
        upper = pos + np.stack([np.zeros(m), np.zeros(m), _UPPER_SAMPLE * size[:, 2]], axis=1)
        samples = np.concatenate([pos, upper])                     # (2M, 3)
        uv, depth = project(self._k, cam, samples)
        dist = np.linalg.norm(samples - cam.t_wc, axis=1)
        h_px = self._k[1, 1] * np.tile(size[:, 2], 2) / np.maximum(depth, 1e-6)
        ok = ((depth > cs.near_m) & (dist <= cs.max_range_m) & (h_px >= cs.min_object_px)
              & (uv[:, 0] >= -0.5) & (uv[:, 0] <= cs.width - 0.5)
              & (uv[:, 1] >= -0.5) & (uv[:, 1] <= cs.height - 0.5))
        if np.any(ok):
            starts = np.repeat(cam.t_wc[None], len(samples), axis=0)
            blocked = count_occluders(starts, samples, self._bld_centers, self._bld_half) > 0
            hits = segments_hit_boxes(starts, samples, pos, 0.5 * size, yaw)   # (2M, M)
            own = np.concatenate([np.arange(m), np.arange(m)])
            hits[np.arange(2 * m), own] = False                 # an object does not hide itself
            blocked |= hits.any(axis=1)
            ok &= ~blocked
        return ok[:m] | ok[m:]

    def _render(self, pos: np.ndarray, yaw: np.ndarray,
                cam_poses: dict[str, CameraPose]) -> dict[str, np.ndarray]:
        if self._renderer is None:
            w, h = self.image_size
            return {d: np.zeros((h, w, 3), dtype=np.uint8) for d in self.device_ids}
        self._renderer.set_object_poses(pos, yaw)
        return self._renderer.render(cam_poses)

    def _synthesize_rf(self, t: float, pos: np.ndarray, vel: np.ndarray, yaw: np.ndarray,
                       size: np.ndarray, poses: dict[str, tuple[np.ndarray, float, np.ndarray]],
                       radar_pos: dict[str, np.ndarray],
                       own_slot: dict[str, int]) -> dict[str, np.ndarray]:
        cfg = self.scenario.radar
        per_object: list[list[rf.Scatterer]] = []
        for i, m in enumerate(self.traffic.objects):
            per_object.append(rf.object_scatterers(
                m.class_name, pos[i], vel[i], float(yaw[i]), tuple(size[i]), t,
                gait_phase=(m.slot * _GOLDEN_ANGLE) % (2.0 * math.pi)))
        cubes = {}
        for dev in self.scenario.devices:
            skip = own_slot.get(dev.id, -1)
            scat: list[rf.Scatterer] = [s for i, group in enumerate(per_object) if i != skip
                                        for s in group]
            scat.extend(self._clutter)
            rpos = radar_pos[dev.id]
            if scat and len(self._bld_centers):
                pts = np.array([s.position for s in scat])
                n_occ = count_occluders(np.repeat(rpos[None], len(pts), axis=0), pts,
                                        self._bld_centers, self._bld_half)
                scat = [dataclasses.replace(s, extra_loss_db=s.extra_loss_db
                                            + float(n) * cfg.occlusion_loss_db)
                        if n else s for s, n in zip(scat, n_occ)]
            cubes[dev.id] = rf.synthesize_cube(cfg, rpos, poses[dev.id][1], scat, self._rf_rng,
                                               radar_velocity=poses[dev.id][2])
        return cubes


def _corner_clutter(centers: np.ndarray, half: np.ndarray) -> list[rf.Scatterer]:
    """Static scatterers at the vertical edges of each building, just outside its walls."""
    out: list[rf.Scatterer] = []
    for c, h in zip(centers, half):
        for sx, sy in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
            # 0.1 m outside the corner so the building does not occlude its own edge.
            p = np.array([c[0] + sx * (h[0] + 0.1), c[1] + sy * (h[1] + 0.1), CLUTTER_HEIGHT_M])
            out.append(rf.Scatterer(p, np.zeros(3), CLUTTER_RCS_M2))
    return out

