"""Device-agnostic models trained on many scenes: the pipeline behind ``disac-train all`` on a
family dataset (``disac-dataset family``) or any list of scene datasets.

What makes the result work at a site it never saw, with ids it never saw:

* **one shared device network** (RVFN + grid head + semantic encoder + its decoder) for every
  device of every scene, trained federated with Flower (:mod:`federated`): each device trains
  on its own frames, only weights reach the aggregation center;
* **one receiver decoder** for every device: the shared encoder's partner decoder, trained end
  to end with it through the simulated channel (SNR and distance as inputs);
* **an aggregator with no per-id parameter and no absolute map**: TRAM in
  ``geometry='relative'`` (cells attend to each other by ground distance; detections are made
  in each device's frame and placed with its pose), trained on scenes with 2-6 devices and
  random device dropout, so any K works at run time.

Model folder (``OUT``), the same layout as the per-device pipeline with one device entry
``shared`` (``model.json``: ``"device_agnostic": true``)::

    stage1/both/shared/checkpoint        detector, encoder, proxy_decoder (shared by all)
    stage1/both/shared/exports/<split>/<scene>/<device>.npz   what each device transmitted
    decoders/both/mlp/checkpoint         the shared decoder (the proxy decoder, collected)
    stage2/both_tram/checkpoint          TRAM (relative geometry)

Every stage resumes exactly (``resume=True``): stage 1 from its last saved round, stage 2 from
its last saved step, with the same batches as an uninterrupted run.
"""
from __future__ import annotations

from dataclasses import dataclass
import itertools
import json
from pathlib import Path
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from disac_ros.core.errors import ConfigError
from disac_ros.core.evaluation.metrics import DetectionStats
from disac_ros.core.models.channel import WirelessChannel
from disac_ros.core.models.checkpoint import save_checkpoint
from disac_ros.core.models.losses import build_criterion
from disac_ros.core.sensor_adapt import sensors_of_manifest, SensorSpec
from disac_ros.core.training import common
from disac_ros.core.training.data import (AggregatorLabels, DeviceFrames, load_export,
                                          save_export)
from disac_ros.core.training.decoder import decoder_dir, validate_decoder
from disac_ros.core.training.federated import (SHARED_DEVICE, DeviceClient, train_federated)
from disac_ros.core.training.logging import LossLog, progress
from disac_ros.core.training.recipes import Recipe
from disac_ros.core.training.stage1 import encode_frames, stage1_dir, validate
from disac_ros.core.training.stage2 import (FleetExports, build_aggregator, score_fleet,
                                            stage2_dir, train_step)

MODALITIES = 'both'                 # the shipped system; 'rf' and 'camera': the unimodal baselines
BASELINE_METHOD = {'both': 'disac', 'rf': 'rf_only', 'camera': 'camera_only'}
MAX_VAL_FRAMES_PER_DEVICE = 12      # stage-1 validation: frames per validation device


def load_scene_list(path: str | Path) -> list[Any]:
    """Scenes of a family dataset folder, or the one scene of a plain dataset folder."""
    from disac_ros.core.family_dataset import load_scenes
    scenes = load_scenes(path)
    if not scenes:
        raise ConfigError('data', f'{path}: no scenes')
    return scenes


def training_sensors(train: str | Path, train_scenes: Sequence[Any]) -> SensorSpec:
    """The sensors a model trained on ``train`` is trained with (every scene is resampled to
    them): a family folder's base camera and radar (before any ``sensor_choices``), else the
    first scene's."""
    from disac_ros.core.family_dataset import is_family_folder, read_family_json
    if is_family_folder(train):
        spec = read_family_json(train).get('family_spec') or {}
        if 'camera' in spec:
            return SensorSpec.from_dict({'camera': spec['camera'],
                                         'radar': spec.get('radar') or {}}, 'family_spec')
    return sensors_of_manifest(train_scenes[0].dataset.manifest)


def merge_frames(parts: Sequence[DeviceFrames], name: str = 'pooled') -> DeviceFrames:
    """One :class:`DeviceFrames` holding the frames of several (for pooled validation only:
    training never mixes devices' data)."""
    out = DeviceFrames.__new__(DeviceFrames)
    out.device_id = name
    out.modalities = parts[0].modalities
    out.frame_index = np.concatenate([p.frame_index for p in parts])
    out.images = torch.cat([p.images for p in parts])
    out.rf = torch.cat([p.rf for p in parts])
    out.pose = np.concatenate([p.pose for p in parts])
    out.time_s = np.concatenate([p.time_s for p in parts])
    out.objects = [o for p in parts for o in p.objects]
    return out


def device_frames(scenes: Sequence[Any], limit: int = 0, modalities: str = MODALITIES,
                  sensors: Any = None) -> list[tuple[str, str, DeviceFrames]]:
    """(scene name, device id, that device's own frames) for every device of every scene;
    ``limit`` > 0 keeps that many frames per device, spread over its run; ``sensors`` (a
    SensorSpec) resamples each scene's camera and radar to a model's."""
    out = []
    for sc in scenes:
        ds = sc.dataset
        for dev in ds.device_ids:
            view = ds.device_view(dev)
            idx = None
            if limit > 0 and len(view) > limit:
                idx = np.unique(np.linspace(0, len(view) - 1, limit).round().astype(int))
            out.append((sc.name, dev, DeviceFrames(view, modalities, indices=idx,
                                                   sensors=sensors)))
    return out


def train_shared_stage1(train_scenes: Sequence[Any], out: str | Path, recipe: Recipe,
                        val_scenes: Sequence[Any] = (), resume: bool = False,
                        show_progress: bool = True, log: Callable[[str], None] = print,
                        modalities: str = MODALITIES, sensors: SensorSpec | None = None
                        ) -> dict[str, Any]:
    """Federated stage 1 over every device of ``train_scenes``, then every device's exports
    (train and val scenes). Returns the summary (also ``stage1/<modalities>/shared/summary.json``).
    ``sensors``: resample every scene's camera and radar to these (scenes with other sensors)."""
    common.set_threads(recipe.threads)
    folder = stage1_dir(out, modalities, SHARED_DEVICE)
    t0 = time.perf_counter()
    train = device_frames(train_scenes, modalities=modalities, sensors=sensors)
    clients = [DeviceClient(f'{s}/{d}', fr, recipe) for s, d, fr in train]
    log(f'stage 1: {len(clients)} devices in {len(train_scenes)} scenes, '
        f'{sum(len(c.frames) for c in clients)} device-frames (loaded in '
        f'{time.perf_counter() - t0:.0f} s)')
    val = (device_frames(val_scenes, MAX_VAL_FRAMES_PER_DEVICE, modalities, sensors)
           if val_scenes else [])
    pooled = merge_frames([fr for _, _, fr in val]) if val else None
    criterion = build_criterion(recipe.loss, recipe.head)
    channel = WirelessChannel(recipe.channel)

    def validate_fn(models: dict[str, torch.nn.Module]) -> dict[str, float]:
        assert pooled is not None
        return validate(models, pooled, recipe, criterion, channel)

    meta = {'stage': 'stage1', 'device_id': SHARED_DEVICE, 'modalities': modalities,
            'recipe': recipe.to_dict(), 'device_agnostic': True,
            'seeds': {'recipe_seed': recipe.seed,
                      'train_scene_seeds': [getattr(s, 'seed', None) for s in train_scenes]},
            'data': {'train_scenes': [s.name for s in train_scenes],
                     'train_device_frames': sum(len(c.frames) for c in clients)}}
    res = train_federated(clients, folder, recipe, recipe.stage1.rounds,
                          validate_fn if pooled is not None else None, resume=resume,
                          show_progress=show_progress, meta=meta)
    models = res.pop('models')
    for m in models.values():
        m.eval()
    t1 = time.perf_counter()
    export_scenes(models, train, folder / 'exports' / 'train')
    if val_scenes:
        export_scenes(models, device_frames(val_scenes, modalities=modalities, sensors=sensors),
                      folder / 'exports' / 'val')
    summary = {**res, 'device_id': SHARED_DEVICE, 'modalities': modalities,
               'steps': res['rounds'] * res['clients_per_round'] * res['local_steps'],
               'export_s': round(time.perf_counter() - t1, 2)}
    common.write_json(folder / 'summary.json', summary)
    return summary


def export_scenes(models: dict[str, torch.nn.Module], frames: Sequence[tuple[str, str,
                                                                            DeviceFrames]],
                  root: Path) -> None:
    """Each device's transmitted symbols (and feature targets) for its frames."""
    for scene, dev, fr in frames:
        syms, feats = encode_frames(models['detector'], models['encoder'], fr)  # type: ignore
        save_export(root / scene / f'{dev}.npz', dev, syms, feats, fr.frame_index, fr.time_s,
                    fr.pose)


def scene_exports(out: str | Path, split: str, scene: str, modalities: str = MODALITIES
                  ) -> dict[str, dict]:
    """device id -> export of one scene's devices."""
    root = stage1_dir(out, modalities, SHARED_DEVICE) / 'exports' / split / scene
    if not root.is_dir():
        raise ConfigError('stage1', f'{root}: no exports for scene {scene!r} ({split}); run '
                                    'stage 1 on this data first')
    return {p.stem: load_export(p) for p in sorted(root.glob('*.npz'))}


def collect_shared_decoder(out: str | Path, recipe: Recipe,
                           val_scenes: Sequence[Any] = (), modalities: str = MODALITIES
                           ) -> dict[str, Any]:
    """Ship the shared encoder's stage-1 partner decoder as the receiver's one decoder
    (``decoders/<modalities>/mlp``), with its validation NMSE per SNR and fading."""
    from disac_ros.core.training.stage1 import load_device_models
    models = load_device_models(out, modalities, SHARED_DEVICE)
    dec = models['proxy_decoder']
    split = 'val' if val_scenes else 'train'
    sym, feat = [], []
    root = stage1_dir(out, modalities, SHARED_DEVICE) / 'exports' / split
    for p in sorted(root.glob('*/*.npz')):
        e = load_export(p)
        sym.append(e['symbols'])
        feat.append(e['feature'])
    if not sym:
        raise ConfigError('stage1', f'{root}: no exports to validate the decoder on')
    rng = np.random.default_rng(recipe.eval.seed)
    x, f = np.concatenate(sym), np.concatenate(feat)
    pick = rng.choice(len(x), size=min(len(x), recipe.decoder.val_packets), replace=False)
    val_nmse = validate_decoder(dec, x[pick], f[pick], recipe, recipe.eval.seed)
    summary = {'kind': 'mlp', 'modalities': modalities, 'steps_done': 0, 'resumed_from': 0,
               'source': 'the shared stage-1 decoder (trained end to end with the shared '
                         'encoder, federated)', 'val_nmse_db': val_nmse,
               'trainable_params': sum(p.numel() for p in dec.parameters())}
    folder = decoder_dir(out, modalities, 'mlp')
    save_checkpoint(folder / 'checkpoint', {'decoder': dec},
                    {'stage': 'decoder', 'kind': 'mlp', 'modalities': modalities,
                     'recipe': recipe.to_dict(), 'device_agnostic': True, 'metrics': summary})
    common.write_json(folder / 'summary.json', summary)
    return summary


@dataclass
class SceneFleet:
    """One scene's aggregator-side training data: labels and every device's exports."""

    name: str
    labels: AggregatorLabels
    fleet: FleetExports


def scene_fleets(scenes: Sequence[Any], out: str | Path, split: str,
                 modalities: str = MODALITIES) -> list[SceneFleet]:
    """Labels + exports of every scene (no raw sensor data is read)."""
    res = []
    for sc in scenes:
        labels = AggregatorLabels(sc.dataset)
        fleet = FleetExports.from_exports(scene_exports(out, split, sc.name, modalities),
                                          sc.dataset.device_ids, len(labels))
        res.append(SceneFleet(sc.name, labels, fleet))
    return res


def train_shared_stage2(train_scenes: Sequence[Any], out: str | Path, recipe: Recipe,
                        val_scenes: Sequence[Any] = (), resume: bool = False,
                        show_progress: bool = True, steps: int | None = None,
                        fresh_optimizer: bool = False, modalities: str = MODALITIES
                        ) -> dict[str, Any]:
    """TRAM over decoded features of many scenes: each step draws one scene (by frame count)
    and a batch of its frames, sends every device's symbols over fresh random links, decodes
    them with the shared decoder, drops devices at random (>= 1 kept) and trains TRAM on the
    objects the present devices sense."""
    from disac_ros.core.training.decoder import load_decoder
    common.set_threads(recipe.threads)
    r2 = recipe.stage2
    total = int(steps if steps is not None else r2.steps)
    train = scene_fleets(train_scenes, out, 'train', modalities)
    val = scene_fleets(val_scenes, out, 'val', modalities) if val_scenes else []
    weights = np.array([len(s.labels) for s in train], dtype=np.float64)
    weights /= weights.sum()
    decoder = load_decoder(out, modalities, 'mlp', recipe)
    for p in decoder.parameters():
        p.requires_grad_(False)
    folder = stage2_dir(out, modalities, 'tram')
    ckpt_dir = folder / 'checkpoint'
    torch.manual_seed(recipe.seed + 11)
    model = build_aggregator(recipe, 'tram')
    params = common.trainable(model)
    opt = common.make_optimizer([{'params': params, 'lr': r2.lr}], r2.weight_decay)
    start = 0
    if resume and (ckpt_dir / 'config.json').is_file():
        start, _ = common.load_training_checkpoint(ckpt_dir, {'aggregator': model},
                                                    None if fresh_optimizer else opt)
    log = LossLog(folder, resume_from=start if resume else None)
    criterion = build_criterion(stage2_loss(recipe), recipe.tram.head)
    channel = WirelessChannel(recipe.channel)
    meta = {'stage': 'stage2', 'modalities': modalities, 'aggregator': 'tram', 'decoder': 'mlp',
            'devices': [SHARED_DEVICE], 'device_agnostic': True, 'recipe': recipe.to_dict(),
            'seeds': {'recipe_seed': recipe.seed},
            'data': {'train_scenes': [s.name for s in train]},
            'inputs': 'device exports (symbols, pose) + world-frame labels; no raw sensor data'}
    metrics: dict[str, Any] = {}
    t0 = time.perf_counter()
    bar = progress(total, start, f'stage2 {modalities}/tram ({len(train)} scenes)', show_progress)
    for step in range(start, total):
        model.train()
        rng = common.step_rng(recipe.seed, 'stage2', step)
        sc = train[int(rng.choice(len(train), p=weights))]
        loss_d = train_step(model, opt, params, criterion, sc.labels, sc.fleet, decoder,
                            channel, recipe, modalities, rng, step, total)
        loss = loss_d['loss']
        done = step + 1
        row = {'step': step, 'scene': sc.name, 'devices': len(sc.fleet.device_ids),
               'loss': loss.item(),
               'loss_class': loss_d['loss_class'].item(),
               'loss_position': loss_d['loss_position'].item(),
               'elapsed_s': round(log.elapsed(), 2)}
        if val and (done % r2.eval_every == 0 or done == total):
            metrics = validate_scenes(model, decoder, val, recipe, modalities)
            row.update({f'val_{key}': v for key, v in metrics.items()})
        log.write(row)
        bar.update(1)
        bar.set_postfix(loss=f'{loss.item():.3f}')
        if done % r2.checkpoint_every == 0 or done == total:
            common.save_training_checkpoint(ckpt_dir, {'aggregator': model}, opt, done,
                                            {**meta, 'metrics': metrics})
    bar.close()
    if start >= total:
        _, saved = common.load_training_checkpoint(ckpt_dir, {'aggregator': model}, None)
        metrics = dict(saved.get('metrics') or {})
    rows = log.read()
    n10 = max(1, len(rows) // 10)
    summary = {'modalities': modalities, 'aggregator': 'tram', 'decoder': 'mlp',
               'steps': total, 'resumed_from': start, 'scenes': len(train),
               'wall_s': round(time.perf_counter() - t0, 2),
               'loss_first': float(np.mean([r['loss'] for r in rows[:n10]])) if rows else None,
               'loss_last': float(np.mean([r['loss'] for r in rows[-n10:]])) if rows else None,
               'metrics': metrics}
    common.write_json(folder / 'summary.json', summary)
    return summary


def stage2_loss(recipe: Recipe) -> Any:
    """The aggregator's loss config: the recipe's, with ``stage2.object_class_weights`` when
    given."""
    from dataclasses import replace
    w = recipe.stage2.object_class_weights
    return replace(recipe.loss, object_class_weights=tuple(w)) if w else recipe.loss


@torch.no_grad()
def validate_scenes(model: torch.nn.Module, decoder: torch.nn.Module,
                    scenes: Sequence[SceneFleet], recipe: Recipe,
                    modalities: str = MODALITIES) -> dict[str, float]:
    """World-frame detection metrics pooled over scenes: every device present, 10 dB Rayleigh
    at the nominal distance, the recipe's single threshold."""
    model.eval()
    stats = DetectionStats(recipe.eval.match_gate_m, recipe.eval.fusion_config())
    gen = torch.Generator().manual_seed(recipe.eval.seed)
    for sc in scenes:        # one noise stream across the scenes
        score_fleet(model, decoder, sc.labels, sc.fleet, recipe, modalities, stats, gen)
    s = stats.summary()
    return {key: s[key] for key in ('accuracy', 'precision', 'recall', 'position_rmse_m')}


def write_model_json(out: str | Path, recipe: Recipe, extra: dict[str, Any],
                     variants: Sequence[str] = (MODALITIES,),
                     sensors: SensorSpec | None = None) -> dict[str, Any]:
    """``model.json`` and ``recipe.json`` of a device-agnostic model folder; ``sensors``: what
    it was trained with (devices resample theirs to them)."""
    out = Path(out)
    data = {'format': 'disac_ros.model', 'format_version': 1, 'devices': [SHARED_DEVICE],
            'device_agnostic': True, 'shipped_decoder': 'mlp', 'variants': list(variants),
            **({'sensors': sensors.to_dict()} if sensors is not None else {}),
            **extra}
    common.write_json(out / 'model.json', data)
    common.write_json(out / 'recipe.json', recipe.to_dict(), sort_keys=False)
    return data


def baseline_variants(recipe: Recipe) -> list[str]:
    """The variants ``train_all_shared`` trains: the shipped fusion ('both') first, then the
    unimodal baselines the recipe asks for (``baselines: [rf_only, camera_only]``), each a
    shared network of its own trained the same way on the same scenes."""
    return [MODALITIES] + [m for m, method in BASELINE_METHOD.items()
                           if m != MODALITIES and method in recipe.baselines]


def calibrate_variants(out: str | Path, val_scenes: Sequence[Any], recipe: Recipe | None,
                       variants: Sequence[str], log: Callable[[str], None] = print
                       ) -> dict[str, dict[str, Any]]:
    """Calibrate each variant's TRAM on ``val_scenes``: '<variant>_tram' -> fit summary."""
    from disac_ros.core.training.calibration import calibrate_scenes
    cals = {}
    for mod in variants:
        t1 = time.perf_counter()
        cal = calibrate_scenes(out, val_scenes, recipe, log=log, method=BASELINE_METHOD[mod])
        cal['wall_s'] = round(time.perf_counter() - t1, 1)
        cals[f'{mod}_tram'] = cal
    return cals


def train_all_shared(train: str | Path, out: str | Path, recipe: Recipe,
                     val: str | Path | None = None, resume: bool = False,
                     show_progress: bool = True, log: Callable[[str], None] = print
                     ) -> dict[str, Any]:
    """The whole device-agnostic pipeline from scratch (or resumed): stage 1 (federated),
    the shared decoder, stage 2 and the calibration of each variant, then ``model.json``."""
    t0 = time.perf_counter()
    train_scenes = load_scene_list(train)
    val_scenes = load_scene_list(val) if val else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / 'recipe.json', recipe.to_dict(), sort_keys=False)
    variants = baseline_variants(recipe)
    sensors = training_sensors(train, train_scenes)
    s1s, decs, s2s = {}, {}, {}
    for mod in variants:
        s1 = train_shared_stage1(train_scenes, out, recipe, val_scenes, resume, show_progress, log,
                                 modalities=mod, sensors=sensors)
        log(f'stage 1 {mod} done: {s1["rounds"]} rounds in {s1["wall_s"]:.0f} s; metrics '
            f'{json.dumps({k: round(v, 3) for k, v in s1["metrics"].items() if isinstance(v, float)})}')
        dec = collect_shared_decoder(out, recipe, val_scenes, modalities=mod)
        log(f'decoder {mod}: validation NMSE {dec["val_nmse_db"]}')
        s2 = train_shared_stage2(train_scenes, out, recipe, val_scenes, resume, show_progress,
                                 modalities=mod)
        log(f'stage 2 {mod} done: {s2["steps"]} steps in {s2["wall_s"]:.0f} s; validation '
            f'{s2["metrics"]}')
        s1s[f'{mod}/{SHARED_DEVICE}'], decs[mod], s2s[f'{mod}_tram'] = s1, dec, s2
    write_model_json(out, recipe, {}, variants, sensors)   # calibration reads it as a model
    cals = calibrate_variants(out, val_scenes, recipe, variants, log) if val_scenes else {}
    dec = decs[MODALITIES]
    info = write_model_json(out, recipe, {
        'calibration': cals, 'stage1': s1s, 'decoder': dec,
        **({'baseline_decoders': {m: d for m, d in decs.items() if m != MODALITIES}}
           if len(variants) > 1 else {}),
        'stage2': s2s,
        'decoder_val_nmse_db': {'mlp': dec['val_nmse_db'].get('mean')
                                if isinstance(dec['val_nmse_db'], dict) else None},
        'data': {'train': str(Path(train).resolve()),
                 'val': str(Path(val).resolve()) if val else None,
                 'train_scenes': len(train_scenes), 'val_scenes': len(val_scenes)},
        'wall_s': round(time.perf_counter() - t0, 1)}, variants, sensors)
    return info


def subsets(k: int, size: int, limit: int = 6) -> list[tuple[int, ...]]:
    """Up to ``limit`` of the size-``size`` subsets of range(k), spread deterministically."""
    combos = list(itertools.combinations(range(k), size))
    if len(combos) <= limit:
        return combos
    pick = np.unique(np.linspace(0, len(combos) - 1, limit).round().astype(int))
    return [combos[i] for i in pick]
