"""disac-train / disac-eval end to end on a tiny split, and their error handling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from disac_ros.core.training.recipes import quick_recipe
from conftest import make_tiny_splits
from disac_ros.tools import eval_cli, train_cli

ROW_KEYS = {'method', 'K', 'snr_db', 'fading', 'accuracy', 'position_rmse_m', 'velocity_rmse_m',
            'nmse_db', 'bytes_per_device_frame'}
METHODS = {'disac', 'llm_decoder', 'mlp_decoder', 'llm_no_channel_tokens', 'device_decoder',
           'rf_only', 'camera_only', 'single_device', 'mean_pool', 'digital_jpeg'}


@pytest.fixture(scope='module')
def splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny train/val/test split (RF and labels real, black 32x32 images: no Genesis needed)."""
    return make_tiny_splits(tmp_path_factory, frames_per_seed=8, shard_size=4)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('DISAC_CACHE_DIR', str(tmp_path_factory.getbasetemp() / 'cache'))


@pytest.fixture(scope='module')
def tiny_recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick recipe with even fewer steps (the test checks plumbing, not learning)."""
    d = quick_recipe().to_dict()
    d['name'] = 'test'
    d['threads'] = 1
    d['stage1'].update(steps=3, batch_size=4, eval_every=3, checkpoint_every=3)
    d['decoder'].update(steps=20, llm_steps=2, val_packets=8)
    d['stage2'].update(steps=3, batch_size=4, eval_every=3, checkpoint_every=3)
    d['eval'].update(snr_db=[-5.0, 20.0], max_frames=6, llm_max_frames=2)
    path = tmp_path_factory.mktemp('recipe') / 'test.yaml'
    path.write_text(yaml.safe_dump(d))
    return path


def test_train_all_then_eval_writes_the_stable_metrics_interface(
        splits: Path, tiny_recipe_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / 'model'
    assert train_cli.main(['all', '--data', str(splits / 'train'), '--val', str(splits / 'val'),
                           '--out', str(model), '--recipe', str(tiny_recipe_file),
                           '--no-progress']) == 0
    assert 'time summary' in capsys.readouterr().out
    info = json.loads((model / 'model.json').read_text())
    assert info['shipped_decoder'] == 'device'      # the quick recipe names it
    assert set(info['decoder_val_nmse_db']) == {'mlp', 'llm', 'llm_no_channel_tokens', 'device'}
    assert set(info['variants']) == {'both', 'rf', 'camera'}
    for dev in ('dev0', 'dev1', 'dev2', 'dev3'):
        assert (model / 'stage1/both' / dev / 'export_train.npz').is_file()
    assert (model / 'stage2/both_tram/checkpoint/config.json').is_file()
    assert (model / 'stage2/both_mean_pool/checkpoint/config.json').is_file()
    assert (model / 'stage2/both_tram_mlp/checkpoint/config.json').is_file()
    for mod in ('rf', 'camera'):          # the unimodal baselines decode like the system
        meta = json.loads((model / f'stage2/{mod}_tram/checkpoint/metadata.json').read_text())
        assert meta['decoder'] == 'device'
    # `all --val` ends by calibrating every aggregator on the validation split.
    calibrated = {}
    for name in ('both_tram', 'both_mean_pool', 'both_tram_mlp', 'rf_tram', 'camera_tram'):
        cal = json.loads((model / 'stage2' / name / 'calibration.json').read_text())
        assert len(cal['class_weights']) == len(cal['class_thresholds']) == 4, name
        assert cal['accuracy_after'] >= cal['accuracy_before'] and cal['seeds'], name
        assert cal['precision_after'] >= cal['precision_before'], name
        assert sorted(cal['by_devices']) == ['1', '2', '3'], name     # fewer devices: own fits
        assert all(len(v['class_thresholds']) == 4 for v in cal['by_devices'].values()), name
        calibrated[name] = cal
    info = json.loads((model / 'model.json').read_text())
    assert set(info['calibration']) == set(calibrated)
    assert info['calibration']['both_tram']['class_thresholds'] == calibrated['both_tram']['class_thresholds']

    out = tmp_path / 'eval'
    assert eval_cli.main(['--checkpoint', str(model), '--data', str(splits / 'test'),
                          '--out', str(out), '--no-progress']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    rows = metrics['rows']
    assert rows and all(ROW_KEYS <= set(r) for r in rows)
    assert {r['method'] for r in rows} == METHODS
    assert {r['fading'] for r in rows} == {'awgn', 'rayleigh'}
    assert {r['K'] for r in rows} == {1, 4}
    ours = [r for r in rows if r['method'] == 'disac']
    assert {r['bytes_per_device_frame'] for r in ours} == {32.0}   # 16 symbols x 2 x 8 bit
    assert all(r['class_weights'] == calibrated['both_tram']['class_weights'] and
               r['class_thresholds'] == calibrated['both_tram']['class_thresholds'] for r in ours)
    assert all(r['class_weights'] == calibrated['rf_tram']['class_weights']
               for r in rows if r['method'] == 'rf_only')
    trained_on = {r['method']: r['aggregator_trained_on'] for r in rows}
    assert trained_on['disac'] == trained_on['device_decoder'] == 'device'
    assert trained_on['mlp_decoder'] == 'mlp'          # its own TRAM, not the shipped one
    assert trained_on['llm_decoder'] == 'device'       # none of its own: the shipped TRAM
    digital = [r for r in rows if r['method'] == 'digital_jpeg' and r['sweep'] == 'snr']
    assert all(r['bytes_per_device_frame'] > 1000 for r in digital)
    low = [r['delivered_fraction'] for r in digital if r['snr_db'] == -5.0]
    assert low and max(low) == 0.0          # the cliff: nothing gets through at -5 dB
    assert 'relative_accuracy_gain_pct' in metrics['comparisons']['formulas']
    report = (out / 'metrics.md').read_text()
    assert report.startswith('# DiSAC evaluation')
    assert '## Decoder comparison' in report and '| device_decoder | device | device |' in report
    assert '## Per class (K = 4, rayleigh, 10.0 dB)' in report      # accuracy per class + confusion
    ref = next(r for r in ours if r['K'] == 4 and r['fading'] == 'rayleigh'
               and r['snr_db'] == 10.0)
    assert sum(map(sum, ref['confusion'])) == ref['num_gt']    # every object: a class or a miss
    assert {p.name for p in out.glob('*.png')} >= {'vs_snr_awgn.png', 'vs_snr_rayleigh.png',
                                                   'vs_devices.png', 'vs_distance.png'}

    # benchmarks/accuracy_over_run.py on the same model: every object lands in one time bin.
    import re
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
    import accuracy_over_run
    capsys.readouterr()
    assert accuracy_over_run.main(['--data', str(splits / 'test'), '--models', str(model),
                                   '--bins', '0', '0.4', '10', '--methods', 'disac']) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith('| disac |'))
    counts = [int(n) for n in re.findall(r'\[(\d+)\]', line)]
    assert len(counts) == 3 and counts[0] + counts[1] == counts[2] > 0

    # A corrupt calibration file: a clear error naming it, and deleting it runs uncalibrated.
    cal_file = model / 'stage2/both_tram/calibration.json'
    cal_file.write_text('{"class_weights": [1, -2, 1, 1]}')
    capsys.readouterr()
    assert eval_cli.main(['--checkpoint', str(model), '--data', str(splits / 'test'),
                          '--out', str(tmp_path / 'eval_bad'), '--no-progress']) == 1
    err = capsys.readouterr().err
    assert 'calibration.json' in err and 'disac-train calibrate' in err
    assert train_cli.main(['calibrate', '--out', str(model), '--val', str(splits / 'val')]) == 0
    assert json.loads(cal_file.read_text())['class_weights'] == calibrated['both_tram']['class_weights']

    # Resume: everything is already trained, so a resumed stage-2 run does no new steps.
    assert train_cli.main(['stage2', '--data', str(splits / 'train'), '--out', str(model),
                           '--resume', '--no-progress']) == 0
    rows2 = (model / 'stage2/both_tram/train_log.csv').read_text().splitlines()
    assert len(rows2) == 1 + 3

    # The receiver-side round: rewrite a device's exports, refit the per-device decoders, then
    # fine-tune TRAM with a fresh optimizer (as on a copy of an exported model).
    assert train_cli.main(['stage1', '--device', 'dev1', '--data', str(splits / 'train'),
                           '--val', str(splits / 'val'), '--out', str(model),
                           '--export-only']) == 0
    assert 'exported' in capsys.readouterr().out
    assert train_cli.main(['decoder', '--kind', 'device', '--refit-steps', '4', '--out',
                           str(model), '--no-progress']) == 0
    assert 'refit 4 steps per device' in capsys.readouterr().out
    info = json.loads((model / 'model.json').read_text())
    assert info['decoders']['both/device']['refit_steps'] == 4
    assert train_cli.main(['stage2', '--data', str(splits / 'train'), '--out', str(model),
                           '--resume', '--fresh-optimizer', '--steps', '5',
                           '--no-progress']) == 0
    info = json.loads((model / 'model.json').read_text())
    assert info['stage2']['both_tram']['resumed_from'] == 3
    assert info['stage2']['both_tram']['fresh_optimizer'] is True


def test_train_cli_rejects_bad_input_with_clear_messages(
        splits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_cli.main(['stage1', '--device', 'dev0', '--data', str(tmp_path / 'nope'),
                           '--out', str(tmp_path / 'm')]) == 2
    assert 'not a dataset folder' in capsys.readouterr().err
    assert train_cli.main(['stage1', '--device', 'dev9', '--data', str(splits / 'train'),
                           '--out', str(tmp_path / 'm'), '--quick']) == 2
    assert "unknown device 'dev9'" in capsys.readouterr().err
    bad = tmp_path / 'bad.yaml'
    bad.write_text('stage2: {device_dropout: 1.5}\n')
    assert train_cli.main(['decoder', '--out', str(tmp_path / 'm'), '--recipe', str(bad)]) == 2
    assert 'stage2.device_dropout' in capsys.readouterr().err
    assert train_cli.main(['decoder', '--out', str(tmp_path / 'empty'), '--quick']) == 2
    assert 'run `disac-train stage1` first' in capsys.readouterr().err
    assert train_cli.main(['decoder', '--out', str(tmp_path / 'm'), '--quick',
                           '--batch-size', '0']) == 2
    assert '--batch-size: must be >= 1' in capsys.readouterr().err
    assert train_cli.main(['decoder', '--out', str(tmp_path / 'm'), '--quick',
                           '--torch-device', 'tpu']) == 2
    assert 'torch_device' in capsys.readouterr().err
    assert train_cli.main(['stage2', '--data', str(splits / 'train'), '--out',
                           str(tmp_path / 'm'), '--quick', '--torch-device', 'tpu']) == 2
    assert 'torch_device' in capsys.readouterr().err
    assert train_cli.main(['decoder', '--kind', 'mlp', '--out', str(tmp_path / 'm'), '--quick',
                           '--refit-steps', '10']) == 2
    assert "--refit-steps: only for --kind device, not 'mlp'" in capsys.readouterr().err
    assert train_cli.main(['decoder', '--kind', 'device', '--out', str(tmp_path / 'm'),
                           '--quick', '--refit-steps', '-1']) == 2
    assert '--refit-steps: must be >= 0' in capsys.readouterr().err
    assert train_cli.main(['stage2', '--data', str(splits / 'train'), '--out',
                           str(tmp_path / 'm'), '--quick', '--fresh-optimizer']) == 2
    assert '--fresh-optimizer: only with --resume' in capsys.readouterr().err
    not_a_model = tmp_path / 'not_a_model'
    not_a_model.mkdir()
    assert train_cli.main(['calibrate', '--out', str(not_a_model), '--val', str(splits / 'val')]) == 2
    assert 'is not a model folder' in capsys.readouterr().err
    assert not list(not_a_model.iterdir())                 # nothing written into it
    assert train_cli.main(['calibrate', '--out', str(tmp_path / 'm'), '--val', str(tmp_path)]) == 2
    assert 'not a dataset folder' in capsys.readouterr().err


def test_eval_cli_rejects_a_folder_that_is_not_a_model(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_cli.main(['--checkpoint', str(tmp_path), '--out', str(tmp_path / 'o'),
                          '--data', str(tmp_path)]) == 2
    assert 'not a disac-train model folder' in capsys.readouterr().err


def _update(args: tuple[str, int]) -> None:
    folder, i = args
    for k in range(20):
        train_cli.update_model_json(Path(folder), stage1={f'both/dev{i}_{k}': {'steps': k}})


def test_jobs_running_at_once_keep_every_model_json_entry(tmp_path: Path) -> None:
    """Stage-1 jobs of several devices finish at once on one folder: no entry may be lost and
    no reader may see a half-written file (the bug: a decoder job read an empty recipe.json)."""
    import multiprocessing as mp
    with mp.get_context('fork').Pool(4) as pool:
        pool.map(_update, [(str(tmp_path), i) for i in range(4)])
    data = json.loads((tmp_path / 'model.json').read_text())
    assert len(data['stage1']) == 4 * 20
    assert not list(tmp_path.glob('*.tmp'))


def test_threads_run_a_job_without_being_stored_in_the_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A stored --threads 1 once left disac-eval of the shipped model on one core.
    out = tmp_path / 'm'
    args = train_cli.build_parser().parse_args(['decoder', '--out', str(out), '--quick',
                                                '--threads', '1'])
    assert train_cli.resolve_recipe(args).threads == 1
    stored = json.loads((out / 'recipe.json').read_text())['threads']
    assert stored == quick_recipe().threads != 1
    args = train_cli.build_parser().parse_args(['decoder', '--out', str(out)])
    assert train_cli.resolve_recipe(args).threads == stored
    assert eval_cli.main(['--checkpoint', str(out), '--out', str(tmp_path / 'o'),
                          '--threads', '0']) == 2
    assert '--threads: must be >= 1, got 0' in capsys.readouterr().err
    assert train_cli.main(['decoder', '--out', str(out), '--threads', '0']) == 2
    assert 'threads: must be >= 1' in capsys.readouterr().err
