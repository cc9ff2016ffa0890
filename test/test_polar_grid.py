"""Polar-grid layout: geometry, camera lift, per-cell loss, NMS, RVFN and TRAM shapes/masking."""
import math

import numpy as np
import pytest
import torch

from disac_ros.core.errors import ConfigError
from disac_ros.core.geometry import nms_keep
from disac_ros.core.models.config import HeadConfig, LossConfig, RVFNConfig, TRAMConfig
from disac_ros.core.models.heads import GridHead
from disac_ros.core.models.losses import (GridCriterion, SetTargets, camera_class_loss,
                                          camera_class_targets, grid_assignment)
from disac_ros.core.models.polar_grid import PolarGrid
from disac_ros.core.models.rvfn import LocalDetector
from disac_ros.core.models.tram import TRAM

GRID = (4, 8)


def _head(dim=32):
    return HeadConfig(dim=dim, num_heads=2, kind='grid', polar_grid=GRID)


def test_cell_centres_fall_in_their_own_cell_and_outside_points_get_minus_one():
    g = PolarGrid(8, 16, 64.0)
    assert g.num_cells == 128
    assert np.array_equal(g.cell_of(g.centres), np.arange(128))
    # behind the device, beyond the range, and exactly sideways at the edge of u = 1
    assert g.cell_of(np.array([[-5.0, 0.0], [70.0, 0.0], [0.0, 10.0]])).tolist() == [-1, -1, -1]
    # a point to the left (y > 0) lands in an angle cell above the middle
    left = int(g.cell_of(np.array([[20.0, 10.0]]))[0])
    assert left // 16 >= 4 and left % 16 == int(math.hypot(20, 10) // 4)


def test_camera_lift_covers_only_the_camera_field_of_view():
    g = PolarGrid(8, 16, 64.0)
    lift = g.camera_lift(60.0, 16)
    inside = [abs(math.asin(-1 + (a + 0.5) * 0.25)) <= math.radians(30) for a in range(8)]
    for a in range(8):
        assert lift[a].sum().item() == pytest.approx(1.0 if inside[a] else 0.0)
    # positive azimuth (left, high angle index) looks at the left half of the image
    a_left = max(a for a in range(8) if inside[a])
    cols = torch.nonzero(lift[a_left]).flatten()
    assert cols.max().item() < 8


def test_span_lift_reads_every_column_of_a_cell_sample_lift_only_its_centre():
    g = PolarGrid(8, 16, 64.0)
    span, sample = g.camera_lift(60.0, 16, 'span'), g.camera_lift(60.0, 16, 'sample')
    for a in range(8):
        assert span[a].sum().item() == pytest.approx(sample[a].sum().item(), abs=1e-6)
    # each cell in view spans 60 / 4 = ~15 degrees = about 4 of 16 columns; the centre sample
    # reads two, so an object seen at the cell's edge never reaches it
    assert all(int((span[a] > 0).sum()) >= 4 for a in (2, 3, 4, 5))
    assert all(int((sample[a] > 0).sum()) <= 2 for a in range(8))
    # every column of the image feeds some cell, each about equally
    assert torch.all(span.sum(0) > 0.15)
    with pytest.raises(ValueError, match='mode'):
        g.camera_lift(60.0, 16, 'nearest')


def test_camera_class_targets_mark_what_the_camera_sees_in_each_angle_cell():
    g = PolarGrid(8, 16, 64.0)
    # a truck straight ahead, a pedestrian to the left, a car the camera does not see
    t = SetTargets.from_lists([[2, 3, 1]], [[(20.0, 0.5), (20.0, 8.0), (15.0, -1.0)]],
                              [[(0, 0)] * 3])
    with pytest.raises(ValueError, match='camera flags'):
        camera_class_targets(g, t)
    t.camera = torch.tensor([[True, True, False]])
    tgt = camera_class_targets(g, t)
    assert tgt.shape == (1, 8, 4)
    ahead, left = int(g.cell_of(np.array([[20.0, 0.5]]))[0]) // 16, \
        int(g.cell_of(np.array([[20.0, 8.0]]))[0]) // 16
    assert tgt[0, ahead].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert tgt[0, left].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert tgt.sum().item() == 2.0                      # the unseen car marks nothing
    # the loss covers only the cells in view, and is small when the logits agree
    in_view = g.camera_lift(60.0, 16, 'span').sum(-1) > 0
    good = (tgt * 20.0 - 10.0).requires_grad_()
    assert camera_class_loss(good, t, g, in_view).item() < 1e-3
    assert camera_class_loss(-good.detach(), t, g, in_view).item() > 1.0


def test_camera_class_head_is_off_for_old_configs_and_its_logits_follow_the_angle_cells():
    assert RVFNConfig().camera_class_head is False and RVFNConfig().camera_lift == 'sample'
    with pytest.raises(ConfigError, match='camera_lift'):
        RVFNConfig(layout='polar', polar_grid=GRID, cell_dim=4, feature_dim=128,
                   camera_lift='centre')
    rc = RVFNConfig(vis_channels=(8, 16), rf_channels=(8,), dim=32, num_heads=2,
                    num_cross_layers=1, layout='polar', polar_grid=GRID, cell_dim=4,
                    feature_dim=128, camera_lift='span', camera_class_head=True)
    det = LocalDetector(rc, _head())
    fused, _ = det(torch.rand(2, 3, 32, 32), torch.rand(2, 2, 16, 32))
    assert fused.camera_logits is not None and fused.camera_logits.shape == (2, GRID[0], 4)
    plain = LocalDetector(RVFNConfig(vis_channels=(8, 16), rf_channels=(8,), dim=32,
                                     num_heads=2, num_cross_layers=1, layout='polar',
                                     polar_grid=GRID, cell_dim=4, feature_dim=128), _head())
    assert plain.rvfn(torch.rand(1, 3, 32, 32), torch.rand(1, 2, 16, 32)).camera_logits is None


def test_grid_assignment_device_frame_and_world_frame():
    g = PolarGrid(*GRID, 64.0)
    t = SetTargets.from_lists([[1, 3]], [[(10.0, 0.5), (30.0, -20.0)]], [[(0, 0), (0, 0)]])
    b, q, ti = grid_assignment(g, t)
    cells = g.cell_of(np.array([[10.0, 0.5], [30.0, -20.0]]))
    assert sorted(zip(q.tolist(), ti.tolist())) == sorted(zip(cells.tolist(), [0, 1]))
    # World frame, two devices: device 1 sits at (100, 0) facing -x and also sees object 0.
    tw = SetTargets.from_lists([[2]], [[(60.0, 1.0)]], [[(0, 0)]])
    pose = torch.tensor([[[0.0, 0.0, 0.0], [100.0, 0.0, math.pi]]])
    b, q, ti = grid_assignment(g, tw, pose, torch.tensor([[True, True]]))
    assert sorted(q.tolist()) == sorted([int(g.cell_of(np.array([[60.0, 1.0]]))[0]),
                                         g.num_cells + int(g.cell_of(np.array([[40.0, -1.0]]))[0])])
    b, q, ti = grid_assignment(g, tw, pose, torch.tensor([[False, True]]))
    assert q.tolist() == [g.num_cells + int(g.cell_of(np.array([[40.0, -1.0]]))[0])]


def test_grid_criterion_decreases_when_fitting_one_frame():
    torch.manual_seed(0)
    head = GridHead(_head())
    tokens = torch.randn(1, GRID[0] * GRID[1], 32, requires_grad=True)
    crit = GridCriterion(LossConfig(), _head())
    t = SetTargets.from_lists([[1, 4]], [[(12.0, 1.0), (40.0, -15.0)]], [[(5, 0), (0, 2)]])
    opt = torch.optim.Adam([tokens, *head.parameters()], lr=0.01)
    first = None
    for _ in range(60):
        loss = crit(head(tokens), t)['loss']
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_nms_keeps_the_most_confident_of_close_detections():
    score = np.array([0.9, 0.8, 0.7, 0.3])
    pos = np.array([[0.0, 0.0], [0.5, 0.0], [5.0, 0.0], [9.0, 9.0]])
    assert nms_keep(score, pos, 0.5, 1.5).tolist() == [0, 2]
    assert nms_keep(score, pos, 0.5, 0.0).tolist() == [0, 1, 2]


@pytest.mark.parametrize('modalities', ['both', 'rf', 'camera'])
def test_polar_rvfn_feature_is_cells_times_cell_dim(modalities):
    torch.manual_seed(0)
    rc = RVFNConfig(vis_channels=(8, 16), rf_channels=(8, 16), dim=32, num_heads=2,
                    num_cross_layers=1, layout='polar', polar_grid=GRID, cell_dim=4,
                    feature_dim=GRID[0] * GRID[1] * 4, modalities=modalities)
    det = LocalDetector(rc, _head()).eval()
    fused, pred = det(torch.rand(2, 3, 64, 64), torch.randn(2, 2, 32, 128))
    assert fused.feature.shape == (2, 128)
    assert pred.logits.shape == (2, 32, 5) and pred.position.shape == (2, 32, 2)


def test_polar_config_errors_name_the_field():
    with pytest.raises(ConfigError, match='feature_dim'):
        RVFNConfig(layout='polar', polar_grid=(4, 8), cell_dim=4, feature_dim=100)
    rc = RVFNConfig(dim=32, num_heads=2, layout='polar', polar_grid=(4, 8), cell_dim=4,
                    feature_dim=128)
    with pytest.raises(ConfigError, match='head.kind'):
        LocalDetector(rc, HeadConfig(dim=32, num_heads=2))


@pytest.mark.parametrize('aggregator', ['tram', 'mean_pool'])
def test_grid_tram_masks_absent_devices_and_places_cells_by_pose(aggregator):
    torch.manual_seed(0)
    cfg = TRAMConfig(feature_dim=128, dim=32, num_heads=2, num_layers=1, max_devices=4,
                     aggregator=aggregator, detect_in_device_frame=aggregator == 'tram',
                     head=_head())
    model = TRAM(cfg).eval()
    feats = torch.randn(1, 3, 128)
    pose = torch.tensor([[[0.0, 0.0, 0.0], [50.0, 5.0, 1.0], [-20.0, 3.0, 2.0]]])
    link = torch.tensor([[[10.0, 100.0], [5.0, 200.0], [0.0, 50.0]]])
    present = torch.tensor([[True, False, True]])
    with torch.no_grad():
        ref = model(feats, present, pose, link)
    feats2 = feats.clone()
    feats2[0, 1] = 1e3
    with torch.no_grad():
        out = model(feats2, present, pose, link)
    assert torch.allclose(ref.prediction.logits, out.prediction.logits, atol=1e-5)
    assert ref.prediction.logits.shape == (1, 96, 5)
    assert ref.weights[0, 1].item() == 0.0
    # device 2's cells lie within the grid's reach of its pose
    p2 = ref.prediction.position[0, 64:96]
    assert float(torch.linalg.norm(p2 - pose[0, 2, :2], dim=-1).max()) < 64.0 + 2 * 16.0 + 1


def test_agc_phase_input_does_not_depend_on_the_fading_phase():
    from disac_ros.core.models.semantic_codec import receiver_inputs
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 16, 2, generator=g) + torch.tensor([0.7, 0.2])
    phi = torch.tensor([0.3, 2.0, -2.9])[:, None]
    rot = torch.stack((torch.cos(phi) * y[..., 0] - torch.sin(phi) * y[..., 1],
                       torch.sin(phi) * y[..., 0] + torch.cos(phi) * y[..., 1]), -1) * 0.01
    a, la = receiver_inputs(y, 'agc_phase')
    b, lb = receiver_inputs(rot, 'agc_phase')
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(la - 2.0, lb, atol=1e-5)    # the level still says 40 dB weaker
    assert torch.allclose(a.mean(1)[:, 1], torch.zeros(3), atol=1e-6)


def test_sensing_assignment_only_asks_devices_that_perceive_the_object():
    g = PolarGrid(*GRID, 64.0)
    tw = SetTargets.from_lists([[2]], [[(60.0, 1.0)]], [[(0, 0)]])
    pose = torch.tensor([[[0.0, 0.0, 0.0], [100.0, 0.0, math.pi]]])
    sensed = torch.tensor([[[False, True]]])
    b, q, ti = grid_assignment(g, tw, pose, torch.tensor([[True, True]]), sensed)
    assert q.tolist() == [g.num_cells + int(g.cell_of(np.array([[40.0, -1.0]]))[0])]


@pytest.mark.parametrize('context', [0, 1])
def test_cell_context_lets_a_cell_see_its_neighbours_only(context):
    # head.cell_context = n: each layer is two 3x3 convs, so a cell's prediction reads the cells
    # up to 2n away on the (angle, range) grid and nothing further; n = 0 is per-cell.
    rc = RVFNConfig(vis_channels=(8, 16), rf_channels=(8,), dim=32, num_heads=2,
                    num_cross_layers=1, layout='polar', polar_grid=(4, 8), cell_dim=4,
                    feature_dim=128)
    torch.manual_seed(0)
    det = LocalDetector(rc, HeadConfig(dim=32, num_heads=2, kind='grid', polar_grid=(4, 8),
                                       cell_context=context)).eval()
    feat = torch.randn(1, 4, 8, 4)
    base = det.detect_from_feature(feat.flatten(1)).logits.view(4, 8, -1)
    near, far = feat.clone(), feat.clone()
    near[0, 1, 4] += 3.0             # next to cell (1, 3)
    far[0, 3, 7] += 3.0              # 4 range cells and 2 angle cells from (1, 3)
    with torch.no_grad():
        near_out = det.detect_from_feature(near.flatten(1)).logits.view(4, 8, -1)
        far_out = det.detect_from_feature(far.flatten(1)).logits.view(4, 8, -1)
    assert torch.allclose(far_out[1, 3], base[1, 3], atol=1e-6)
    assert (not torch.allclose(near_out[1, 3], base[1, 3], atol=1e-4)) == bool(context)
    with pytest.raises(ConfigError, match='cell_context'):
        HeadConfig(kind='set', cell_context=1).validate()
