"""Device-agnostic models: federated stage 1 (Flower), one shared decoder, relative-geometry
TRAM trained on many scenes, unknown ids and any K at run time, site adaptation."""
from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from disac_ros.core.dataset import DisacDataset
from disac_ros.core.training import federated, generalist
from disac_ros.core.training.data import DeviceFrames
from disac_ros.core.training.recipes import load_recipe

FAMILY = Path(__file__).resolve().parents[1] / 'config' / 'families' / 'urban.yaml'


def tiny_family(tmp: Path) -> Path:
    """The urban family with 32x32 cameras (cheap CNNs; images are black with renderer none)."""
    spec = yaml.safe_load(FAMILY.read_text())
    spec['camera'].update(width=32, height=32)
    path = tmp / 'tiny_family.yaml'
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope='module')
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train (3 scenes), val (1 scene) family folders of tiny procedurally generated scenes."""
    from disac_ros.core.family_dataset import generate_family_dataset
    root = tmp_path_factory.mktemp('family')
    fam = tiny_family(root)
    out = {}
    for split, seeds in (('train', [1, 2, 3]), ('val', [101])):
        generate_family_dataset(fam, root / split, seeds, frames_per_seed=6, frame_stride=4,
                                renderer='none', split=split)
        out[split] = root / split
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('DISAC_CACHE_DIR', str(tmp_path_factory.getbasetemp() / 'cache'))


def quick(rounds: int = 4, stage2_steps: int = 8):
    r = replace(load_recipe('quick_generalist'), threads=1)
    return replace(r, stage1=replace(r.stage1, rounds=rounds, eval_every=2, checkpoint_every=2),
                   stage2=replace(r.stage2, steps=stage2_steps, eval_every=4,
                                  checkpoint_every=4))


class SpyDataset(DisacDataset):
    """A dataset whose raw sensor members of any other device raise on access."""

    def __init__(self, root: Path, allowed: str) -> None:
        super().__init__(root)
        self.allowed = allowed

    def _member(self, shard: int, key: str) -> np.ndarray:
        kind, _, dev = key.partition('.')
        if kind in ('image', 'rf') and dev != self.allowed:
            raise AssertionError(f'raw data of {dev} was read by {self.allowed}: {key}')
        return super()._member(shard, key)


def test_a_federated_client_holds_and_reads_only_its_own_devices_data(scenes):
    from disac_ros.core.family_dataset import load_scenes
    sc = load_scenes(scenes['train'])[0]
    recipe = quick()
    models = federated.DeviceClient('x', DeviceFrames(sc.dataset.device_view(
        sc.dataset.device_ids[0])), recipe)._models()
    weights = federated.model_state(models)
    results = []
    for dev in sc.dataset.device_ids:
        spy = SpyDataset(sc.dataset.root, dev)
        client = federated.DeviceClient(f'{sc.name}/{dev}', DeviceFrames(spy.device_view(dev)),
                                        recipe)
        new, n, metrics = client.fit(weights, {'round': 0, 'local_steps': 2, 'lr': 1e-3})
        assert {m for m in spy.accessed_members if m.startswith(('image.', 'rf.'))} \
            == {f'image.{dev}', f'rf.{dev}'}
        # What leaves the device: weights, a frame count and scalar losses.
        assert all(isinstance(w, np.ndarray) for w in new) and n == len(spy.device_view(dev))
        assert all(isinstance(v, float) for v in metrics.values())
        results.append((new, n))
    # Flower's FedAvg averages them weighted by frames.
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg
    fit = [(None, FitRes(Status(Code.OK, ''), ndarrays_to_parameters(w), n, {}))
           for w, n in results]
    avg, _ = FedAvg().aggregate_fit(1, fit, [])
    got = parameters_to_ndarrays(avg)
    total = sum(n for _, n in results)
    expect = sum(w[0] * n for w, n in results) / total
    assert np.allclose(got[0], expect, atol=1e-6)


def test_federated_rounds_resume_exactly(scenes, tmp_path):
    from disac_ros.core.family_dataset import load_scenes
    train = load_scenes(scenes['train'])[:2]
    recipe = quick()
    frames = generalist.device_frames(train)
    clients = [federated.DeviceClient(f'{s}/{d}', fr, recipe) for s, d, fr in frames]
    straight = federated.train_federated(clients, tmp_path / 'a', recipe, 4, show_progress=False)
    federated.train_federated(clients, tmp_path / 'b', recipe, 2, show_progress=False)
    resumed = federated.train_federated(clients, tmp_path / 'b', recipe, 4, resume=True,
                                        show_progress=False)
    assert resumed['resumed_from'] == 2
    for a, b in zip(federated.model_state(straight['models']),
                    federated.model_state(resumed['models'])):
        assert np.array_equal(a, b)
    log = [json.loads(x) for x in (tmp_path / 'b' / 'train_log.jsonl').read_text().splitlines()]
    assert [r['round'] for r in log] == [1, 2, 3, 4]


@pytest.fixture(scope='module')
def model(scenes, tmp_path_factory) -> Path:
    """A device-agnostic model from `disac-train all --recipe quick_generalist`."""
    from disac_ros.tools import train_cli
    out = tmp_path_factory.mktemp('model')
    assert train_cli.main(['all', '--recipe', 'quick_generalist', '--data', str(scenes['train']),
                           '--val', str(scenes['val']), '--out', str(out), '--threads', '1',
                           '--no-progress']) == 0
    return out


def test_train_all_writes_a_device_agnostic_model_folder(model):
    info = json.loads((model / 'model.json').read_text())
    assert info['device_agnostic'] is True and info['devices'] == ['shared']
    assert info['shipped_decoder'] == 'mlp'
    assert (model / 'stage1/both/shared/checkpoint/config.json').is_file()
    assert (model / 'decoders/both/mlp/checkpoint/config.json').is_file()
    assert (model / 'stage2/both_tram/calibration.json').is_file()
    cfg = json.loads((model / 'stage2/both_tram/checkpoint/config.json').read_text())
    assert 'relative' in json.dumps(cfg)
    exports = sorted(p.relative_to(model / 'stage1/both/shared/exports')
                     for p in (model / 'stage1/both/shared/exports').rglob('*.npz'))
    assert exports and all(str(p).startswith(('train/scene_', 'val/scene_')) for p in exports)


def test_unknown_ids_and_more_devices_than_any_training_scene(model):
    from disac_ros.core.inference import AggregatorPipeline, DevicePipeline, ReceivedPacket
    dev = DevicePipeline(model, 'a_vehicle_never_seen')
    img = np.zeros((32, 32, 3), np.uint8)
    cube = np.full((4, 16, 64), 1e-3 + 0j, np.complex64)
    sym = dev.run([img], [cube]).symbols[0]
    agg = AggregatorPipeline(model)
    group = [ReceivedPacket(f'unit_{i}', sym, 10.0, 80.0, (3.0 * i, -2.0 * i, 0.3 * i))
             for i in range(9)]
    res = agg.run([group, group[:1]])
    assert res[0].device_ids == sorted(p.device_id for p in group)
    assert len(res[0].weights) == 9 and abs(sum(res[0].weights) - 1.0) < 1e-4
    assert len(res[1].device_ids) == 1


def test_evaluate_scenes_pools_scenes_and_sweeps_k(model, scenes):
    from disac_ros.core.evaluation.scenes import evaluate_scenes
    from disac_ros.core.family_dataset import load_scenes
    sc = load_scenes(scenes['val'])
    res = evaluate_scenes(model, sc, snr_db=(10.0,), log=lambda _m: None)
    k = len(sc[0].dataset.device_ids)
    pooled = res['pooled']['disac']
    assert 'all@10dB' in pooled and set(res['k_sweep']['disac']) == set(range(1, k + 1))
    assert pooled['all@10dB']['num_gt'] == res['scenes'][0]['disac']['all@10dB']['num_gt']


def test_the_model_records_its_sensors_and_scenes_with_other_sensors_are_resampled(model, tmp_path):
    from disac_ros.core.evaluation.scenes import evaluate_scenes
    from disac_ros.core.family_dataset import generate_family_dataset, load_scenes
    from disac_ros.core.sensor_adapt import sensors_of_model
    spec = sensors_of_model(model)                     # from model.json: the training family's
    assert (spec.camera.width, spec.camera.height, spec.radar.num_chirps) == (32, 32, 32)
    fam = yaml.safe_load(tiny_family(tmp_path).read_text())
    fam['sensor_choices'] = [{'camera': {'width': 48, 'height': 36, 'fov_deg': 50.0},
                              'radar': {'num_chirps': 16}}]
    (tmp_path / 'other.yaml').write_text(yaml.safe_dump(fam))
    generate_family_dataset(tmp_path / 'other.yaml', tmp_path / 'other', [7], frames_per_seed=2,
                            frame_stride=4, renderer='none', split='test')
    sc = load_scenes(tmp_path / 'other')
    view = sc[0].dataset.device_view(sc[0].dataset.device_ids[0])
    own, resampled = DeviceFrames(view), DeviceFrames(view, sensors=spec)
    assert tuple(own.images.shape[1:]) == (36, 48, 3) and own.rf.shape[2] == 16
    assert tuple(resampled.images.shape[1:]) == (32, 32, 3) and tuple(resampled.rf.shape[2:]) == (32, 128)
    res = evaluate_scenes(model, sc, snr_db=(10.0,), max_subsets=1, log=lambda _m: None)
    assert res['pooled']['disac']['all@10dB']['num_gt'] > 0


def test_site_adaptation_improves_a_toy_site(model, tmp_path):
    """`disac-train adapt` on a site: simulated, scored before, fine-tuned, scored after."""
    from disac_ros.core.family_dataset import dump_scenario_yaml
    from disac_ros.core.scene_family import load_family
    from disac_ros.tools import train_cli
    site = tmp_path / 'site.yaml'
    site.write_text(dump_scenario_yaml(load_family(tiny_family(tmp_path)).scenario_dict(
        777, 'four_way')))
    out = tmp_path / 'adapted'
    assert train_cli.main(['adapt', '--scenario', str(site), '--from', str(model), '--out',
                           str(out), '--train-seeds', '1', '2', '3', '--val-seeds', '4',
                           '--test-seeds', '5', '--frames-per-seed', '8', '--frame-stride', '4',
                           '--rounds', '12', '--stage2-steps', '60', '--renderer', 'none',
                           '--threads', '1', '--no-progress']) == 0
    rep = json.loads((out / 'adapt.json').read_text())
    before, after = rep['before']['all@10dB'], rep['after']['all@10dB']
    assert after['num_gt'] == before['num_gt'] > 0
    assert after['accuracy'] > before['accuracy'], (before, after)
    assert json.loads((out / 'model.json').read_text())['adapted']['scenario'] == str(site)
    # The source model is untouched and adapting into the same folder again is refused.
    assert 'adapted' not in json.loads((model / 'model.json').read_text())
    assert train_cli.main(['adapt', '--scenario', str(site), '--from', str(model), '--out',
                           str(out), '--renderer', 'none', '--no-progress']) == 2


def test_disac_eval_scores_sets_of_scenes_side_by_side(model, scenes, tmp_path):
    from disac_ros.tools import eval_cli
    out = tmp_path / 'res'
    assert eval_cli.main(['--checkpoint', str(model), '--out', str(out), '--scenes',
                          f'unseen={scenes["val"]}', f'seen={scenes["train"]}', '--snr', '10',
                          '--max-frames', '4', '--threads', '1']) == 0
    res = json.loads((out / 'scenes.json').read_text())
    assert set(res) == {'unseen', 'seen'} and res['seen']['num_scenes'] == 3
    table = (out / 'scenes.md').read_text()
    assert '| | unseen | seen |' in table and 'accuracy, K = 1 (subsets)' in table
    ref = res['unseen']['pooled']['disac']['all@10dB']     # every object: a class or a miss
    assert sum(map(sum, ref['confusion'])) == ref['num_gt']
    assert 'cyclist missed / wrong class (10 dB)' in table
    assert eval_cli.main(['--checkpoint', str(model), '--out', str(out), '--scenes',
                          'nothing']) == 2


def test_unimodal_baselines_train_the_same_way_and_are_compared_side_by_side(scenes, tmp_path):
    """`baselines: [rf_only, camera_only]` in a device-agnostic recipe: each modality gets its
    own shared network, decoder, TRAM and calibration in the same folder; `disac-eval --scenes
    --methods rf_only camera_only` scores them beside the fusion on the same objects."""
    from disac_ros.tools import eval_cli, train_cli
    base = quick(rounds=2, stage2_steps=4)
    # With the camera's auxiliary loss of the shipped recipes, which the RF-only network skips.
    recipe = replace(base, baselines=('rf_only', 'camera_only'),
                     rvfn=replace(base.rvfn, camera_class_head=True),
                     stage1=replace(base.stage1, camera_aux_weight=1.0))
    path = tmp_path / 'baselines.yaml'
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    out = tmp_path / 'model'
    assert train_cli.main(['all', '--recipe', str(path), '--data', str(scenes['train']),
                           '--val', str(scenes['val']), '--out', str(out), '--threads', '1',
                           '--no-progress']) == 0
    info = json.loads((out / 'model.json').read_text())
    assert info['variants'] == ['both', 'rf', 'camera']
    assert set(info['calibration']) == {'both_tram', 'rf_tram', 'camera_tram'}
    for mod in ('rf', 'camera'):
        assert (out / f'stage1/{mod}/shared/checkpoint/config.json').is_file()
        assert (out / f'decoders/{mod}/mlp/checkpoint/config.json').is_file()
        assert (out / f'stage2/{mod}_tram/calibration.json').is_file()
        meta = json.loads((out / f'stage1/{mod}/shared/checkpoint/metadata.json').read_text())
        assert meta['modalities'] == mod
    res_dir = tmp_path / 'res'
    assert eval_cli.main(['--checkpoint', str(out), '--out', str(res_dir), '--scenes',
                          f'unseen={scenes["val"]}', '--snr', '10', '--max-frames', '4',
                          '--threads', '1', '--methods', 'rf_only', 'camera_only']) == 0
    res = json.loads((res_dir / 'scenes.json').read_text())['unseen']['pooled']
    assert {'disac', 'rf_only', 'camera_only'} <= set(res)
    # The same ground truth for every method: the objects any present device senses.
    assert len({res[m]['all@10dB']['num_gt'] for m in ('disac', 'rf_only', 'camera_only')}) == 1
    table = (res_dir / 'scenes.md').read_text()
    assert '## Methods' in table and '| rf_only | accuracy, 10dB |' in table
    assert '| camera_only | position RMSE (m), 10dB |' in table


def test_llm_decoders_train_on_a_device_agnostic_models_exports_and_are_scored(model, scenes,
                                                                               tmp_path):
    """`disac-train decoder --kind llm` on a device-agnostic folder trains one receiver decoder
    on every scene's device exports; `disac-eval --scenes --methods llm_decoder` runs it into
    the shipped TRAM beside the shipped decoder."""
    import shutil
    from disac_ros.tools import eval_cli, train_cli
    folder = tmp_path / 'model'
    shutil.copytree(model, folder)
    for kind in ('llm', 'llm_no_channel_tokens'):
        assert train_cli.main(['decoder', '--out', str(folder), '--kind', kind, '--steps', '3',
                               '--threads', '1', '--no-progress']) == 0
        summary = json.loads((folder / f'decoders/both/{kind}/summary.json').read_text())
        assert summary['steps_done'] == 3
    meta = json.loads((folder / 'decoders/both/llm/checkpoint/metadata.json').read_text())
    n_exports = len(list((folder / 'stage1/both/shared/exports/train').glob('*/*.npz')))
    assert len(meta['devices']) == n_exports > 1          # every device of every scene
    assert json.loads((folder / 'model.json').read_text())['shipped_decoder'] == 'mlp'
    res_dir = tmp_path / 'res'
    assert eval_cli.main(['--checkpoint', str(folder), '--out', str(res_dir), '--scenes',
                          f'unseen={scenes["val"]}', '--snr', '10', '--max-frames', '2',
                          '--threads', '1', '--methods', 'llm_decoder',
                          'llm_no_channel_tokens']) == 0
    pooled = json.loads((res_dir / 'scenes.json').read_text())['unseen']['pooled']
    assert pooled['llm_decoder']['all@10dB']['num_gt'] == pooled['disac']['all@10dB']['num_gt']
    assert 'llm_no_channel_tokens' in pooled
