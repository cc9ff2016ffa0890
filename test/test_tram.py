"""TRAM aggregation (masking, variable K, adaptive weights) and the set-matching loss."""
import itertools

import numpy as np
import pytest
import torch

from disac_ros.core.models.config import HeadConfig, LossConfig, TRAMConfig
from disac_ros.core.models.heads import SetPrediction
from disac_ros.core.models.losses import hungarian_match, SetCriterion, SetTargets
from disac_ros.core.models.tram import TRAM

F = 16


def _cfg(**kw):
    head = HeadConfig(dim=32, num_heads=2, num_queries=6, num_layers=1)
    return TRAMConfig(**{**dict(feature_dim=F, dim=32, num_heads=2, num_layers=1,
                                tokens_per_device=2, max_devices=6, head=head), **kw})


def _batch(b=2, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, k, F, generator=g)
    pose = torch.cat([torch.randn(b, k, 2, generator=g) * 30,
                      torch.rand(b, k, 1, generator=g) * 6.28], -1)
    link = torch.stack([torch.rand(b, k, generator=g) * 25 - 5,
                        torch.rand(b, k, generator=g) * 300 + 20], -1)
    return feats, pose, link


@pytest.mark.parametrize('aggregator', ['tram', 'mean_pool'])
def test_output_shapes_and_weights_over_present_devices(aggregator):
    torch.manual_seed(0)
    model = TRAM(_cfg(aggregator=aggregator)).eval()
    feats, pose, link = _batch()
    present = torch.tensor([[True, True, False, True], [False, True, False, False]])
    out = model(feats, present, pose, link)
    assert out.prediction.logits.shape == (2, 6, 5)
    assert out.prediction.position.shape == (2, 6, 2)
    assert out.prediction.velocity.shape == (2, 6, 2)
    assert torch.allclose(out.weights.sum(1), torch.ones(2))
    assert bool((out.weights[~present] == 0).all()) and bool((out.weights[present] > 0).all())
    assert out.weights[1, 1].item() == pytest.approx(1.0)


@pytest.mark.parametrize('aggregator', ['tram', 'mean_pool'])
def test_absent_devices_cannot_affect_the_output(aggregator):
    torch.manual_seed(0)
    model = TRAM(_cfg(aggregator=aggregator)).eval()
    feats, pose, link = _batch()
    present = torch.tensor([[True, False, True, False], [True, True, True, False]])
    ref = model(feats, present, pose, link)
    feats2, pose2, link2 = feats.clone(), pose.clone(), link.clone()
    feats2[~present] = 1e3
    pose2[~present] = -77.0
    link2[~present] = 1.0
    out = model(feats2, present, pose2, link2)
    assert torch.allclose(ref.prediction.logits, out.prediction.logits, atol=1e-5)
    assert torch.allclose(ref.weights, out.weights)
    # ... and dropping the absent slots entirely gives the same answer (K changes at run time).
    keep = [0, 2]
    small = model(feats[:1, keep], present[:1, keep], pose[:1, keep], link[:1, keep],
                  torch.tensor([keep]))
    assert torch.allclose(ref.prediction.logits[:1], small.prediction.logits, atol=1e-5)


def test_k_can_change_between_calls_and_order_does_not_matter():
    torch.manual_seed(0)
    model = TRAM(_cfg()).eval()
    for k in (1, 3, 6):
        feats, pose, link = _batch(k=k, seed=k)
        out = model(feats, torch.ones(2, k, dtype=torch.bool), pose, link)
        assert out.weights.shape == (2, k)
    feats, pose, link = _batch(k=4)
    present = torch.ones(2, 4, dtype=torch.bool)
    idx = torch.arange(4).expand(2, 4)
    perm = [3, 1, 0, 2]
    a = model(feats, present, pose, link, idx)
    b = model(feats[:, perm], present[:, perm], pose[:, perm], link[:, perm], idx[:, perm])
    assert torch.allclose(a.prediction.logits, b.prediction.logits, atol=1e-5)
    assert torch.allclose(a.weights[:, perm], b.weights, atol=1e-6)


def test_aggregation_weights_depend_on_link_quality_and_content():
    torch.manual_seed(0)
    model = TRAM(_cfg()).eval()
    feats, pose, link = _batch()
    present = torch.ones(2, 4, dtype=torch.bool)
    w = model(feats, present, pose, link).weights
    link2 = link.clone()
    link2[:, 0, 0] -= 20.0
    assert not torch.allclose(w, model(feats, present, pose, link2).weights)
    feats2 = feats.clone()
    feats2[:, 0] *= -3
    assert not torch.allclose(w, model(feats2, present, pose, link).weights)


def test_tram_rejects_bad_inputs():
    model = TRAM(_cfg())
    feats, pose, link = _batch()
    present = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match='no present device'):
        model(feats, torch.zeros(2, 4, dtype=torch.bool), pose, link)
    with pytest.raises(ValueError, match='present: expected a bool'):
        model(feats, present.float(), pose, link)
    with pytest.raises(ValueError, match='pose'):
        model(feats, present, pose[..., :2], link)
    with pytest.raises(ValueError, match='device_index'):
        model(feats, present, pose, link, torch.full((2, 4), 6))


def _pred(logits, pos, vel=None):
    pos = torch.as_tensor(pos, dtype=torch.float32)
    vel = torch.zeros_like(pos) if vel is None else torch.as_tensor(vel, dtype=torch.float32)
    return SetPrediction(torch.as_tensor(logits, dtype=torch.float32), pos, vel)


def test_hungarian_matching_is_the_minimum_cost_assignment():
    rng = np.random.default_rng(0)
    head, loss = HeadConfig(num_queries=5), LossConfig()
    logits = torch.tensor(rng.normal(size=(1, 5, 5)), dtype=torch.float32)
    pos = torch.tensor(rng.uniform(-40, 40, size=(1, 5, 2)), dtype=torch.float32)
    targets = SetTargets.from_lists([[1, 3, 4]], [[(10, 0), (-20, 5), (30, 30)]],
                                    [[(0, 0)] * 3])
    (rows, cols), = hungarian_match(_pred(logits, pos), targets, loss, head)
    probs = logits.softmax(-1)[0]

    def cost(q, j):
        return (-probs[q, targets.classes[0, j]]
                + 5 * (pos[0, q] - targets.position[0, j]).abs().sum() / 50.0).item()
    best = min(sum(cost(q, j) for q, j in zip(p, range(3)))
               for p in itertools.permutations(range(5), 3))
    got = sum(cost(q, j) for q, j in zip(rows, cols))
    assert got == pytest.approx(best, abs=1e-5) and sorted(cols.tolist()) == [0, 1, 2]


def test_set_loss_is_small_for_a_perfect_prediction_and_handles_empty_frames():
    head = HeadConfig(num_queries=3)
    crit = SetCriterion(LossConfig(), head)
    targets = SetTargets.from_lists([[2], []], [[(5.0, -3.0)], []], [[(1.0, 0.5)], []])
    logits = torch.full((2, 3, 5), -20.0)
    logits[:, :, 0] = 20.0                       # every query: no object ...
    logits[0, 1, 0], logits[0, 1, 2] = -20.0, 20.0   # ... except query 1 of frame 0: class 2
    pos = torch.zeros(2, 3, 2)
    vel = torch.zeros(2, 3, 2)
    pos[0, 1] = torch.tensor([5.0, -3.0])
    vel[0, 1] = torch.tensor([1.0, 0.5])
    good = crit(_pred(logits, pos, vel), targets)
    assert good['loss'].item() < 1e-3 and good['num_objects'].item() == 1
    pos[0, 1] += 1.0
    bad = crit(_pred(logits, pos, vel), targets)
    assert bad['loss_position'].item() == pytest.approx(2.0 / 50.0, abs=1e-5)
    empty = SetTargets.from_lists([[], []], [[], []], [[], []])
    assert torch.isfinite(crit(_pred(logits, pos, vel), empty)['loss'])


def test_tram_learns_a_toy_scene_with_the_set_loss():
    """A few optimiser steps on fixed data reduce the loss: the whole graph is trainable."""
    torch.manual_seed(0)
    cfg = _cfg()
    model = TRAM(cfg)
    crit = SetCriterion(LossConfig(), cfg.head)
    feats, pose, link = _batch(b=4, k=3)
    present = torch.ones(4, 3, dtype=torch.bool)
    targets = SetTargets.from_lists([[1, 3], [2], [4, 4, 1], []],
                                    [[(10, 2), (-5, 7)], [(0, 0)], [(3, 3), (-8, 1), (20, -20)],
                                     []],
                                    [[(1, 0), (0, 1)], [(0, 0)], [(0, 0), (1, 1), (2, 0)], []])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = crit(model(feats, present, pose, link).prediction, targets)['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.5 * first


def test_device_frame_mode_maps_device_predictions_to_the_world_with_the_pose():
    torch.manual_seed(0)
    model = TRAM(_cfg(detect_in_device_frame=True)).eval()
    with torch.no_grad():                     # pose-blind content: only the geometry may move
        model.pose_emb[-1].weight.zero_()
        model.pose_emb[-1].bias.zero_()
    feats, _, link = _batch(b=1, k=1)
    present = torch.ones(1, 1, dtype=torch.bool)
    at_origin = model(feats, present, torch.zeros(1, 1, 3), link).prediction
    yaw, t = 0.7, torch.tensor([12.0, -5.0])
    moved = model(feats, present, torch.tensor([[[12.0, -5.0, yaw]]]), link).prediction
    rot = torch.tensor([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]],
                       dtype=torch.float32)
    assert torch.allclose(moved.position, at_origin.position @ rot.T + t, atol=1e-4)
    assert torch.allclose(moved.velocity, at_origin.velocity @ rot.T, atol=1e-4)
    assert torch.allclose(moved.logits, at_origin.logits, atol=1e-5)


def test_device_frame_mode_masks_absent_devices_and_needs_tram():
    from disac_ros.core.errors import ConfigError
    torch.manual_seed(0)
    model = TRAM(_cfg(detect_in_device_frame=True)).eval()
    feats, pose, link = _batch()
    present = torch.tensor([[True, False, True, False], [True, True, True, False]])
    ref = model(feats, present, pose, link)
    assert ref.prediction.logits.shape == (2, 4 * 6, 5)
    feats2, pose2 = feats.clone(), pose.clone()
    feats2[~present] = 1e3
    pose2[~present] = -77.0
    out = model(feats2, present, pose2, link)
    assert torch.allclose(ref.prediction.logits, out.prediction.logits, atol=1e-5)
    assert torch.allclose(ref.prediction.position, out.prediction.position, atol=1e-4)
    q_present = present.repeat_interleave(6, dim=1)
    assert not ref.prediction.detections(0.01)[0] or all(
        abs(d['position'][0]) < 1e3 for d in ref.prediction.detections(0.01)[0])
    probs = ref.prediction.logits.softmax(-1)
    assert bool((probs[~q_present][:, 0] > 0.999).all())        # absent: certainly no object
    with pytest.raises(ConfigError, match='detect_in_device_frame'):
        _cfg(detect_in_device_frame=True, aggregator='mean_pool')


def _relative_model(aggregator: str = 'tram', cell_context: int = 0) -> TRAM:
    head = HeadConfig(dim=32, num_heads=2, kind='grid', polar_grid=(4, 8),
                      cell_context=cell_context)
    torch.manual_seed(0)
    return TRAM(TRAMConfig(feature_dim=128, dim=32, num_layers=1, num_heads=2, head=head,
                           detect_in_device_frame=aggregator == 'tram', geometry='relative',
                           aggregator=aggregator)).eval()


def _rigid(pose: torch.Tensor, theta: float, shift: tuple[float, float]) -> torch.Tensor:
    c, s = np.cos(theta), np.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float32)
    out = pose.clone()
    out[..., :2] = pose[..., :2] @ rot.T + torch.tensor(shift)
    out[..., 2] = pose[..., 2] + theta
    return out


@pytest.mark.parametrize('cell_context', [0, 2])
def test_relative_geometry_has_no_per_id_parameters_and_ignores_the_map_frame(cell_context):
    model = _relative_model(cell_context=cell_context)
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if n.startswith(('device_emb', 'pose_emb', 'world_pos_emb'))]
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 5, 128, generator=g)
    pose = torch.cat([torch.randn(2, 5, 2, generator=g) * 20, torch.rand(2, 5, 1) * 6], -1)
    link = torch.tensor([10.0, 100.0]).expand(2, 5, 2)
    present = torch.ones(2, 5, dtype=torch.bool)
    present[1, 3] = False
    out = model(feats, present, pose, link)
    # The same scene anywhere else on the planet, turned: the same objects, moved with it.
    theta, shift = 0.9, (250.0, -80.0)
    moved = model(feats, present, _rigid(pose, theta, shift), link)
    assert torch.allclose(out.prediction.logits, moved.prediction.logits, atol=1e-3)
    ok = present.repeat_interleave(32, dim=1)
    expect = _rigid(torch.cat([out.prediction.position, torch.zeros(2, 160, 1)], -1),
                    theta, shift)[..., :2]
    assert torch.allclose(expect[ok], moved.prediction.position[ok], atol=0.05)
    # Any slot order and any slot number (ids): the same reports, reordered.
    perm = torch.tensor([3, 0, 4, 1, 2])
    again = model(feats[:, perm], present[:, perm], pose[:, perm], link[:, perm],
                  torch.full((2, 5), 99, dtype=torch.long))
    assert torch.allclose(again.prediction.logits.view(2, 5, 32, 5),
                          out.prediction.logits.view(2, 5, 32, 5)[:, perm], atol=1e-4)


@pytest.mark.parametrize('aggregator', ['tram', 'mean_pool'])
def test_relative_geometry_runs_any_number_of_devices(aggregator):
    model = _relative_model(aggregator)
    for k in (1, 2, 9, 12):
        out = model(torch.randn(1, k, 128), torch.ones(1, k, dtype=torch.bool),
                    torch.randn(1, k, 3) * 10, torch.tensor([10.0, 100.0]).expand(1, k, 2))
        assert out.prediction.logits.shape[1] == k * 32     # every device's cells
        assert torch.isfinite(out.prediction.logits).all()


@pytest.mark.parametrize('cell_context', [0, 2])
def test_relative_geometry_absent_devices_cannot_affect_the_present_ones(cell_context):
    model = _relative_model(cell_context=cell_context)
    feats = torch.randn(1, 3, 128)
    pose = torch.randn(1, 3, 3) * 10
    link = torch.tensor([10.0, 100.0]).expand(1, 3, 2)
    present = torch.tensor([[True, False, True]])
    a = model(feats, present, pose, link).prediction.logits.view(1, 3, 32, 5)
    feats[0, 1] = 100.0
    pose[0, 1] = torch.tensor([5.0, 5.0, 1.0])
    b = model(feats, present, pose, link).prediction.logits.view(1, 3, 32, 5)
    assert torch.allclose(a[:, [0, 2]], b[:, [0, 2]], atol=1e-5)


def test_cell_pruning_fuses_the_likeliest_cells_and_is_exact_when_it_keeps_all():
    model = _relative_model()
    g = torch.Generator().manual_seed(2)
    feats, pose = torch.randn(2, 4, 128, generator=g), torch.randn(2, 4, 3, generator=g) * 10
    link = torch.tensor([10.0, 100.0]).expand(2, 4, 2)
    present = torch.tensor([[True, True, True, True], [True, False, True, True]])
    other = feats.clone()
    other[:, 1] = torch.randn(2, 128, generator=g)      # another device reports something else
    with torch.no_grad():
        full = model(feats, present, pose, link).prediction
        model.max_cells_per_device = 32                  # every cell of the 4 x 8 grid: the same
        assert torch.equal(model(feats, present, pose, link).prediction.logits, full.logits)
        model.max_cells_per_device = 5
        pruned = model(feats, present, pose, link).prediction
        moved = model(other, present, pose, link).prediction
    assert pruned.logits.shape == full.logits.shape
    assert torch.isfinite(pruned.position[present.repeat_interleave(32, dim=1)]).all()
    # Device 0's cells: only the 5 it fuses can hear device 1; the others keep their own reading
    # (the no-object logit and the position; the aggregation weight biases every cell alike).
    dev0 = slice(0, 32)
    changed = ((pruned.position[0, dev0] != moved.position[0, dev0]).any(-1)
               | (pruned.logits[0, dev0, 0] != moved.logits[0, dev0, 0]))
    assert 0 < int(changed.sum()) <= 5
    model.max_cells_per_device = 0                   # without pruning every cell hears it
    with torch.no_grad():
        full_moved = model(other, present, pose, link).prediction
    assert int((full.position[0, dev0] != full_moved.position[0, dev0]).any(-1).sum()) > 5


def test_a_fused_cell_budget_is_shared_by_the_present_devices():
    # max_fused_cells = N: each device fuses N // K of its cells, K = the present devices; exact
    # while N covers every cell of every present device.
    model = _relative_model()
    g = torch.Generator().manual_seed(3)
    feats, pose = torch.randn(2, 4, 128, generator=g), torch.randn(2, 4, 3, generator=g) * 10
    link = torch.tensor([10.0, 100.0]).expand(2, 4, 2)
    two = torch.tensor([[True, False, True, False], [False, True, True, False]])
    with torch.no_grad():
        full = model(feats, two, pose, link).prediction
        model.max_fused_cells = 64                       # 2 devices x 32 cells: every cell
        assert torch.equal(model(feats, two, pose, link).prediction.logits, full.logits)
        model.max_fused_cells = 10                       # 2 present devices: 5 cells each
        budget = model(feats, two, pose, link).prediction
        model.max_fused_cells, model.max_cells_per_device = 0, 5
        per_device = model(feats, two, pose, link).prediction
    assert torch.equal(budget.logits, per_device.logits)
    assert not torch.equal(budget.logits, full.logits)
    assert model.cells_to_fuse(torch.ones(1, 40, dtype=torch.bool), 32) == 5
    model.max_cells_per_device, model.max_fused_cells = 0, 10
    assert model.cells_to_fuse(torch.ones(1, 40, dtype=torch.bool), 32) == 1   # never 0


def test_pruned_training_steps_teach_the_reading_of_unfused_cells():
    # Stage2Recipe.pruned_step_fraction: some steps fuse only m cells per device, so the grid
    # head's reading of a cell's own (unfused) tokens gets a gradient; the option is restored
    # after the step and a recipe without it draws nothing from the step's rng.
    from disac_ros.core.training.recipes import Stage2Recipe
    from disac_ros.core.training.stage2 import fused_cells, pruned_cells
    model = _relative_model().train()
    off, always = Stage2Recipe(), Stage2Recipe(pruned_step_fraction=1.0, pruned_min_cells=4)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert pruned_cells(model, off, rng) == 0 and rng.bit_generator.state == state
    drawn = {pruned_cells(model, always, np.random.default_rng(s)) for s in range(50)}
    assert drawn <= set(range(4, 32)) and len(drawn) > 5
    g = torch.Generator().manual_seed(3)
    feats, pose = torch.randn(2, 4, 128, generator=g), torch.randn(2, 4, 3, generator=g) * 10
    link = torch.tensor([10.0, 100.0]).expand(2, 4, 2)
    present = torch.ones(2, 4, dtype=torch.bool)
    grads = []
    for cells in (0, 8):
        model.zero_grad()
        with fused_cells(model, cells):
            assert model.max_cells_per_device == cells
            model(feats, present, pose, link).prediction.logits.sum().backward()
        assert model.max_cells_per_device == 0
        grads.append(model.head.net[1].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])
    with pytest.raises(Exception, match='pruned_step_fraction'):
        Stage2Recipe(pruned_step_fraction=1.5)


def test_geometry_must_be_known():
    with pytest.raises(Exception, match='geometry'):
        TRAMConfig(geometry='polar')
