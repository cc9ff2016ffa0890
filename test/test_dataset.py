"""Dataset writer, reader and the ``disac-dataset`` CLI: determinism, layout, errors."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import DEFAULT_SCENARIO
import numpy as np
import pytest

from disac_ros.core import rf
from disac_ros.core.dataset import DisacDataset
from disac_ros.core.dataset import generate
from disac_ros.core.dataset import sha256_file
from disac_ros.core.dataset import verify
from disac_ros.core.dataset import write_shard
from disac_ros.core.errors import DatasetError
from disac_ros.core.scenario import load_scenario
from disac_ros.core.world import World
from disac_ros.tools.dataset_cli import main

SCEN = str(DEFAULT_SCENARIO)


def _files(root: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(root.iterdir()) if p.name != 'timing.json'}


def test_shard_bytes_do_not_depend_on_when_they_are_written(tmp_path: Path) -> None:
    arrays = [('a', np.arange(12, dtype=np.int32).reshape(3, 4)),
              ('image.dev0', np.full((2, 4, 4, 3), 7, dtype=np.uint8))]
    h1 = write_shard(tmp_path / 'x.npz', arrays)
    import os
    os.utime(tmp_path / 'x.npz', (0, 0))
    h2 = write_shard(tmp_path / 'y.npz', arrays)
    assert h1 == h2 == sha256_file(tmp_path / 'y.npz')
    with np.load(tmp_path / 'x.npz') as z:
        assert z.files == ['a', 'image.dev0']
        np.testing.assert_array_equal(z['a'], arrays[0][1])


def test_cli_same_seed_gives_byte_identical_folders(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    args = ['generate', '--scenario', SCEN, '--frames', '7', '--shard-size', '3',
            '--renderer', 'none', '--no-progress']
    assert main([*args, '--seed', '5', '--out', str(tmp_path / 'a')]) == 0
    out = capsys.readouterr().out
    assert 'frames/s' in out and 'wrote 7 frames x 4 devices' in out
    assert main([*args, '--seed', '5', '--out', str(tmp_path / 'b')]) == 0
    assert main([*args, '--seed', '6', '--out', str(tmp_path / 'c')]) == 0
    a, b, c = (_files(tmp_path / n) for n in 'abc')
    assert set(a) == {'manifest.json', 'DATASET_CARD.md', 'shard_00000.npz', 'shard_00001.npz',
                      'shard_00002.npz'}
    assert a == b
    assert a['shard_00000.npz'] != c['shard_00000.npz']
    timing = json.loads((tmp_path / 'a' / 'timing.json').read_text())
    assert timing['frames'] == 7 and timing['frames_per_s'] > 0


def test_manifest_lists_shards_devices_classes_seed_and_frames(tmp_path: Path) -> None:
    assert main(['generate', '--scenario', SCEN, '--frames', '4', '--seed', '1', '--out',
                 str(tmp_path), '--renderer', 'none', '--no-progress', '--num-devices', '3',
                 '--split', 'train']) == 0
    man = json.loads((tmp_path / 'manifest.json').read_text())
    assert man['frames'] == 4 and man['seeds'] == [1] and man['split'] == 'train'
    assert [d['id'] for d in man['devices']] == ['dev0', 'dev1', 'dev2']
    assert man['classes'] == ['unknown', 'car', 'truck', 'pedestrian', 'cyclist']
    assert man['shards'][0]['file'] == 'shard_00000.npz'
    assert man['shards'][0]['sha256'] == sha256_file(tmp_path / 'shard_00000.npz')
    assert len(man['devices'][0]['camera_intrinsics']) == 3
    assert set(man['devices'][2]['extrinsics']) == {'camera_optical', 'radar'}
    assert man['scenario']['name'] == 'urban_intersection'
    card = (tmp_path / 'DATASET_CARD.md').read_text()
    assert 'disac-dataset generate' in card and '| pedestrian |' in card


def test_frame_stride_samples_later_steps_of_the_same_run(tmp_path: Path) -> None:
    """Stride 3 writes steps 0, 3, 6 of the run: the same ground truth as every step's frames."""
    scen = load_scenario(SCEN)
    generate(World(scen, renderer='none'), tmp_path / 'dense', seeds=[5], frames_per_seed=7)
    generate(World(scen, renderer='none'), tmp_path / 'sparse', seeds=[5], frames_per_seed=3,
             frame_stride=3)
    dense, sparse = DisacDataset(tmp_path / 'dense'), DisacDataset(tmp_path / 'sparse')
    for j, i in enumerate((0, 3, 6)):
        a, b = dense.labels(i), sparse.labels(j)
        assert float(b['time_s']) == pytest.approx(float(a['time_s']))
        np.testing.assert_array_equal(b['position'], a['position'])
        np.testing.assert_array_equal(b['object_id'], a['object_id'])
        np.testing.assert_array_equal(b['device_pose'], a['device_pose'])
    man = json.loads((tmp_path / 'sparse' / 'manifest.json').read_text())
    assert man['frame_stride'] == 3 and man['frames'] == 3
    assert 'one every 3 simulation step(s) of 0.1 s' in (tmp_path / 'sparse' /
                                                          'DATASET_CARD.md').read_text()
    with pytest.raises(ValueError, match='frame_stride'):
        generate(World(scen, renderer='none'), tmp_path / 'bad', seeds=[5], frames_per_seed=1,
                 frame_stride=0)


def test_reader_frames_and_device_view_reads_only_its_own_raw_data(tmp_path: Path) -> None:
    world = World(load_scenario(SCEN), renderer='none')
    generate(world, tmp_path, seeds=[2], frames_per_seed=5, shard_size=2)
    ds = DisacDataset(tmp_path)
    assert len(ds) == 5
    f = ds.frame(3)
    cfg = world.scenario.radar
    assert f['images'].shape == (4, 128, 128, 3) and f['images'].dtype == np.uint8
    assert f['rf'].shape == (4, cfg.num_rx, cfg.num_chirps, cfg.num_samples, 2)
    assert f['rf'].dtype == np.float16
    assert f['visible_camera'].shape == (10, 4) and f['position'].shape == (10, 3)
    assert f['seed'] == 2 and f['step'] == 3
    # Matches a fresh simulation of the same seed; RF is the cube divided by the noise std.
    world.reset(2)
    truth = [world.step() for _ in range(4)][3]
    np.testing.assert_allclose(f['position'], [o.position for o in truth.objects], rtol=1e-6)
    scale = ds.manifest['rf']['scale_volts']
    assert scale == pytest.approx(rf.noise_std(cfg))
    cube = truth.devices[1].rf / scale
    stored = f['rf'][1].astype(np.float64)
    np.testing.assert_allclose(stored[..., 0], cube.real, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(stored[..., 1], cube.imag, rtol=1e-3, atol=1e-3)
    view = DisacDataset(tmp_path).device_view('dev1')
    for i in range(len(view)):
        v = view.frame(i)
    assert v['image'].shape == (128, 128, 3) and v['visible_camera'].shape == (10,)
    touched = view.dataset.accessed_members
    raw = {m for m in touched if m.startswith(('image.', 'rf.'))}
    assert raw == {'image.dev1', 'rf.dev1'}
    fresh = DisacDataset(tmp_path)
    lab = fresh.labels(4)
    assert lab['visible_camera'].shape == (10, 4) and 'images' not in lab
    assert not {m for m in fresh.accessed_members if m.startswith(('image.', 'rf.'))}
    with pytest.raises(KeyError):
        ds.device_view('dev9')
    with pytest.raises(IndexError):
        ds.frame(5)


def test_verify_detects_a_modified_shard(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['generate', '--scenario', SCEN, '--frames', '2', '--seed', '0', '--out',
                 str(tmp_path), '--renderer', 'none', '--no-progress']) == 0
    assert verify(tmp_path) == []
    assert main(['verify', str(tmp_path)]) == 0
    shard = tmp_path / 'shard_00000.npz'
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify(tmp_path)
    assert len(problems) == 1 and 'sha256' in problems[0]
    assert main(['verify', str(tmp_path)]) == 1
    assert main(['info', str(tmp_path)]) == 0
    assert 'urban_intersection' in capsys.readouterr().out
    with pytest.raises(DatasetError, match='no manifest.json'):
        DisacDataset(tmp_path / 'nothing')


def test_cli_rejects_bad_input_with_a_clear_message(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'keep.txt').write_text('mine')
    base = ['--scenario', SCEN, '--frames', '2', '--seed', '0', '--renderer', 'none',
            '--no-progress']
    assert main(['generate', *base, '--out', str(tmp_path / 'full')]) == 2
    assert 'not empty' in capsys.readouterr().err
    # --overwrite replaces a previous dataset but never deletes files it did not write.
    assert main(['generate', *base, '--out', str(tmp_path / 'full'), '--overwrite']) == 0
    assert (tmp_path / 'full' / 'keep.txt').read_text() == 'mine'
    bad = tmp_path / 'bad.yaml'
    bad.write_text(DEFAULT_SCENARIO.read_text().replace('rate_hz: 10.0', 'rate_hz: -1'))
    assert main(['generate', *base[2:], '--scenario', str(bad), '--out',
                 str(tmp_path / 'x')]) == 2
    assert 'rate_hz: must be > 0' in capsys.readouterr().err
    assert main(['generate', *base, '--out', str(tmp_path / 'y'), '--num-devices', '9']) == 2
    assert 'num_devices' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(['generate', '--scenario', SCEN, '--frames', '0', '--seed', '0', '--out', 'z'])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(['generate', *base, '--out', str(tmp_path / 'w'), '--frame-stride', '0'])
    assert e.value.code == 2 and '--frame-stride' in capsys.readouterr().err
    assert main(['splits', '--scenario', SCEN, '--out', str(tmp_path / 's'),
                 '--frames-per-seed', '1', '--train-seeds', '0', '--val-seeds', '0',
                 '--renderer', 'none', '--no-progress']) == 2
    assert 'different seeds' in capsys.readouterr().err


def test_help_explains_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(['--help'])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ('generate', 'splits', 'info', 'verify', 'byte-identical'):
        assert word in text
    with pytest.raises(SystemExit):
        main(['generate', '--help'])
    text = capsys.readouterr().out
    for opt in ('--scenario', '--frames', '--seed', '--out', '--num-devices', '--shard-size',
                '--split'):
        assert opt in text


def test_splits_use_disjoint_seeds(tmp_path: Path) -> None:
    assert main(['splits', '--scenario', SCEN, '--out', str(tmp_path), '--frames-per-seed', '2',
                 '--train-seeds', '0', '1', '--val-seeds', '10', '--test-seeds', '20',
                 '--renderer', 'none', '--no-progress']) == 0
    seeds = {s: DisacDataset(tmp_path / s).manifest['seeds'] for s in ('train', 'val', 'test')}
    assert seeds == {'train': [0, 1], 'val': [10], 'test': [20]}
    assert len(DisacDataset(tmp_path / 'train')) == 4
    # One shard per seed even when the shard size would allow more.
    assert [s['seed'] for s in DisacDataset(tmp_path / 'train').manifest['shards']] == [0, 1]
    assert json.loads((tmp_path / 'splits.json').read_text())['val']['frames'] == 2


@pytest.mark.genesis
def test_rendered_dataset_is_byte_identical_for_the_same_seed(genesis_world: World,
                                                              tmp_path: Path) -> None:
    generate(genesis_world, tmp_path / 'a', seeds=[4], frames_per_seed=3, shard_size=2)
    generate(genesis_world, tmp_path / 'b', seeds=[4], frames_per_seed=3, shard_size=2)
    a, b = _files(tmp_path / 'a'), _files(tmp_path / 'b')
    assert a == b
    img = DisacDataset(tmp_path / 'a').frame(0)['images']
    assert img.std() > 10.0
