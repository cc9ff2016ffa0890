"""disac-train export: copies only what the running system loads, and it still loads strictly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_model import make_fake_model


@pytest.fixture()
def trained_like(tmp_path: Path) -> Path:
    """A fake model folder plus the clutter a real `disac-train all` leaves behind."""
    src = make_fake_model(tmp_path / 'run', devices=('dev0', 'dev1'))
    for ckpt in src.rglob('config.json'):
        (ckpt.parent / 'trainer_state.pt').write_bytes(b'x' * 1000)
        (ckpt.parent / 'trainer_state.json').write_text('{}')
    (src / 'stage1' / 'both' / 'dev0' / 'export_train.npz').write_bytes(b'y' * 1000)
    (src / 'stage2' / 'both_mean_pool' / 'checkpoint').mkdir(parents=True)
    (src / 'stage1' / 'rf' / 'dev0' / 'checkpoint').mkdir(parents=True)
    return src


def test_export_keeps_only_shipped_models_and_loads_in_the_runtime(trained_like, tmp_path):
    from disac_ros.core.inference import AggregatorPipeline, DevicePipeline
    from disac_ros.core.models.checkpoint import load_checkpoint
    from disac_ros.tools.train_cli import main
    metrics = tmp_path / 'metrics.md'
    metrics.write_text('# DiSAC evaluation\n\n## SNR sweep\n\n| long |\n\n'
                       '## Number of devices K (reference)\n\n| method | K |\n| disac | 4 |\n')
    dst = tmp_path / 'models' / 'default'
    assert main(['export', '--from', str(trained_like), '--to', str(dst),
                 '--metrics', str(metrics), '--command', 'disac-train all ...']) == 0
    files = sorted(str(p.relative_to(dst)) for p in dst.rglob('*') if p.is_file())
    assert not [f for f in files if 'trainer_state' in f or f.endswith('.npz')]
    assert not (dst / 'stage2' / 'both_mean_pool').exists()
    assert not (dst / 'stage1' / 'rf').exists()
    ck = load_checkpoint(dst / 'stage1' / 'both' / 'dev1' / 'checkpoint')
    assert sorted(ck.models) == ['detector', 'encoder']          # no stage-1 proxies
    model = json.loads((dst / 'model.json').read_text())
    assert model['devices'] == ['dev0', 'dev1'] and model['variants'] == ['both']
    card = (dst / 'MODEL_CARD.md').read_text()
    assert '| disac | 4 |' in card and 'long' not in card and 'disac-train all ...' in card
    assert DevicePipeline(dst, 'dev1').num_symbols == AggregatorPipeline(dst).num_symbols


def test_export_ships_the_aggregators_calibration_and_names_it_in_the_card(trained_like, tmp_path):
    from disac_ros.core.errors import ModelError
    from disac_ros.core.inference import AggregatorPipeline
    from disac_ros.core.training.calibration import Calibration, save_calibration
    from disac_ros.core.training.export import export_model
    cal = Calibration((1.0, 2.5, 0.6, 1.1), (0.7, 0.3, 0.45, 0.3))
    save_calibration(trained_like / 'stage2' / 'both_tram', cal,
                     {'accuracy_before': 0.85, 'accuracy_after': 0.88})
    dst = tmp_path / 'default'
    export_model(trained_like, dst)
    assert AggregatorPipeline(dst).fusion.class_thresholds == cal.class_thresholds
    card = (dst / 'MODEL_CARD.md').read_text()
    assert '[0.7, 0.3, 0.45, 0.3]' in card and '0.8500 -> 0.8800' in card
    (trained_like / 'stage2' / 'both_tram' / 'calibration.json').write_text('{}')
    with pytest.raises(ModelError, match='calibration.json'):
        export_model(trained_like, tmp_path / 'other')
    assert not (tmp_path / 'other').exists()


def test_export_of_a_model_shipping_per_device_decoders(tmp_path):
    from disac_ros.core.inference import AggregatorPipeline
    from disac_ros.core.training.export import export_model
    src = make_fake_model(tmp_path / 'run', devices=('dev0', 'dev1'), shipped='device')
    dst = tmp_path / 'default'
    assert export_model(src, dst)['shipped_decoder'] == 'device'
    assert sorted(p.name for p in (dst / 'decoders' / 'both').iterdir()) == ['device']
    agg = AggregatorPipeline(dst)
    assert agg.decoder_kind == 'device' and list(agg.decoder.config.devices) == ['dev0', 'dev1']
    assert 'refit' not in (dst / 'MODEL_CARD.md').read_text()
    # A refit of the per-device decoders is named in the card.
    model = json.loads((src / 'model.json').read_text())
    model['decoders'] = {'both/device': {'kind': 'device', 'refit_steps': 6000}}
    (src / 'model.json').write_text(json.dumps(model))
    export_model(src, dst)
    assert 'then refit 6000 steps to its device' in (dst / 'MODEL_CARD.md').read_text()


def test_export_fails_clearly_and_never_clobbers(trained_like, tmp_path):
    from disac_ros.core.training.export import ExportError, export_model
    from disac_ros.core.errors import ConfigError
    other = tmp_path / 'not_a_model'
    other.mkdir()
    (other / 'keep.txt').write_text('mine')
    with pytest.raises(ConfigError, match='not a model folder'):
        export_model(trained_like, other)
    assert (other / 'keep.txt').read_text() == 'mine'
    # A corrupted weight file is caught by the strict integrity check; dst stays absent.
    w = trained_like / 'stage2' / 'both_tram' / 'checkpoint' / 'aggregator.safetensors'
    w.write_bytes(w.read_bytes()[:-1] + b'\0')
    dst = tmp_path / 'out'
    with pytest.raises(ExportError, match='aggregator.safetensors'):
        export_model(trained_like, dst)
    assert not dst.exists()
    with pytest.raises(ExportError, match='model.json'):
        export_model(tmp_path / 'nothing', tmp_path / 'out2')


def test_the_card_of_a_federated_model_names_its_rounds_not_its_unused_steps(tmp_path):
    from disac_ros.core.training.export import model_card
    recipe = {'name': 'r', 'stage1': {'steps': 600, 'rounds': 720, 'clients_per_round': 8,
                                      'local_steps': 10, 'batch_size': 16, 'lr': 0.001}}
    shared = model_card({'device_agnostic': True}, recipe, {}, tmp_path, 1000)
    assert '* stage1: rounds=720, clients_per_round=8, local_steps=10' in shared
    assert 'steps=600' not in shared
    per_device = model_card({'devices': ['dev0']}, recipe, {}, tmp_path, 1000)
    assert '* stage1: steps=600, batch_size=16, lr=0.001' in per_device
