"""Set-matching (DETR-style) loss for the multi-object heads.

For each frame, predictions (Q queries) are matched one-to-one to the ground-truth objects by the
Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the cost::

    C[q, j] = cost_class * (-p_q(class_j)) + cost_position * |pos_q - pos_j|_1 / position_scale

Then::

    loss = class_weight    * CE(all queries; unmatched -> class 0 "no object",
                                class 0 weighted by no_object_weight)
         + position_weight * sum_matched |pos_q - pos_j|_1 / position_scale / N_obj
         + velocity_weight * sum_matched |vel_q - vel_j|_1 / velocity_scale / N_obj

If a frame has more objects than queries, only Q of them can be matched (set ``num_queries``
above the largest object count). Targets are padded tensors: class 0 marks padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
import torch
from torch import nn
import torch.nn.functional as F  # noqa: N812

from disac_ros.core.geometry import to_frame_2d
from disac_ros.core.models.config import HeadConfig, LossConfig
from disac_ros.core.models.heads import SetPrediction
from disac_ros.core.models.polar_grid import PolarGrid
from disac_ros.core.types import NUM_OBJECT_CLASSES


@dataclass
class SetTargets:
    """Padded ground truth of a batch; ``classes == 0`` marks padding slots."""

    classes: torch.Tensor    # (B, N) long, 1..C-1 for objects, 0 for padding
    position: torch.Tensor   # (B, N, 2) metres
    velocity: torch.Tensor   # (B, N, 2) m/s
    camera: torch.Tensor | None = None   # (B, N) bool: seen by the device's own camera

    @staticmethod
    def from_lists(classes: list[list[int]], positions: list[list[tuple[float, float]]],
                   velocities: list[list[tuple[float, float]]]) -> 'SetTargets':
        """Pad per-frame lists (possibly empty) into a SetTargets batch."""
        if not (len(classes) == len(positions) == len(velocities)):
            raise ValueError('classes, positions and velocities must have the same batch size')
        n = max([len(c) for c in classes] + [1])
        b = len(classes)
        cls = torch.zeros(b, n, dtype=torch.long)
        pos = torch.zeros(b, n, 2)
        vel = torch.zeros(b, n, 2)
        for i, (c, p, v) in enumerate(zip(classes, positions, velocities)):
            if not (len(c) == len(p) == len(v)):
                raise ValueError(f'frame {i}: classes, positions, velocities differ in length')
            if c:
                cls[i, :len(c)] = torch.as_tensor(c, dtype=torch.long)
                pos[i, :len(c)] = torch.as_tensor(p, dtype=torch.float32).reshape(-1, 2)
                vel[i, :len(c)] = torch.as_tensor(v, dtype=torch.float32).reshape(-1, 2)
        if bool((cls < 0).any()):
            raise ValueError('classes: must be >= 1 for objects (0 is padding)')
        return SetTargets(cls, pos, vel)


def hungarian_match(pred: SetPrediction, targets: SetTargets, loss_cfg: LossConfig,
                    head_cfg: HeadConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame, (query indices, target indices) of the minimum-cost one-to-one matching."""
    probs = pred.logits.detach().float().softmax(-1)
    pos = pred.position.detach().float() / head_cfg.position_scale_m
    out = []
    for b in range(probs.shape[0]):
        valid = torch.nonzero(targets.classes[b] > 0).flatten()
        if valid.numel() == 0:
            out.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
            continue
        tcls = targets.classes[b, valid]
        tpos = targets.position[b, valid].float() / head_cfg.position_scale_m
        cost = (-loss_cfg.cost_class * probs[b][:, tcls]
                + loss_cfg.cost_position * torch.cdist(pos[b], tpos, p=1))
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        out.append((rows.astype(np.int64), valid.cpu().numpy()[cols].astype(np.int64)))
    return out


class SetCriterion(nn.Module):
    """Hungarian-matched class + position + velocity loss (see module doc)."""

    def __init__(self, loss_cfg: LossConfig | None = None,
                 head_cfg: HeadConfig | None = None) -> None:
        super().__init__()
        self.loss_cfg = loss_cfg or LossConfig()
        self.head_cfg = head_cfg or HeadConfig()
        weight = torch.tensor(self.loss_cfg.class_weight_vector(self.head_cfg.num_classes))
        self.register_buffer('class_weight', weight, persistent=False)

    def forward(self, pred: SetPrediction, targets: SetTargets, pose: torch.Tensor | None = None,
                present: torch.Tensor | None = None,
                sensed: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Return {'loss', 'loss_class', 'loss_position', 'loss_velocity', 'num_objects'}.

        ``pose``, ``present`` and ``sensed`` are accepted for a common signature with GridCriterion and
        ignored: set predictions are already in the targets' frame.
        """
        lc, hc = self.loss_cfg, self.head_cfg
        if targets.classes.numel() and int(targets.classes.max()) >= hc.num_classes:
            raise ValueError(f'targets.classes: ids must be < num_classes={hc.num_classes}')
        matches = hungarian_match(pred, targets, lc, hc)
        batch, queries = pred.logits.shape[:2]
        device = pred.logits.device
        tgt_cls = torch.zeros(batch, queries, dtype=torch.long, device=device)
        b_idx, q_idx, t_idx = [], [], []
        for b, (rows, cols) in enumerate(matches):
            b_idx += [b] * len(rows)
            q_idx += rows.tolist()
            t_idx += cols.tolist()
        bi = torch.as_tensor(b_idx, dtype=torch.long, device=device)
        qi = torch.as_tensor(q_idx, dtype=torch.long, device=device)
        ti = torch.as_tensor(t_idx, dtype=torch.long, device=device)
        tgt_cls[bi, qi] = targets.classes.to(device)[bi, ti]
        loss_class = F.cross_entropy(pred.logits.float().reshape(-1, hc.num_classes),
                                     tgt_cls.reshape(-1), weight=self.class_weight.to(device))
        n_obj = max(len(q_idx), 1)
        pos_err = (pred.position[bi, qi].float() - targets.position.to(device)[bi, ti].float())
        vel_err = (pred.velocity[bi, qi].float() - targets.velocity.to(device)[bi, ti].float())
        loss_pos = pos_err.abs().sum() / hc.position_scale_m / n_obj
        loss_vel = vel_err.abs().sum() / hc.velocity_scale_mps / n_obj
        total = (lc.class_weight * loss_class + lc.position_weight * loss_pos
                 + lc.velocity_weight * loss_vel)
        return {'loss': total, 'loss_class': loss_class, 'loss_position': loss_pos,
                'loss_velocity': loss_vel,
                'num_objects': torch.tensor(float(len(q_idx)), device=device)}


def grid_assignment(grid: PolarGrid, targets: SetTargets, pose: torch.Tensor | None = None,
                    present: torch.Tensor | None = None,
                    sensed: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """
    Which cell predicts which object: (batch idx, query idx, target idx) arrays.

    Without ``pose`` the targets are in the device frame and query = cell. With ``pose``
    (B, K, 3) world poses of K devices (and ``present`` (B, K)), the targets are world-frame and
    every present device whose grid contains an object is asked to report it (query = k*G + g);
    the output merges duplicates (detection_fusion.py). With ``sensed`` (B, N, K) bool, device
    k is only asked for the objects its own sensors perceive (it need not guess what only others
    see).
    Two objects in one cell: the one nearer the cell centre wins (the other is unassigned in that
    device).
    """
    sensed_np = None if sensed is None else sensed.cpu().numpy().astype(bool)
    cls = targets.classes.cpu().numpy()
    pos = targets.position.detach().cpu().numpy().astype(np.float64)
    g_count = grid.num_cells
    out_b: list[int] = []
    out_q: list[int] = []
    out_t: list[int] = []
    for b in range(cls.shape[0]):
        valid = np.nonzero(cls[b] > 0)[0]
        if valid.size == 0:
            continue
        views = [(None, 0)] if pose is None else [
            (pose[b, k].detach().cpu().numpy().astype(np.float64), k)
            for k in range(pose.shape[1]) if present is None or bool(present[b, k])]
        for p, k in views:
            mine = valid if sensed_np is None or p is None else valid[sensed_np[b, valid, k]]
            if mine.size == 0:
                continue
            xy = pos[b, mine] if p is None else to_frame_2d(pos[b, mine], p[0], p[1], p[2])
            cell = grid.cell_of(xy)
            dist = np.linalg.norm(xy - grid.centres[np.maximum(cell, 0)], axis=-1)
            taken: dict[int, tuple[float, int]] = {}
            for j in np.nonzero(cell >= 0)[0]:
                cur = taken.get(int(cell[j]))
                if cur is None or dist[j] < cur[0]:
                    taken[int(cell[j])] = (float(dist[j]), int(mine[j]))
            for g, (_, t) in taken.items():
                out_b.append(b)
                out_q.append(k * g_count + g)
                out_t.append(t)
    return (np.asarray(out_b, dtype=np.int64), np.asarray(out_q, dtype=np.int64),
            np.asarray(out_t, dtype=np.int64))


def camera_class_targets(grid: PolarGrid, targets: SetTargets) -> torch.Tensor:
    """
    (B, num_angle_cells, C - 1) multi-hot: which object classes the device's own camera sees
    in each angle cell (device-frame targets with ``camera`` flags; the target of the camera
    class head, ``rvfn.camera_class_head``).
    """
    if targets.camera is None:
        raise ValueError('camera_class_targets: the targets carry no camera flags')
    b = targets.classes.shape[0]
    out = torch.zeros(b, grid.num_angle_cells, NUM_OBJECT_CLASSES)
    seen = (targets.camera & (targets.classes > 0)).cpu().numpy()
    bi, ti = np.nonzero(seen)
    if bi.size:
        cell = grid.cell_of(targets.position[bi, ti].detach().cpu().numpy())
        ok = cell >= 0
        cls = targets.classes[bi, ti].cpu().numpy()
        out[bi[ok], cell[ok] // grid.num_range_cells, cls[ok] - 1] = 1.0
    return out


def camera_class_loss(logits: torch.Tensor, targets: SetTargets, grid: PolarGrid,
                      in_view: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the per-angle camera class logits (B, A, 4) against
    :func:`camera_class_targets`, over the angle cells ``in_view`` (A,) bool only."""
    tgt = camera_class_targets(grid, targets).to(logits.device)
    view = in_view.to(logits.device)
    return F.binary_cross_entropy_with_logits(logits[:, view].float(), tgt[:, view])


class GridCriterion(nn.Module):
    """Per-cell loss of a GridHead (``HeadConfig.kind='grid'``): see :func:`grid_assignment`.

    loss = class_weight * CE(every cell; unassigned -> "no object", weighted no_object_weight)
         + position_weight * mean |pos - pos*|_1 / cell offset scale   (assigned cells)
         + velocity_weight * mean |vel - vel*|_1 / velocity_scale      (assigned cells)
    """

    def __init__(self, loss_cfg: LossConfig | None = None,
                 head_cfg: HeadConfig | None = None) -> None:
        super().__init__()
        self.loss_cfg = loss_cfg or LossConfig()
        self.head_cfg = head_cfg or HeadConfig(kind='grid')
        hc = self.head_cfg
        self.grid = PolarGrid(hc.polar_grid[0], hc.polar_grid[1], hc.max_range_m)
        weight = torch.tensor(self.loss_cfg.class_weight_vector(hc.num_classes))
        self.register_buffer('class_weight', weight, persistent=False)

    def forward(self, pred: SetPrediction, targets: SetTargets, pose: torch.Tensor | None = None,
                present: torch.Tensor | None = None,
                sensed: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Same keys as SetCriterion; ``pose``/``present``/``sensed`` for world-frame
        multi-device output (see :func:`grid_assignment`)."""
        lc, hc = self.loss_cfg, self.head_cfg
        if targets.classes.numel() and int(targets.classes.max()) >= hc.num_classes:
            raise ValueError(f'targets.classes: ids must be < num_classes={hc.num_classes}')
        device = pred.logits.device
        bi, qi, ti = (torch.as_tensor(a, device=device)
                      for a in grid_assignment(self.grid, targets, pose, present, sensed))
        batch, queries = pred.logits.shape[:2]
        tgt_cls = torch.zeros(batch, queries, dtype=torch.long, device=device)
        tgt_cls[bi, qi] = targets.classes.to(device)[bi, ti]
        logits = pred.logits.float().reshape(-1, hc.num_classes)
        tgt_flat = tgt_cls.reshape(-1)
        weight = self.class_weight.to(device)
        per = F.cross_entropy(logits, tgt_flat, weight=weight, reduction='none')
        if present is not None:   # absent devices' cells carry no loss
            keep = present.to(device).repeat_interleave(self.grid.num_cells, dim=1).reshape(-1)
            per, tgt_flat = per[keep], tgt_flat[keep]
        loss_class = per.sum() / weight[tgt_flat].sum().clamp_min(1e-6)
        n_obj = max(int(qi.numel()), 1)
        pos_err = pred.position[bi, qi].float() - targets.position.to(device)[bi, ti].float()
        vel_err = pred.velocity[bi, qi].float() - targets.velocity.to(device)[bi, ti].float()
        loss_pos = pos_err.abs().sum() / self.grid.offset_scale_m / n_obj
        loss_vel = vel_err.abs().sum() / hc.velocity_scale_mps / n_obj
        total = (lc.class_weight * loss_class + lc.position_weight * loss_pos
                 + lc.velocity_weight * loss_vel)
        return {'loss': total, 'loss_class': loss_class, 'loss_position': loss_pos,
                'loss_velocity': loss_vel,
                'num_objects': torch.tensor(float(qi.numel()), device=device)}


def build_criterion(loss_cfg: LossConfig, head_cfg: HeadConfig) -> nn.Module:
    """GridCriterion for grid heads, SetCriterion (Hungarian) for set heads."""
    if head_cfg.kind == 'grid':
        return GridCriterion(loss_cfg, head_cfg)
    return SetCriterion(loss_cfg, head_cfg)
