"""Two-stage training: learning, data isolation between devices, resume, corrupt checkpoints."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from disac_ros.core.dataset import DisacDataset
from disac_ros.core.errors import ConfigError
from disac_ros.core.models.checkpoint import CheckpointError
from disac_ros.core.training import common
from disac_ros.core.training.data import AggregatorLabels, DeviceFrames, rotate_to_frame
from disac_ros.core.training.decoder import choose_shipped, train_decoder
from disac_ros.core.training.recipes import load_recipe, quick_recipe, Recipe
from disac_ros.core.training.stage1 import stage1_dir, train_stage1
from disac_ros.core.training.stage2 import train_stage2
from conftest import make_tiny_splits



@pytest.fixture(scope='module')
def splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny train/val/test split (RF and labels real, black 32x32 images: no Genesis needed)."""
    return make_tiny_splits(tmp_path_factory, frames_per_seed=12, shard_size=6)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tiny LLM is written into the disac cache: keep it out of the user's home.
    monkeypatch.setenv('DISAC_CACHE_DIR', str(tmp_path_factory.getbasetemp() / 'cache'))


def tiny_recipe(**stage1: object) -> Recipe:
    r = replace(quick_recipe(), threads=1)
    return replace(r, stage1=replace(r.stage1, steps=6, batch_size=4, eval_every=3,
                                     checkpoint_every=2, **stage1),
                   decoder=replace(r.decoder, steps=40, llm_steps=3, val_packets=16),
                   stage2=replace(r.stage2, steps=6, batch_size=4, eval_every=3,
                                  checkpoint_every=3))


class SpyDataset(DisacDataset):
    """A dataset whose raw sensor members of forbidden devices raise on access."""

    def __init__(self, root: Path, allowed_devices: set[str]) -> None:
        super().__init__(root)
        self.allowed = allowed_devices

    def _member(self, shard: int, key: str) -> np.ndarray:
        kind, _, dev = key.partition('.')
        if kind in ('image', 'rf') and dev not in self.allowed:
            raise AssertionError(f'raw data of {dev} was read: {key}')
        return super()._member(shard, key)


def test_quick_yaml_equals_the_builtin_quick_recipe() -> None:
    assert load_recipe('quick').to_dict() == quick_recipe().to_dict()
    assert Recipe.from_dict(load_recipe('default').to_dict()) == load_recipe('default')


def test_recipe_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / 'r.yaml'
    bad.write_text(yaml.safe_dump({'stage1': {'stepz': 3}}))
    with pytest.raises(ConfigError, match=r'stage1\.stepz'):
        load_recipe(bad)
    with pytest.raises(ConfigError, match=r'rvfn\.dim'):
        Recipe.from_dict({'rvfn': {'dim': 'wide'}})
    with pytest.raises(ConfigError, match=r'encoder\.feature_dim'):
        Recipe.from_dict({'encoder': {'feature_dim': 7}})
    with pytest.raises(ConfigError, match=r"decoder\.shipped: must be 'nmse' or one of kinds"):
        Recipe.from_dict({'decoder': {'kinds': ['mlp'], 'shipped': 'device'}})
    with pytest.raises(ConfigError, match=r'stage2\.decoder_aggregators'):
        Recipe.from_dict({'stage2': {'decoder_aggregators': ['gpt']}})
    shipped = load_recipe(Path(__file__).resolve().parents[1]
                          / 'config/train_generalist_context_pruned.yaml').to_dict()
    shipped['stage2']['pruned_min_cells'] = 128         # = the cells of the 8 x 16 grid
    with pytest.raises(ConfigError, match=r'stage2\.pruned_min_cells: must be below the 128 cells'):
        Recipe.from_dict(shipped)
    shipped['stage2']['pruned_step_fraction'] = 0.0     # no pruned steps: the value is unused
    Recipe.from_dict(shipped)


def test_world_objects_are_expressed_in_the_device_frame() -> None:
    pose = np.array([10.0, 5.0, 0.0, np.pi / 2])          # at (10, 5), facing north
    ahead_left = rotate_to_frame(np.array([[8.0, 9.0]]), pose)
    np.testing.assert_allclose(ahead_left, [[4.0, 2.0]], atol=1e-9)   # 4 m ahead, 2 m left
    vel = rotate_to_frame(np.array([[0.0, 3.0]]), pose, translate=False)
    np.testing.assert_allclose(vel, [[3.0, 0.0]], atol=1e-9)


def test_stage1_loss_decreases_on_real_device_data(splits: Path, tmp_path: Path) -> None:
    r = tiny_recipe()
    r = replace(r, stage1=replace(r.stage1, steps=30, batch_size=6))
    s = train_stage1(DisacDataset(splits / 'train'), 'dev2', tmp_path, r, show_progress=False)
    rows = [float(line.split(',')[1]) for line in
            (tmp_path / 'stage1/both/dev2/train_log.csv').read_text().splitlines()[1:]]
    assert len(rows) == 30
    assert np.mean(rows[-5:]) < 0.7 * np.mean(rows[:5]), rows
    assert s['loss_last'] < s['loss_first']


def test_stage1_for_one_device_never_reads_another_devices_raw_data(splits: Path,
                                                                    tmp_path: Path) -> None:
    spy = SpyDataset(splits / 'train', {'dev0'})
    val = SpyDataset(splits / 'val', {'dev0'})
    train_stage1(spy, 'dev0', tmp_path, tiny_recipe(), val=val, show_progress=False)
    raw = {m for m in spy.accessed_members | val.accessed_members
           if m.startswith(('image.', 'rf.'))}
    assert raw == {'image.dev0', 'rf.dev0'}
    export = np.load(stage1_dir(tmp_path, 'both', 'dev0') / 'export_train.npz')
    n = len(spy)
    assert export['symbols'].shape == (n, quick_recipe().encoder.num_symbols, 2)
    assert set(export.files) == {'device_id', 'symbols', 'feature', 'frame', 'time_s', 'pose'}


def test_stage2_and_decoder_train_on_exports_without_any_raw_sensor_data(
        splits: Path, tmp_path: Path) -> None:
    r = tiny_recipe()
    devices = DisacDataset(splits / 'train').device_ids
    for dev in devices:   # each device alone, on its own view
        train_stage1(SpyDataset(splits / 'train', {dev}), dev, tmp_path, r,
                     val=SpyDataset(splits / 'val', {dev}), show_progress=False)
    d = train_decoder(tmp_path, r, 'mlp', show_progress=False)
    assert d['steps_done'] == r.decoder.steps
    # Aggregator side: any image/rf access raises.
    train = SpyDataset(splits / 'train', set())
    val = SpyDataset(splits / 'val', set())
    s = train_stage2(train, tmp_path, r, val=val, show_progress=False)
    assert s['steps'] == r.stage2.steps
    assert not {m for m in train.accessed_members | val.accessed_members
                if m.startswith(('image.', 'rf.'))}
    assert {'accuracy', 'recall', 'position_rmse_m'} <= set(s['metrics'])
    # The per-device decoders come from the devices' stage-1 checkpoints (weights, no data),
    # and an aggregator for a second decoder kind trains into its own folder.
    dd = train_decoder(tmp_path, r, 'device', show_progress=False, devices=devices)
    assert dd['devices'] == devices and dd['steps_done'] == 0
    assert np.isfinite(dd['val_nmse_db']['mean'])
    s = train_stage2(train, tmp_path, r, decoder_kind='device', val=val, show_progress=False,
                     own_folder=True)
    assert s['decoder'] == 'device' and (tmp_path / 'stage2/both_tram_device/checkpoint').is_dir()
    assert not {m for m in train.accessed_members | val.accessed_members
                if m.startswith(('image.', 'rf.'))}
    assert choose_shipped(tmp_path, rule='device')[0] == 'device'
    assert choose_shipped(tmp_path, rule='llm')[0] in ('mlp', 'device')   # not trained: NMSE


def test_decoder_learns_over_the_channel_mlp_and_tiny_llm(splits: Path, tmp_path: Path) -> None:
    r = tiny_recipe()
    train_stage1(DisacDataset(splits / 'train'), 'dev1', tmp_path, r, show_progress=False)
    mlp = train_decoder(tmp_path, r, 'mlp', steps=150, show_progress=False)
    log = [float(x.split(',')[1]) for x in
           (tmp_path / 'decoders/both/mlp/train_log.csv').read_text().splitlines()[1:]]
    assert np.mean(log[-10:]) < 0.5 * np.mean(log[:10])
    assert mlp['val_nmse_db']['awgn_20dB'] < mlp['val_nmse_db']['rayleigh_-5dB']
    llm = train_decoder(tmp_path, r, 'llm', steps=3, show_progress=False)
    assert llm['steps_done'] == 3 and np.isfinite(llm['val_nmse_db']['mean'])


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(
        splits: Path, tmp_path: Path) -> None:
    ds = DisacDataset(splits / 'train')
    r = tiny_recipe()
    train_stage1(ds, 'dev3', tmp_path / 'a', r, steps=4, show_progress=False)
    resumed = train_stage1(ds, 'dev3', tmp_path / 'a', r, steps=6, resume=True,
                           show_progress=False)
    assert resumed['resumed_from'] == 4
    steps = [int(x.split(',')[0]) for x in
             (stage1_dir(tmp_path / 'a', 'both', 'dev3') / 'train_log.csv')
             .read_text().splitlines()[1:]]
    assert steps == list(range(6))
    train_stage1(ds, 'dev3', tmp_path / 'b', r, steps=6, show_progress=False)
    from disac_ros.core.models.checkpoint import load_checkpoint
    a = load_checkpoint(stage1_dir(tmp_path / 'a', 'both', 'dev3') / 'checkpoint')
    b = load_checkpoint(stage1_dir(tmp_path / 'b', 'both', 'dev3') / 'checkpoint')
    assert a.metadata['step'] == b.metadata['step'] == 6
    for name in a.models:
        for (k, va), vb in zip(a.models[name].state_dict().items(),
                               b.models[name].state_dict().values()):
            torch.testing.assert_close(va, vb, msg=f'{name}.{k} differs after resume')


def test_freeze_codec_fine_tunes_the_perception_and_keeps_the_channel_code(
        splits: Path, tmp_path: Path) -> None:
    from disac_ros.core.models.checkpoint import load_checkpoint
    ds = DisacDataset(splits / 'train')
    with pytest.raises(ConfigError, match='freeze_codec.*no checkpoint'):   # nothing to keep yet
        train_stage1(ds, 'dev1', tmp_path, tiny_recipe(freeze_codec=True), steps=2,
                     show_progress=False)
    train_stage1(ds, 'dev1', tmp_path, tiny_recipe(), steps=2, show_progress=False)
    folder = stage1_dir(tmp_path, 'both', 'dev1') / 'checkpoint'
    before = load_checkpoint(folder).models
    out = train_stage1(ds, 'dev1', tmp_path, tiny_recipe(freeze_codec=True), steps=5,
                       resume=True, show_progress=False)
    assert out['resumed_from'] == 2
    after = load_checkpoint(folder).models
    for name in ('encoder', 'proxy_decoder'):
        for (k, va), vb in zip(before[name].state_dict().items(),
                               after[name].state_dict().values()):
            torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=f'{name}.{k} changed')
    changed = [not torch.equal(va, vb) for va, vb in zip(
        before['detector'].state_dict().values(), after['detector'].state_dict().values())]
    assert any(changed)


def test_corrupt_checkpoint_gives_a_clear_error(splits: Path, tmp_path: Path) -> None:
    ds = DisacDataset(splits / 'train')
    r = tiny_recipe()
    train_stage1(ds, 'dev0', tmp_path, r, steps=2, show_progress=False)
    ckpt = stage1_dir(tmp_path, 'both', 'dev0') / 'checkpoint'
    state = ckpt / common.TRAINER_STATE
    state.write_bytes(state.read_bytes()[:-10] + b'0123456789')
    with pytest.raises(CheckpointError, match='trainer_state.pt'):
        train_stage1(ds, 'dev0', tmp_path, r, steps=4, resume=True, show_progress=False)
    weights = ckpt / 'encoder.safetensors'
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match='encoder.safetensors'):
        train_stage1(ds, 'dev0', tmp_path, r, steps=4, resume=True, show_progress=False)


def test_aggregator_labels_are_world_frame_objects_of_present_devices(splits: Path) -> None:
    ds = SpyDataset(splits / 'train', set())
    labels = AggregatorLabels(ds)
    assert len(labels) == len(ds)
    all_dev = labels.objects(0, range(len(ds.device_ids)))
    one = labels.objects(0, [0])
    assert len(one.classes) <= len(all_dev.classes)
    assert set(map(tuple, one.position.round(4))) <= set(map(tuple, all_dev.position.round(4)))
    frames = DeviceFrames(DisacDataset(splits / 'train').device_view('dev0'), 'rf')
    img, rfx, tgt = frames.batch([0, 1])
    assert img.shape[1] == 3 and img.is_contiguous() and rfx.shape[1] == 2
    assert tgt.classes.shape[0] == 2


def test_mirror_augmentation_reflects_every_input_and_the_targets_consistently(
        splits: Path) -> None:
    frames = DeviceFrames(DisacDataset(splits / 'train').device_view('dev1'))
    img, rfx, tgt = frames.batch([0, 1])
    mimg, mrf, mtgt = frames.batch([0, 1], [True, False])
    torch.testing.assert_close(mimg[0], img[0].flip(-1))
    torch.testing.assert_close(mimg[1], img[1])
    torch.testing.assert_close(mrf[0, 0], rfx[0, 0])                  # range-Doppler unchanged
    q = rfx.shape[-2]
    for i in range(q):                                                  # angle bin k -> -k
        torch.testing.assert_close(mrf[0, 1, i], rfx[0, 1, (q - i) % q])
    torch.testing.assert_close(mtgt.position[0], tgt.position[0] * torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(mtgt.velocity[0], tgt.velocity[0] * torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(mtgt.position[1], tgt.position[1])
    assert torch.equal(frames.rf[0], rfx[0])                            # cache not modified


def test_cosine_schedule_warms_up_then_decays_to_five_percent():
    from disac_ros.core.training import common
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    lrs = []
    for step in range(100):
        common.set_lr(opt, step, 10, 100, 'cosine')
        lrs.append(opt.param_groups[0]['lr'])
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.05, abs=0.01)


def test_wsd_schedule_is_constant_then_decays_over_the_last_steps():
    from disac_ros.core.training import common

    def lrs(total: int) -> list[float]:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        out = []
        for step in range(total):
            common.set_lr(opt, step, 10, total, 'wsd', decay_steps=20)
            out.append(opt.param_groups[0]['lr'])
        return out

    short, long_ = lrs(60), lrs(100)
    assert short[9] == pytest.approx(1.0) and short[39] == pytest.approx(1.0)
    assert short[40] < 1.0 and short[-1] == pytest.approx(0.02)
    assert all(a >= b for a, b in zip(short[40:], short[41:]))
    # a longer run is the same until its own decay: resuming with more steps is exact
    assert long_[:40] == short[:40] and long_[79] == pytest.approx(1.0)
    assert long_[-1] == pytest.approx(0.02)


def test_federated_restart_keeps_the_first_cycle_and_warms_up_again():
    from disac_ros.core.training.federated import round_lr
    from disac_ros.core.training.recipes import Stage1Recipe
    base = Stage1Recipe(rounds=60, local_steps=10, warmup_steps=50, lr=1.0, lr_schedule='wsd',
                        decay_steps=200)
    one = replace(quick_recipe(), stage1=base)
    two = replace(quick_recipe(), stage1=replace(base, rounds=100, restart_rounds=(60,)))
    first = [round_lr(one, r, 60) for r in range(60)]
    again = [round_lr(two, r, 100) for r in range(100)]
    # rounds 1-60 are the 60-round run (so it can be continued with --resume), ...
    assert again[:60] == first and first[-1] == pytest.approx(0.02)
    # ... then a second cycle of its own: warm-up (5 rounds) and a decay to 2 %.
    assert again[60] == pytest.approx(0.2) and again[64] == pytest.approx(1.0)
    assert again[-1] == pytest.approx(0.02) and all(a >= b for a, b in zip(again[64:], again[65:]))
    for bad in ((60, 60), (0,), (100,), (70, 60)):
        with pytest.raises(ConfigError, match='restart_rounds'):
            replace(base, rounds=100, restart_rounds=bad)


def test_wsd_schedule_needs_decay_steps():
    from disac_ros.core.training.recipes import ConfigError, Stage1Recipe, Stage2Recipe
    with pytest.raises(ConfigError, match='decay_steps'):
        Stage1Recipe(lr_schedule='wsd', decay_steps=0)
    with pytest.raises(ConfigError, match='lr_schedule'):
        Stage2Recipe(lr_schedule='linear')


def test_object_class_weights_reach_the_loss():
    from disac_ros.core.models.config import HeadConfig, LossConfig
    from disac_ros.core.models.losses import GridCriterion
    crit = GridCriterion(LossConfig(object_class_weights=(1.0, 3.0)),
                         HeadConfig(kind='grid', polar_grid=(4, 8)))
    assert crit.class_weight.tolist() == pytest.approx([0.1, 1.0, 3.0, 1.0, 1.0])


def test_resuming_a_finished_run_keeps_its_validation_metrics(splits: Path, tmp_path: Path) -> None:
    ds = DisacDataset(splits / 'train')
    val = DisacDataset(splits / 'val')
    r = tiny_recipe()
    first = train_stage1(ds, 'dev1', tmp_path, r, val=val, steps=2, show_progress=False)
    again = train_stage1(ds, 'dev1', tmp_path, r, val=val, steps=2, resume=True,
                         show_progress=False)
    assert first['metrics'] and again['metrics'] == pytest.approx(first['metrics'], nan_ok=True)


def test_refit_device_decoders_fits_each_device_on_its_own_features_only(
        splits: Path, tmp_path: Path) -> None:
    import shutil
    from disac_ros.core.models.checkpoint import load_checkpoint
    from disac_ros.core.training.data import load_export, save_export
    from disac_ros.core.training.decoder import decoder_dir, refit_device_decoders
    r = tiny_recipe()
    train = DisacDataset(splits / 'train')
    devices = train.device_ids
    for dev in devices:
        train_stage1(train, dev, tmp_path / 'a', r, steps=2, show_progress=False)
    with pytest.raises(ConfigError, match='no collected per-device decoders'):
        refit_device_decoders(tmp_path / 'a', r, steps=5, show_progress=False)
    train_decoder(tmp_path / 'a', r, 'device', show_progress=False, devices=devices)
    shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    # Folder b: another device's features differ; the first device's refit must not notice.
    other = stage1_dir(tmp_path / 'b', 'both', devices[1]) / 'export_train.npz'
    e = load_export(other)
    save_export(other, e['device_id'], e['symbols'], 3.0 * e['feature'], e['frame'], e['time_s'],
                e['pose'])
    folder = decoder_dir(tmp_path / 'a', 'both', 'device') / 'checkpoint'
    before = load_checkpoint(folder).models['decoder']
    out = refit_device_decoders(tmp_path / 'a', r, steps=60, show_progress=False)
    refit_device_decoders(tmp_path / 'b', r, steps=60, show_progress=False)
    assert out['refit_steps'] == 60 and out['devices'] == devices
    assert out['val_nmse_db']['mean'] < out['val_nmse_db_before_refit']['mean']
    a = load_checkpoint(folder).models['decoder']
    b = load_checkpoint(decoder_dir(tmp_path / 'b', 'both', 'device') / 'checkpoint'
                        ).models['decoder']
    for i in range(len(devices)):
        assert not torch.equal(before.decoders[i].net[0].weight, a.decoders[i].net[0].weight)
    for va, vb in zip(a.decoders[0].state_dict().values(), b.decoders[0].state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0)
    assert not torch.equal(a.decoders[1].net[0].weight, b.decoders[1].net[0].weight)
    # Refits add up; the symbols (and so every other decoder's input) never change.
    again = refit_device_decoders(tmp_path / 'a', r, steps=2, show_progress=False)
    assert again['refit_steps'] == 62
    np.testing.assert_array_equal(
        load_export(stage1_dir(tmp_path / 'a', 'both', devices[0]) / 'export_train.npz')['symbols'],
        load_export(stage1_dir(tmp_path / 'b', 'both', devices[0]) / 'export_train.npz')['symbols'])


def test_stage2_resumes_an_exported_checkpoint_only_with_a_fresh_optimizer(
        splits: Path, tmp_path: Path) -> None:
    from disac_ros.core.training.decoder import train_decoder as train_dec
    r = tiny_recipe()
    train = DisacDataset(splits / 'train')
    for dev in train.device_ids:
        train_stage1(train, dev, tmp_path, r, steps=2, show_progress=False)
    train_dec(tmp_path, r, 'mlp', steps=5, show_progress=False)
    train_stage2(train, tmp_path, r, steps=3, show_progress=False)
    ckpt = tmp_path / 'stage2/both_tram/checkpoint'
    for name in (common.TRAINER_STATE, common.TRAINER_STATE_INFO):   # as an exported model
        (ckpt / name).unlink()
    with pytest.raises(CheckpointError, match='optimizer state missing'):
        train_stage2(train, tmp_path, r, steps=5, resume=True, show_progress=False)
    s = train_stage2(train, tmp_path, r, steps=5, resume=True, fresh_optimizer=True,
                     show_progress=False)
    assert s['resumed_from'] == 3 and s['steps'] == 5 and s['fresh_optimizer']
    assert (ckpt / common.TRAINER_STATE).is_file()


def test_export_only_rewrites_the_exports_that_training_wrote(splits: Path, tmp_path: Path) -> None:
    from disac_ros.core.training.data import load_export
    from disac_ros.core.training.stage1 import export_stage1
    r = tiny_recipe()
    train, val = DisacDataset(splits / 'train'), DisacDataset(splits / 'val')
    with pytest.raises(ConfigError, match='no stage-1 checkpoint for dev2'):
        export_stage1(train, 'dev2', tmp_path, val=val)
    train_stage1(train, 'dev2', tmp_path, r, val=val, steps=2, show_progress=False)
    folder = stage1_dir(tmp_path, 'both', 'dev2')
    written = {s: load_export(folder / f'export_{s}.npz') for s in ('train', 'val')}
    for s in written:
        (folder / f'export_{s}.npz').unlink()
    out = export_stage1(train, 'dev2', tmp_path, val=val)
    assert out['frames'] == {'train': len(train), 'val': len(val)}
    for s, old in written.items():
        new = load_export(folder / f'export_{s}.npz')
        for key in ('symbols', 'feature', 'frame', 'pose'):
            np.testing.assert_allclose(new[key], old[key], rtol=1e-5, atol=1e-6)
