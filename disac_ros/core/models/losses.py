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

from disac_ros.core.models.config import HeadConfig, LossConfig
from disac_ros.core.models.heads import SetPrediction


@dataclass
class SetTargets:
    """Padded ground truth of a batch; ``classes == 0`` marks padding slots."""

    classes: torch.Tensor    # (B, N) long, 1..C-1 for objects, 0 for padding
    position: torch.Tensor   # (B, N, 2) metres
    velocity: torch.Tensor   # (B, N, 2) m/s

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
        weight = torch.ones(self.head_cfg.num_classes)
        weight[0] = self.loss_cfg.no_object_weight
        self.register_buffer('class_weight', weight, persistent=False)

    def forward(self, pred: SetPrediction, targets: SetTargets) -> dict[str, torch.Tensor]:
        """Return {'loss', 'loss_class', 'loss_position', 'loss_velocity', 'num_objects'}."""
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
