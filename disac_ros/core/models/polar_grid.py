"""Polar detection grid in a device's frame: cells in (range, sin azimuth), as the radar sees them.

A device's fused semantic feature in the ``'polar'`` layout is one small vector per cell of this
grid, and every detector head predicts per cell ("does an object's centre fall in this cell, of
which class, where exactly inside it, how fast"). The grid follows the radar's own geometry:

* ``num_range_cells`` uniform range cells over ``[0, max_range_m)`` (ground range from the device
  origin);
* ``num_angle_cells`` uniform cells in ``u = sin(azimuth)`` over ``[-1, 1)`` (azimuth positive to
  the left, toward device +y) -- the axis of the radar's angle FFT, so the range-angle map pools
  onto the grid exactly and every cell spans the same number of angle bins.

Cell ``g = a * num_range_cells + r`` (angle-major). Its centre (range, u) maps to device-frame
``x = range * cos(asin u)``, ``y = range * u``. Heads predict an offset from the cell centre (in
units of ``offset_scale_m``), so positions are not bounded by a cell and borders are soft.
"""
from __future__ import annotations

import math

import numpy as np
import torch


class PolarGrid:
    """Geometry of the polar grid (see module doc); cheap to build, holds no parameters."""

    def __init__(self, num_angle_cells: int, num_range_cells: int, max_range_m: float) -> None:
        if num_angle_cells < 1 or num_range_cells < 1:
            raise ValueError('PolarGrid: cell counts must be >= 1')
        if not (math.isfinite(max_range_m) and max_range_m > 0):
            raise ValueError(f'PolarGrid: max_range_m must be > 0, got {max_range_m}')
        self.num_angle_cells = int(num_angle_cells)
        self.num_range_cells = int(num_range_cells)
        self.max_range_m = float(max_range_m)
        self.range_cell_m = self.max_range_m / self.num_range_cells
        self.u_cell = 2.0 / self.num_angle_cells
        r = (np.arange(self.num_range_cells) + 0.5) * self.range_cell_m
        u = -1.0 + (np.arange(self.num_angle_cells) + 0.5) * self.u_cell
        uu, rr = np.meshgrid(u, r, indexing='ij')                 # (A, R)
        xy = np.stack((rr * np.sqrt(1.0 - uu ** 2), rr * uu), axis=-1)
        self.centres = xy.reshape(-1, 2).astype(np.float32)      # (G, 2) device frame
        # Offsets are regressed in units of the typical cell extent (range cell, or the
        # cross-range width at mid range, whichever is larger).
        self.offset_scale_m = float(max(self.range_cell_m,
                                        0.5 * self.max_range_m * self.u_cell))

    @property
    def num_cells(self) -> int:
        """Number of cells G."""
        return self.num_angle_cells * self.num_range_cells

    def centres_tensor(self) -> torch.Tensor:
        """(G, 2) float32 cell centres in the device frame."""
        return torch.from_numpy(self.centres.copy())

    def cell_of(self, xy: np.ndarray) -> np.ndarray:
        """Cell index (N,) of device-frame points (N, 2); -1 outside the grid (or behind)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        rng = np.hypot(xy[:, 0], xy[:, 1])
        u = np.where(rng > 1e-9, xy[:, 1] / np.maximum(rng, 1e-9), 0.0)
        r_idx = np.floor(rng / self.range_cell_m).astype(np.int64)
        a_idx = np.floor((u + 1.0) / self.u_cell).astype(np.int64)
        ok = (xy[:, 0] >= 0.0) & (r_idx < self.num_range_cells) & (a_idx >= 0) \
            & (a_idx < self.num_angle_cells)
        return np.where(ok, a_idx * self.num_range_cells + r_idx, -1)

    def camera_lift(self, hfov_deg: float, num_columns: int, mode: str = 'span') -> torch.Tensor:
        """
        (num_angle_cells, num_columns) weights that resample image-column features onto the
        angle cells (pinhole camera on the device x axis, image x to the right; a positive
        azimuth is left of centre). Rows of cells outside the field of view are all zero.

        * ``'span'``: row a averages the columns that look inside the cell's azimuth span,
          each by its overlap; the row sums to the fraction of the cell's span in view.
        * ``'sample'``: row a interpolates linearly between the two columns that look along the
          cell's centre azimuth (a cell is far wider than a column, so this misses objects
          seen off-centre; kept for old checkpoints).
        """
        if not (0.0 < hfov_deg < 180.0) or num_columns < 1:
            raise ValueError('camera_lift: need 0 < hfov_deg < 180 and num_columns >= 1')
        if mode not in ('span', 'sample'):
            raise ValueError(f"camera_lift: mode must be 'span' or 'sample', got {mode!r}")
        half = math.radians(hfov_deg) / 2.0
        out = torch.zeros(self.num_angle_cells, num_columns)
        edges = np.linspace(0.0, 1.0, num_columns + 1)     # column borders in image x

        def image_x(az: float) -> float:   # normalised image x in [0, 1], 0.5 at boresight
            return 0.5 - 0.5 * math.tan(az) / math.tan(half)

        for a in range(self.num_angle_cells):
            u_lo = -1.0 + a * self.u_cell
            if mode == 'span':
                az_lo, az_hi = math.asin(u_lo), math.asin(min(1.0, u_lo + self.u_cell))
                lo, hi = max(az_lo, -half), min(az_hi, half)
                if hi <= lo:
                    continue
                x0, x1 = image_x(hi), image_x(lo)            # hi azimuth = further left
                overlap = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None)
                out[a] = torch.from_numpy(overlap / overlap.sum() * (hi - lo) / (az_hi - az_lo))
                continue
            az = math.asin(u_lo + 0.5 * self.u_cell)
            if abs(az) > half:
                continue
            pos = image_x(az) * num_columns - 0.5                 # column-centre coordinates
            lo_col = int(math.floor(pos))
            frac = pos - lo_col
            for col, w in ((lo_col, 1.0 - frac), (lo_col + 1, frac)):
                out[a, min(max(col, 0), num_columns - 1)] += w
        return out
