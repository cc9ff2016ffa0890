"""torch Datasets over a DisacDataset for the two training stages.

* :class:`DeviceFrames` (stage 1, on a device): reads ONE device's view (``DisacDataset.
  device_view``), so only that device's ``image.<dev>`` / ``rf.<dev>`` members are ever opened.
  Items are the image as float (3, H, W) in [0, 1], ``radar_features`` (2, chirps, samples) and
  the objects this device senses, in the device frame (x forward, y left).
* :class:`AggregatorLabels` (stage 2 / evaluation, at the aggregator): world-frame labels and
  per-device visibility flags only. It never opens an image or RF member.
* Device exports (:func:`save_export` / :func:`load_export`): what a device transmits for
  training the aggregator: its encoder symbols per frame, the fused-feature targets, the frame
  index, stamp and device pose. These files are the only stage-1 output that leaves a device.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from disac_ros.core import rf
from disac_ros.core.dataset import DeviceView, DisacDataset
from disac_ros.core.errors import DatasetError
from disac_ros.core.geometry import to_frame_2d
from disac_ros.core.models.losses import SetTargets
from disac_ros.core.rf_config import RadarConfig
from disac_ros.core.sensor_adapt import (resample_image, resampled_radar_features,
                                         sensors_of_manifest, SensorSpec)

# Which objects a model is asked to find: those its sensors can perceive.
SENSED_BY = {'both': ('visible_camera', 'in_rf_range'), 'rf': ('in_rf_range',),
             'camera': ('visible_camera',)}
_LABEL_KEYS = ('class_id', 'position', 'velocity', 'valid', 'visible_camera', 'in_rf_range')


def radar_config(ds: DisacDataset) -> RadarConfig:
    """The dataset's radar configuration (from its manifest)."""
    return RadarConfig.from_dict(ds.manifest['radar'])


def rotate_to_frame(xy: np.ndarray, pose: np.ndarray, translate: bool = True) -> np.ndarray:
    """World (..., 2) points (or vectors, translate=False) into a frame with pose (x, y, _, yaw)."""
    return to_frame_2d(xy, pose[0], pose[1], pose[3], translate)


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
            / 255.0).contiguous()


def cube_from_iq(iq: np.ndarray) -> np.ndarray:
    """Dataset RF member (R, C, S, 2) float16 -> complex64 cube (R, C, S)."""
    iq = np.asarray(iq, dtype=np.float32)
    return (iq[..., 0] + 1j * iq[..., 1]).astype(np.complex64)


@dataclass
class ObjectSet:
    """Objects of one frame as arrays (world or device frame)."""

    classes: np.ndarray     # (N,) int64, 1..4
    position: np.ndarray    # (N, 2) float32
    velocity: np.ndarray    # (N, 2) float32
    # (N,) bool: the device's own camera sees the object (stage 1's camera auxiliary loss);
    # None where unknown (aggregator labels)
    camera: np.ndarray | None = None


def collate_targets(sets: Sequence[ObjectSet]) -> SetTargets:
    """Pad a list of ObjectSets into SetTargets (with ``camera`` flags when every set has them)."""
    out = SetTargets.from_lists([s.classes.tolist() for s in sets],
                                [s.position.tolist() for s in sets],
                                [s.velocity.tolist() for s in sets])
    if sets and all(s.camera is not None for s in sets):
        cam = torch.zeros(out.classes.shape, dtype=torch.bool)
        for i, s in enumerate(sets):
            cam[i, :len(s.camera)] = torch.as_tensor(np.asarray(s.camera, dtype=bool))
        out.camera = cam
    return out


def sensed_mask(labels: dict[str, np.ndarray], modalities: str,
                devices: Sequence[int] | None = None) -> np.ndarray:
    """(M,) bool: valid objects sensed (per ``modalities``) by any of ``devices`` (flags (M, K))."""
    mask = np.zeros(labels['valid'].shape, dtype=bool)
    for key in SENSED_BY[modalities]:
        flags = labels[key]
        if flags.ndim == 2:
            flags = flags[:, list(devices)] if devices is not None else flags
            flags = flags.any(axis=1)
        mask |= flags
    return mask & labels['valid'].astype(bool)


class DeviceFrames(Dataset):
    """Stage-1 samples of one device, features precomputed once (see module doc)."""

    def __init__(self, view: DeviceView, modalities: str = 'both',
                 indices: Sequence[int] | None = None, sensors: SensorSpec | None = None) -> None:
        """``sensors``: resample every image and radar cube to these (a model's sensors,
        :mod:`disac_ros.core.sensor_adapt`) from the dataset's own; None keeps the dataset's."""
        if modalities not in SENSED_BY:
            raise DatasetError(f"modalities: must be 'both', 'rf' or 'camera', got {modalities!r}")
        self.device_id = view.device_id
        self.modalities = modalities
        cfg = radar_config(view.dataset)
        own = sensors_of_manifest(view.dataset.manifest) if sensors is not None else None
        target_radar = sensors.radar if sensors is not None else cfg

        def image_of(a: np.ndarray) -> np.ndarray:
            return a if own is None else resample_image(a, own.camera, sensors.camera)

        def rf_of(iq: np.ndarray) -> np.ndarray:
            return resampled_radar_features(cube_from_iq(iq), cfg, target_radar)
        idx = list(range(len(view))) if indices is None else [int(i) for i in indices]
        if not idx:
            raise DatasetError(f'{view.dataset.root}: no frames for device {self.device_id}')
        images, feats, poses, times, objs = [], [], [], [], []
        for i in idx:
            fr = view.frame(i)
            images.append(image_of(np.asarray(fr['image'], dtype=np.uint8)))
            # The camera-only baseline never looks at RF: skip the FFTs, feed zeros.
            feats.append(np.zeros(rf.feature_shape(target_radar), np.float32)
                         if modalities == 'camera' else rf_of(fr['rf']))
            pose = np.asarray(fr['pose'], dtype=np.float64)
            poses.append(pose)
            times.append(float(fr['time_s']))
            labels = {k: np.asarray(fr[k]) for k in _LABEL_KEYS}
            keep = sensed_mask(labels, modalities)
            objs.append(ObjectSet(
                classes=labels['class_id'][keep].astype(np.int64),
                position=rotate_to_frame(labels['position'][keep, :2], pose).astype(np.float32),
                velocity=rotate_to_frame(labels['velocity'][keep, :2], pose,
                                         translate=False).astype(np.float32),
                camera=labels['visible_camera'][keep].astype(bool)))
        self.frame_index = np.asarray(idx, dtype=np.int64)
        self.images = torch.from_numpy(np.stack(images))            # (N, H, W, 3) uint8
        self.rf = torch.from_numpy(np.stack(feats))                  # (N, 2, C, S) float32
        self.pose = np.stack(poses)                                  # (N, 4)
        self.time_s = np.asarray(times)
        self.objects = objs

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {'image': (self.images[i].permute(2, 0, 1).float() / 255.0).contiguous(),
                'rf': self.rf[i],
                'objects': self.objects[i], 'pose': self.pose[i], 'frame': int(self.frame_index[i])}

    def batch(self, idx: Sequence[int], mirror: Sequence[bool] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, SetTargets]:
        """
        (images (B, 3, H, W), rf (B, 2, C, S), device-frame SetTargets) for indices.

        ``mirror[b]`` reflects sample b about the device's x axis (y -> -y), consistently in
        every input: the image is flipped left-right (camera on the x axis), the range-angle
        map's angle bins k -> -k (row i -> row (Q - i) mod Q of the fft-shifted axis), the
        range-Doppler map is unchanged (radial speeds are), and targets get y, v_y negated.
        """
        ii = torch.as_tensor(list(idx), dtype=torch.long)
        # contiguous(): a channels-last image makes torch 2.13's CPU conv+GroupNorm backward
        # corrupt the heap (double free); NCHW-contiguous input is safe.
        img = (self.images[ii].permute(0, 3, 1, 2).float() / 255.0).contiguous()
        rfx = self.rf[ii].clone()
        objs = [self.objects[int(i)] for i in idx]
        if mirror is not None and any(mirror):
            m = torch.as_tensor(list(mirror), dtype=torch.bool)
            img[m] = img[m].flip(-1)
            rfx[m, 1] = torch.roll(rfx[m, 1].flip(-2), 1, dims=-2)
            sign = np.array([1.0, -1.0], dtype=np.float32)
            objs = [ObjectSet(o.classes, o.position * sign, o.velocity * sign, o.camera) if flip else o
                    for o, flip in zip(objs, mirror)]
        return img, rfx, collate_targets(objs)


class AggregatorLabels:
    """World-frame labels of a dataset's frames, read without touching raw sensor members."""

    def __init__(self, ds: DisacDataset) -> None:
        self.dataset = ds
        self.device_ids = list(ds.device_ids)
        n = len(ds)
        per = {k: [] for k in _LABEL_KEYS}
        for i in range(n):
            s, j = ds._locate(i)   # label members only: the shard cache is per member
            for k in _LABEL_KEYS:
                per[k].append(np.asarray(ds._member(s, k)[j]))
        self.labels = {k: np.stack(v) for k, v in per.items()}     # (N, M, ...) arrays

    def __len__(self) -> int:
        return int(self.labels['valid'].shape[0])

    def frame_labels(self, i: int) -> dict[str, np.ndarray]:
        """Label arrays of frame i (M, ...), flags (M, K)."""
        return {k: v[i] for k, v in self.labels.items()}

    def objects(self, i: int, devices: Sequence[int], modalities: str = 'both') -> ObjectSet:
        """World-frame objects of frame i sensed by any of ``devices``."""
        lab = self.frame_labels(i)
        keep = sensed_mask(lab, modalities, devices)
        return ObjectSet(classes=lab['class_id'][keep].astype(np.int64),
                         position=lab['position'][keep, :2].astype(np.float32),
                         velocity=lab['velocity'][keep, :2].astype(np.float32))

    def sensed_by(self, i: int, devices: Sequence[int], columns: Sequence[int],
                  modalities: str = 'both') -> np.ndarray:
        """(N, len(columns)) bool: which of the devices ``columns`` (dataset device indices)
        sense each object of :meth:`objects` ``(i, devices)``, in the same order."""
        lab = self.frame_labels(i)
        keep = sensed_mask(lab, modalities, devices)
        flags = np.zeros((int(keep.sum()), len(columns)), dtype=bool)
        for key in SENSED_BY[modalities]:
            flags |= lab[key][keep][:, list(columns)]
        return flags


# ------------------------------------------------------------------ device exports

EXPORT_KEYS = ('symbols', 'feature', 'frame', 'time_s', 'pose')


def save_export(path: str | Path, device_id: str, symbols: np.ndarray, feature: np.ndarray,
                frame: np.ndarray, time_s: np.ndarray, pose: np.ndarray) -> Path:
    """Write a device's transmitted-data export (npz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp.npz')
    np.savez(tmp, device_id=np.array(device_id), symbols=symbols.astype(np.float32),
             feature=feature.astype(np.float32), frame=frame.astype(np.int64),
             time_s=time_s.astype(np.float64), pose=pose.astype(np.float64))
    tmp.replace(path)
    return path


def load_export(path: str | Path) -> dict[str, Any]:
    """Read an export; DatasetError names the file when it is missing or incomplete."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f'{path}: device export missing (run stage1 for this device first)')
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in EXPORT_KEYS}
            out['device_id'] = str(z['device_id'])
    except (OSError, KeyError, ValueError) as err:
        raise DatasetError(f'{path}: unreadable device export: {err}') from None
    return out
