"""Device and aggregator inference wrappers (disac_ros.core.inference) on a FAKE, UNTRAINED model
folder written through the real save functions (test/fake_model.py). Checks shapes, batching,
masking, side information and error handling, not accuracy."""
import math
import shutil

import numpy as np
import pytest

from disac_ros.core.errors import ConfigError
from disac_ros.core.inference import (AggregatorPipeline, DevicePipeline, ModelError, ReceivedPacket,
                                      find_model_dir, read_model_info)
from disac_ros.core.tracking import NUM_CLASSES
from fake_model import make_fake_model


@pytest.fixture(scope='module')
def fake_model(tmp_path_factory):
    return make_fake_model(tmp_path_factory.mktemp('fake_untrained_model') / 'model')


def frame(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    cube = (rng.normal(size=(4, 16, 64)) + 1j * rng.normal(size=(4, 16, 64))).astype(np.complex64)
    return image, cube


def test_device_pipeline_outputs_power_normalised_symbols_batched(fake_model):
    dev = DevicePipeline(fake_model, 'dev1', threads=1)
    frames = [frame(s) for s in range(3)]
    batch = dev.run([f[0] for f in frames], [f[1] for f in frames])
    assert batch.symbols.shape == (3, dev.num_symbols, 2) and batch.feature.shape == (3, dev.feature_dim)
    np.testing.assert_allclose((batch.symbols ** 2).sum(-1).mean(-1), 1.0, rtol=1e-4)
    one = dev.run([frames[1][0]], [frames[1][1]])
    np.testing.assert_allclose(one.symbols[0], batch.symbols[1], atol=1e-5)


def test_warm_up_runs_once_and_leaves_results_unchanged(fake_model):
    dev = DevicePipeline(fake_model, 'dev1', threads=1)
    image, cube = frame(7)
    before = dev.run([image], [cube]).symbols
    assert dev.warm_up(cube_shape=cube.shape) > 0.0
    np.testing.assert_array_equal(dev.run([image], [cube]).symbols, before)
    agg = AggregatorPipeline(fake_model, threads=1)
    packet = ReceivedPacket('dev1', before[0], 10.0, 100.0, (0.0, 0.0, 0.0))
    first = agg.run([[packet]])[0]
    assert agg.warm_up() > 0.0
    again = agg.run([[packet]])[0]
    assert len(again.detections) == len(first.detections) and again.weights == first.weights


def test_device_pipeline_rejects_bad_input_and_unknown_devices(fake_model):
    dev = DevicePipeline(fake_model, 'dev0')
    image, cube = frame(0)
    with pytest.raises(ConfigError, match='image'):
        dev.run([image[..., :1]], [cube])
    with pytest.raises(ConfigError, match='rf'):
        dev.run([image], [np.full((4, 16, 64), np.nan, np.complex64)])
    with pytest.raises(ModelError, match='veh9'):
        DevicePipeline(fake_model, 'veh9')
    assert DevicePipeline(fake_model, 'veh9', model_device_id='dev2').weights_of == 'dev2'


def packets(fake_model, devices, seed=0):
    dev = DevicePipeline(fake_model, 'dev0')
    out = []
    for i, d in enumerate(devices):
        sym = dev.run(*[[x] for x in frame(seed + i)]).symbols[0]
        out.append(ReceivedPacket(d, sym, 10.0 + i, 40.0 + 10 * i, (5.0 * i, -3.0, 0.5 * i)))
    return out


def test_aggregator_batches_groups_and_masks_absent_devices(fake_model):
    agg = AggregatorPipeline(fake_model, score_threshold=0.2)
    g_all = packets(fake_model, ['dev3', 'dev0', 'dev1'])
    g_two = packets(fake_model, ['dev2', 'dev0'], seed=10)
    batched = agg.run([g_all, g_two])
    alone = agg.run([g_two])[0]
    assert batched[0].device_ids == ['dev0', 'dev1', 'dev3']          # TRAM slot order
    assert sum(batched[0].weights) == pytest.approx(1.0, abs=1e-5)
    assert sum(batched[1].weights) == pytest.approx(1.0, abs=1e-5)
    # The smaller group padded into a batch of K=3 gives what it gives alone (absent = masked).
    np.testing.assert_allclose(batched[1].weights, alone.weights, atol=1e-5)
    assert len(batched[1].detections) == len(alone.detections)
    for a, b in zip(batched[1].detections, alone.detections):
        np.testing.assert_allclose(a.position, b.position, atol=1e-4)
    for det in batched[0].detections:
        assert det.class_probabilities.shape == (NUM_CLASSES,) and det.class_probabilities[0] == 0
        assert det.class_probabilities.sum() == pytest.approx(1.0) and 0.2 <= det.confidence <= 1.0
        # The group's devices, and the ones whose cells reported this detection.
        assert det.present_devices == frozenset({'dev0', 'dev1', 'dev3'})
        assert det.devices and det.devices <= det.present_devices


def test_unknown_link_side_information_is_derived(fake_model):
    agg = AggregatorPipeline(fake_model)
    p = ReceivedPacket('dev0', np.zeros((agg.num_symbols, 2)), math.nan, math.nan, (30.0, 40.0, 0.0))
    snr, dist = agg.link_side_info(p)
    assert dist == pytest.approx(50.0) and math.isfinite(snr)
    (res,) = agg.run([[ReceivedPacket('dev0', np.ones((agg.num_symbols, 2)), math.nan, math.nan, (30.0, 40.0, 0.0))]])
    assert res.distance_m == [pytest.approx(50.0)] and res.snr_db == [pytest.approx(snr)]


def test_aggregator_rejects_bad_groups(fake_model):
    agg = AggregatorPipeline(fake_model)
    good = packets(fake_model, ['dev0'])[0]
    with pytest.raises(ConfigError, match='dev0.symbols'):
        agg.run([[ReceivedPacket('dev0', np.zeros((3, 2)), 1.0, 1.0, (0, 0, 0))]])
    with pytest.raises(ConfigError, match='dev0.symbols'):
        agg.run([[ReceivedPacket('dev0', np.full((agg.num_symbols, 2), np.nan), 1.0, 1.0, (0, 0, 0))]])
    with pytest.raises(ConfigError, match='duplicate'):
        agg.run([[good, good]])
    with pytest.raises(ModelError, match='no TRAM slot'):
        agg.run([[ReceivedPacket('intruder', good.symbols, 1.0, 1.0, (0, 0, 0))]])
    with pytest.raises(ConfigError, match='decoder'):
        AggregatorPipeline(fake_model, decoder='gpt')


def test_missing_or_corrupt_models_raise_model_error_naming_the_path(fake_model, tmp_path, monkeypatch):
    with pytest.raises(ModelError, match='does not exist'):
        read_model_info(tmp_path / 'nothing')
    broken = tmp_path / 'broken'
    shutil.copytree(fake_model, broken)
    weights = next((broken / 'stage2' / 'both_tram' / 'checkpoint').glob('*.safetensors'))
    weights.write_bytes(b'garbage' + weights.read_bytes()[7:])
    with pytest.raises(ModelError, match='sha256'):
        AggregatorPipeline(broken)
    (broken / 'model.json').write_text('{not json')
    with pytest.raises(ModelError, match='model.json'):
        DevicePipeline(broken, 'dev0')
    monkeypatch.setenv('DISAC_MODEL_DIR', str(fake_model))
    assert find_model_dir('') == fake_model and find_model_dir('/x') == type(fake_model)('/x')


def test_llm_decoder_when_configured_loads_and_fuses(tmp_path):
    model = make_fake_model(tmp_path / 'fake_untrained_llm', devices=('dev0', 'dev1'), llm=True)
    agg = AggregatorPipeline(model, decoder='llm')
    assert type(agg.decoder).__name__ == 'LLMDecoder' and agg.decoder_kind == 'llm'
    (res,) = agg.run([packets(model, ['dev0', 'dev1'])])
    assert res.device_ids == ['dev0', 'dev1'] and sum(res.weights) == pytest.approx(1.0, abs=1e-5)
    assert AggregatorPipeline(model).decoder_kind == 'mlp'          # the shipped one


def test_device_decoders_decode_each_packet_by_its_senders_decoder(fake_model):
    """decoder='device': every packet goes through the stage-1 decoder of the device that sent it
    (checked against each device's own proxy decoder, whatever the order and grouping)."""
    import torch
    from disac_ros.core.training.stage1 import load_device_models
    agg = AggregatorPipeline(fake_model, decoder='device', score_threshold=0.2)
    assert type(agg.decoder).__name__ == 'DeviceDecoders' and agg.decoder_kind == 'device'
    group = packets(fake_model, ['dev2', 'dev0', 'dev3'])
    seen = {}
    original = agg.tram.forward

    def spy(feats, present, *rest):
        seen['feats'] = feats.clone()
        return original(feats, present, *rest)
    agg.tram.forward = spy
    (res,) = agg.run([group])
    assert res.device_ids == ['dev0', 'dev2', 'dev3']
    for j, dev in enumerate(res.device_ids):
        p = next(q for q in group if q.device_id == dev)
        own = load_device_models(fake_model, 'both', dev)['proxy_decoder']
        with torch.no_grad():
            expect = own(torch.from_numpy(p.symbols[None]).float(), torch.tensor([p.snr_db]),
                         torch.tensor([p.distance_m]))[0]
        torch.testing.assert_close(seen['feats'][0, j], expect, atol=1e-5, rtol=1e-5)
    assert AggregatorPipeline(fake_model).decoder_kind == 'mlp'      # the shipped one


def test_device_decoders_lacking_a_model_device_are_refused_at_load(tmp_path):
    from disac_ros.core.models.checkpoint import save_checkpoint
    from disac_ros.core.models.device_decoders import DeviceDecoders
    from disac_ros.core.training.decoder import decoder_dir
    from disac_ros.core.training.stage1 import load_device_models
    model = make_fake_model(tmp_path / 'fake_untrained', devices=('dev0', 'dev1'), shipped='device')
    only_dev0 = DeviceDecoders.from_decoders(['dev0'], [load_device_models(model, 'both', 'dev0')['proxy_decoder']])
    save_checkpoint(decoder_dir(model, 'both', 'device') / 'checkpoint', {'decoder': only_dev0})
    with pytest.raises(ModelError, match=r"no decoder for model device\(s\) \['dev1'\]"):
        AggregatorPipeline(model)


def test_the_aggregator_applies_the_models_calibration_unless_told_otherwise(fake_model, tmp_path):
    from disac_ros.core.training.calibration import Calibration, save_calibration
    model = tmp_path / 'calibrated'
    shutil.copytree(fake_model, model)
    assert AggregatorPipeline(model).fusion.class_weights == ()          # no file: uncalibrated
    alone = Calibration((1.0, 1.0, 1.0, 1.0), (0.95, 0.95, 0.95, 0.95))   # one device: strict
    cal = Calibration((1.0, 3.0, 0.5, 1.0), (0.9, 0.2, 0.5, 0.2), {1: alone})
    save_calibration(model / 'stage2' / 'both_tram', cal, {})
    agg = AggregatorPipeline(model, score_threshold=0.5)
    assert (agg.fusion.class_weights, agg.fusion.class_thresholds) == (cal.class_weights, cal.class_thresholds)
    assert agg.fusion_for(3) == agg.fusion_for(4) == agg.fusion           # no fit of their own
    plain = AggregatorPipeline(model, class_weights=(), class_thresholds=())
    assert (plain.fusion.class_weights, plain.fusion.class_thresholds) == ((), ())
    group = packets(model, ['dev0', 'dev1'])
    for det in agg.run([group])[0].detections:        # each kept at its own class's threshold
        cls = int(np.argmax(det.class_probabilities)) - 1
        assert det.confidence >= cal.class_thresholds[cls]
    assert agg.fusion_for(1).class_thresholds == alone.class_thresholds     # by devices present
    lone = agg.run([packets(model, ['dev2'])])[0]
    assert all(det.confidence >= 0.95 for det in lone.detections)
    with pytest.raises(ConfigError, match='class_weights'):
        AggregatorPipeline(model, class_weights=(1.0, 2.0))
    (model / 'stage2' / 'both_tram' / 'calibration.json').write_text('{"class_weights": "x"}')
    with pytest.raises(ModelError, match='calibration.json'):
        AggregatorPipeline(model)


def test_aggregator_node_per_class_parameters_parse_or_name_the_parameter():
    pytest.importorskip('disac_interfaces.msg', reason='needs the built workspace (scripts/setup.sh)')
    from disac_ros.core.detection_fusion import check_class_thresholds, check_class_weights
    from disac_ros.nodes.aggregator_node import parse_per_class
    assert parse_per_class('model', 'w', check_class_weights) is None
    assert parse_per_class(' None ', 'w', check_class_weights) == ()
    assert parse_per_class('1, 2.5,0.5,1', 'w', check_class_weights) == (1.0, 2.5, 0.5, 1.0)
    for bad in ('1,2,3', '1,-1,1,1', 'car', ''):
        with pytest.raises(ConfigError, match='aggregator.class_weights'):
            parse_per_class(bad, 'aggregator.class_weights', check_class_weights)
    with pytest.raises(ConfigError, match='t'):
        parse_per_class('0.5,0.5,0.5,2', 't', check_class_thresholds)


def test_device_pipeline_resamples_each_devices_sensors_to_the_models(fake_model):
    from disac_ros.core.rf_config import RadarConfig
    from disac_ros.core.sensor_adapt import CameraModel, default_sensors
    dev = DevicePipeline(fake_model, 'dev1', threads=1)
    assert dev.info.sensors == default_sensors()          # model.json without "sensors"
    image, cube = frame(5)                                 # a 16-chirp, 64-sample radar
    radar = RadarConfig(num_chirps=16, num_samples=64, sample_rate_hz=2.5e6, max_range_m=30.0)
    assert dev.rf_features(cube, radar).shape == (2, 32, 128)          # the model's axes
    small = CameraModel.from_fov(96, 72, 50.0)
    assert dev.image_input(image[:72, :96], small).shape == (128, 128, 3)
    out = dev.run([image, image[:72, :96]], [cube, cube], [None, small], [radar, radar])
    assert out.symbols.shape == (2, dev.num_symbols, 2)
    with pytest.raises(ConfigError, match='one image size'):   # intrinsics unknown: not resampled
        dev.run([image, image[:72, :96]], [cube, cube])
    with pytest.raises(ConfigError, match='one camera and one radar model per pair'):
        dev.run([image], [cube], [None, None])
    dev.adapt_sensors = False                               # as every version before did
    assert dev.rf_features(cube, radar).shape == (2, 16, 64)
    assert dev.image_input(image[:72, :96], small).shape == (72, 96, 3)
