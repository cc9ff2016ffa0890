"""Site adaptation of a device-agnostic model: ``disac-train adapt --scenario SITE.yaml``.

A user describes their site as a scenario YAML (streets, buildings, their own devices and ids).
Adaptation then, all on data the project simulates:

1. simulates the site (training, validation and test traffic seeds, disjoint);
2. scores the starting model on the site's test seeds (**before**);
3. fine-tunes the shared device network federated on the site's devices (each on its own
   frames, Flower FedAvg, as in training), re-exports what each device transmits and ships the
   fine-tuned partner decoder;
4. fine-tunes TRAM on the site's decoded features (resumed, fresh optimizer, lower LR) and
   recalibrates it on the site's validation seeds;
5. scores the result on the same test seeds (**after**) and writes ``adapt.json``.

The output folder is a complete model folder (the fleet runs it with ``model_dir:=OUT``).
"""
from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path
import shutil
import time
import types
from typing import Any, Callable, Sequence

from disac_ros.core.errors import ConfigError
from disac_ros.core.sensor_adapt import sensors_of_model
from disac_ros.core.training import common


def simulate_site(scenario_path: str | Path, out: Path, seeds: dict[str, Sequence[int]],
                  frames_per_seed: int, frame_stride: int, renderer: str = 'genesis',
                  show_progress: bool = True, log: Callable[[str], None] = print
                  ) -> dict[str, Path]:
    """Datasets of the site for each split (skipped when already complete)."""
    from tqdm import tqdm
    from disac_ros.core.dataset import generate
    from disac_ros.core.scenario import load_scenario
    from disac_ros.core.world import World
    scenario = load_scenario(scenario_path)
    folders = {split: out / split for split in seeds}
    todo = [s for s in seeds if not (folders[s] / 'manifest.json').is_file()]
    if not todo:
        return folders
    t0 = time.perf_counter()
    world = World(scenario, seed=int(seeds[todo[0]][0]), renderer=renderer)
    total = sum(len(seeds[s]) * frames_per_seed for s in todo)
    try:
        with tqdm(total=total, unit='frame', desc='simulate site', disable=not show_progress) as bar:
            for split in todo:
                if folders[split].exists():
                    shutil.rmtree(folders[split])
                generate(world, folders[split], list(seeds[split]), frames_per_seed,
                         split=split, on_frame=lambda: bar.update(1), frame_stride=frame_stride)
    finally:
        world.close()
    log(f'simulated {total} frames of {scenario.name!r} ({len(scenario.devices)} devices) in '
        f'{time.perf_counter() - t0:.0f} s')
    return folders


def _scene(path: Path, name: str) -> Any:
    from disac_ros.core.dataset import DisacDataset
    return types.SimpleNamespace(name=name, seed=None, topology='site',
                                 dataset=DisacDataset(path))


def _score(model: Path, scene: Any, log: Callable[[str], None]) -> dict[str, Any]:
    from disac_ros.core.evaluation.scenes import evaluate_scenes
    res = evaluate_scenes(model, [scene], snr_db=(0.0, 10.0), log=log)
    return res['pooled']['disac']


def adapt_model(scenario: str | Path, source: str | Path, out: str | Path, *,
                train_seeds: Sequence[int] = tuple(range(5000, 5008)),
                val_seeds: Sequence[int] = (5100, 5101),
                test_seeds: Sequence[int] = (5200, 5201, 5202, 5203),
                frames_per_seed: int = 30, frame_stride: int = 8, rounds: int = 30,
                stage2_steps: int = 1500, lr_scale: float = 0.3, renderer: str = 'genesis',
                threads: int | None = None, show_progress: bool = True,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Adapt ``source`` (a device-agnostic model folder) to the site of ``scenario`` into
    ``out`` (see module doc); returns and writes ``out/adapt.json``."""
    from disac_ros.core.models.checkpoint import load_checkpoint
    from disac_ros.core.training.calibration import calibrate_scenes
    from disac_ros.core.training.decoder import decoder_dir
    from disac_ros.core.evaluation.evaluate import load_recipe_of
    from disac_ros.core.training.federated import SHARED_DEVICE, DeviceClient, train_federated
    from disac_ros.core.training.generalist import (MODALITIES, collect_shared_decoder,
                                                    device_frames, export_scenes,
                                                    train_shared_stage2)
    from disac_ros.core.training.stage1 import is_device_agnostic, stage1_dir
    from disac_ros.core.training.stage2 import stage2_dir
    t0 = time.perf_counter()
    source, out = Path(source), Path(out)
    if not is_device_agnostic(source):
        raise ConfigError('from', f'{source}: not a device-agnostic model (model.json has no '
                                  '"device_agnostic": true); adapt needs one shared network')
    overlap = set(train_seeds) & set(val_seeds) | set(train_seeds) & set(test_seeds) \
        | set(val_seeds) & set(test_seeds)
    if overlap:
        raise ConfigError('seeds', f'train, val and test seeds must differ; shared: '
                                   f'{sorted(overlap)}')
    if out.resolve() == source.resolve():
        raise ConfigError('out', 'must differ from --from (the source model stays untouched)')
    if (out / 'adapt.json').is_file():
        raise ConfigError('out', f'{out}: already adapted (adapt.json); choose another folder')
    if not (out / 'model.json').is_file():
        if out.exists() and any(out.iterdir()):
            raise ConfigError('out', f'{out}: exists and is not a model folder')
        shutil.copytree(source, out, dirs_exist_ok=True)
    recipe = load_recipe_of(out)
    if threads is not None:
        recipe = replace(recipe, threads=int(threads))
    common.set_threads(recipe.threads)
    data = simulate_site(scenario, out / 'site_data', {'train': train_seeds, 'val': val_seeds,
                                                       'test': test_seeds},
                         frames_per_seed, frame_stride, renderer, show_progress, log)
    train, val, test = (_scene(data[s], f'site_{s}') for s in ('train', 'val', 'test'))
    report: dict[str, Any] = {'scenario': str(scenario), 'from': str(source),
                              'seeds': {'train': list(train_seeds), 'val': list(val_seeds),
                                        'test': list(test_seeds)}}
    before_path = out / 'adapt_before.json'
    if before_path.is_file():
        report['before'] = json.loads(before_path.read_text())
    else:
        report['before'] = _score(source, test, log)
        common.write_json(before_path, report['before'])
    # 3. the shared device network, fine-tuned federated on the site's own devices
    s1_dir = stage1_dir(out, MODALITIES, SHARED_DEVICE)
    initial = load_checkpoint(s1_dir / 'checkpoint').models
    if 'proxy_decoder' not in initial:     # an exported model: the shipped decoder is it
        initial['proxy_decoder'] = load_checkpoint(
            decoder_dir(out, MODALITIES, 'mlp') / 'checkpoint').models['decoder']
    r1 = recipe.stage1
    fine = replace(recipe, seed=recipe.seed + 4242, stage1=replace(
        r1, lr=r1.lr * lr_scale, warmup_steps=r1.local_steps, lr_schedule='cosine',
        decay_steps=0, eval_every=max(1, rounds), checkpoint_every=max(1, rounds // 3)))
    # The site's own cameras and radars, resampled to the model's (as its devices will do).
    sensors = sensors_of_model(out, recipe.rvfn.camera_hfov_deg)
    frames = device_frames([train], sensors=sensors)
    clients = [DeviceClient(f'site/{d}', fr, fine) for _, d, fr in frames]
    res = train_federated(clients, out / 'adapt' / 'stage1', fine, rounds, resume=True,
                          show_progress=show_progress, initial=initial,
                          meta={'stage': 'stage1', 'device_id': SHARED_DEVICE,
                                'modalities': MODALITIES, 'recipe': fine.to_dict(),
                                'adapted_to': str(scenario)})
    models = res.pop('models')
    for m in models.values():
        m.eval()
    from disac_ros.core.models.checkpoint import save_checkpoint
    save_checkpoint(s1_dir / 'checkpoint', models,
                    {'stage': 'stage1', 'device_id': SHARED_DEVICE, 'modalities': MODALITIES,
                     'device_agnostic': True, 'adapted_to': str(scenario),
                     'recipe': fine.to_dict()})
    export_scenes(models, frames, s1_dir / 'exports' / 'train')
    export_scenes(models, device_frames([val], sensors=sensors), s1_dir / 'exports' / 'val')
    dec = collect_shared_decoder(out, recipe, [val])
    report['stage1'] = {k: v for k, v in res.items() if k != 'metrics'}
    report['decoder_val_nmse_db'] = dec['val_nmse_db']
    # 4. TRAM fine-tuned on the site's decoded features, then recalibrated
    agg = load_checkpoint(stage2_dir(out, MODALITIES, 'tram') / 'checkpoint')
    start = int(agg.metadata.get('step', 0))
    r2 = recipe.stage2
    fine2 = replace(recipe, seed=recipe.seed + 4242, stage2=replace(
        r2, lr=r2.lr * lr_scale, warmup_steps=50, lr_schedule='wsd',
        decay_steps=max(1, stage2_steps // 2), eval_every=stage2_steps,
        checkpoint_every=max(50, stage2_steps // 4)))
    s2 = train_shared_stage2([train], out, fine2, [val], resume=True,
                             show_progress=show_progress, steps=start + stage2_steps,
                             fresh_optimizer=not (stage2_dir(out, MODALITIES, 'tram')
                                                  / 'checkpoint' / common.TRAINER_STATE
                                                  ).is_file() or start == 0)
    report['stage2'] = {k: s2[k] for k in ('steps', 'resumed_from', 'wall_s')}
    cal = calibrate_scenes(out, [val], recipe, log=log)
    report['calibration'] = {k: cal[k] for k in ('class_weights', 'class_thresholds',
                                                 'accuracy_before', 'accuracy_after')}
    report['after'] = _score(out, test, log)
    report['wall_s'] = round(time.perf_counter() - t0, 1)
    model_json = json.loads((out / 'model.json').read_text())
    model_json['adapted'] = {'scenario': str(scenario), 'from': str(source),
                             'seeds': report['seeds']}
    common.write_json(out / 'model.json', model_json)
    common.write_json(out / 'adapt.json', report)
    return report
