"""RVFN (RF-vision fusion), the local detector head and model configs."""
from dataclasses import replace

import pytest
import torch

from disac_ros.core.errors import ConfigError
from disac_ros.core.models.config import HeadConfig, RVFNConfig, TRAMConfig
from disac_ros.core.models.rvfn import LocalDetector, RVFN

TINY = RVFNConfig(vis_channels=(8, 16), rf_channels=(8, 16), vis_grid=(2, 2), rf_grid=(2, 4),
                  dim=32, num_heads=2, num_cross_layers=1, feature_dim=24)


def _inputs(batch=2, rf_hw=(32, 128), img=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, img, img, generator=g),
            torch.randn(batch, 2, *rf_hw, generator=g))


@pytest.mark.parametrize('rf_hw', [(32, 128), (8, 8), (5, 77)])
def test_rvfn_output_shapes_for_any_rf_size(rf_hw):
    torch.manual_seed(0)
    model = RVFN(TINY)
    image, rf = _inputs(rf_hw=rf_hw)
    out = model(image, rf)
    assert out.feature.shape == (2, 24)
    assert out.tokens.shape == (2, 2 * 4 + 2 * 2, 32)
    assert torch.isfinite(out.feature).all()


def test_rvfn_default_config_handles_simulator_sizes():
    torch.manual_seed(0)
    model = RVFN()
    image, rf = _inputs(batch=1, rf_hw=(32, 128), img=128)
    out = model(image, rf)
    assert out.feature.shape == (1, 256)


def test_rvfn_fuses_both_modalities_and_backprops():
    torch.manual_seed(0)
    model = RVFN(TINY)
    image, rf = _inputs()
    base = model(image, rf).feature
    # Each modality changes the fused feature (cross-attention mixes them).
    assert not torch.allclose(base, model(image, rf * 2.0 + 1.0).feature)
    assert not torch.allclose(base, model(1.0 - image, rf).feature)
    base.pow(2).sum().backward()
    assert model.vis_net.cnn[0][0].weight.grad.abs().sum() > 0
    assert model.rf_net.cnn[0][0].weight.grad.abs().sum() > 0


def test_rvfn_unimodal_baselines_ignore_the_other_modality():
    torch.manual_seed(0)
    image, rf = _inputs()
    rf_only = RVFN(replace(TINY, modalities='rf'))
    assert rf_only.vis_net is None
    assert rf_only(None, rf).feature.shape == (2, 24)
    cam_only = RVFN(replace(TINY, modalities='camera'))
    assert cam_only.rf_net is None
    assert cam_only(image, None).tokens.shape == (2, 4, 32)


def test_rvfn_is_deterministic_per_seed_and_batch_independent():
    image, rf = _inputs(batch=3)
    torch.manual_seed(1)
    a = RVFN(TINY).eval()
    torch.manual_seed(1)
    b = RVFN(TINY).eval()
    fa = a(image, rf).feature
    assert torch.equal(fa, b(image, rf).feature)
    # GroupNorm, not BatchNorm: one frame alone gives the same feature as inside a batch.
    assert torch.allclose(a(image[1:2], rf[1:2]).feature, fa[1:2], atol=1e-5)


def test_rvfn_rejects_bad_inputs_naming_them():
    model = RVFN(TINY)
    image, rf = _inputs()
    with pytest.raises(ValueError, match='rf'):
        model(image, rf[:, :1])
    with pytest.raises(ValueError, match='image'):
        model(None, rf)
    with pytest.raises(ValueError, match='batch'):
        model(image[:1], rf)


def test_local_detector_predicts_sets_in_the_device_frame():
    torch.manual_seed(0)
    det = LocalDetector(TINY, HeadConfig(dim=32, num_heads=2, num_queries=6,
                                         position_scale_m=40.0))
    image, rf = _inputs()
    fused, pred = det(image, rf)
    assert fused.feature.shape == (2, 24)
    assert pred.logits.shape == (2, 6, 5)
    assert pred.position.shape == (2, 6, 2) and pred.velocity.shape == (2, 6, 2)
    assert pred.position.abs().max() <= 80.0
    assert isinstance(pred.detections(threshold=0.0)[0], list)
    with pytest.raises(ConfigError, match='head.dim'):
        LocalDetector(TINY, HeadConfig(dim=64))


@pytest.mark.parametrize('cls,data,field', [
    (RVFNConfig, {'num_heads': 3}, 'rvfn.num_heads'),
    (RVFNConfig, {'modalities': 'lidar'}, 'rvfn.modalities'),
    (RVFNConfig, {'rf_grid': [4]}, 'rvfn.rf_grid'),
    (RVFNConfig, {'dim': '128'}, 'rvfn.dim'),
    (RVFNConfig, {'dimm': 128}, 'rvfn.dimm'),
    (TRAMConfig, {'head': {'num_queries': 0}}, 'tram.head.num_queries'),
    (TRAMConfig, {'aggregator': 'max'}, 'tram.aggregator'),
])
def test_config_errors_name_the_field(cls, data, field):
    with pytest.raises(ConfigError) as info:
        cls.from_dict(data)
    assert info.value.field == field


def test_configs_round_trip_through_dicts():
    for conf in (TINY, RVFNConfig(), TRAMConfig(dim=64, num_heads=2,
                                                head=HeadConfig(dim=64, num_heads=2))):
        assert type(conf).from_dict(conf.to_dict()) == conf


def test_coord_channels_make_tokens_position_aware_and_default_off():
    """A plain CNN + pool cannot tell where identical content sits; CoordConv inputs can."""
    from disac_ros.core.models.rvfn import ConvTokenizer
    torch.manual_seed(0)
    x = torch.ones(1, 2, 64, 64)
    for coord, differ in ((False, False), (True, True)):
        tok = ConvTokenizer(2, (4, 8), (16, 16), 8, coord=coord).eval()
        with torch.no_grad():
            t = (tok(x) - tok.pos).view(16, 16, 8)
        # two interior cells, away from the zero padding
        assert bool(torch.allclose(t[5, 5], t[5, 9], atol=1e-5)) is not differ
    assert RVFNConfig().coord_channels is False      # old checkpoints keep their conv shapes
    rvfn = RVFN(RVFNConfig(coord_channels=True, dim=32, num_heads=2, feature_dim=16,
                           vis_channels=(8, 8), rf_channels=(8, 8)))
    assert rvfn.rf_net.cnn[0][0].in_channels == 2 + 2
    out = rvfn(torch.rand(2, 3, 32, 32), torch.randn(2, 2, 16, 32))
    assert out.feature.shape == (2, 16)
