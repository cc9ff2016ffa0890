"""``disac-train``: two-stage distributed training of LLM-DiSAC.

Examples::

    disac-train stage1 --device dev0 --data data/splits/train --val data/splits/val \\
        --out models/quick --quick
    disac-train decoder --kind mlp --out models/quick --quick
    disac-train decoder --kind llm --out models/quick --quick --llm tiny
    disac-train decoder --kind device --out models/quick
    disac-train stage2 --data data/splits/train --val data/splits/val --out models/quick --quick
    disac-train calibrate --val data/splits/val --out models/quick
    disac-train all --data data/splits/train --val data/splits/val --out models/run1
    disac-train export --from models/run1 --to models/default --metrics results/metrics.md

``stage1`` trains one device on its own data and exports what it transmits; ``decoder`` trains a
receiver decoder on all devices' exports over the simulated channel (``--kind device`` instead
collects each device's stage-1 decoder, trained with its encoder); ``stage2`` trains the
aggregator on decoded features only; ``calibrate`` fits each aggregator's class weights on the
validation split (:mod:`disac_ros.core.training.calibration`); ``all`` runs everything in order
(every device, the decoders, TRAM and the baselines' models, then ``calibrate`` when ``--val``
is given) and prints a time summary. Every command resumes with
``--resume``. ``export --from OUT --to models/default`` copies only what the running system
loads and writes a MODEL_CARD.md. The recipe is stored in ``OUT/recipe.json`` by the first
command; later commands reuse it unless ``--recipe`` / ``--quick`` is given.

Exit status: 0 on success, 1 when training fails (e.g. a corrupt checkpoint), 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import time
from typing import Any, Sequence

from disac_ros.core.errors import ConfigError, DisacError
from disac_ros.core.training.recipes import DECODER_KINDS

PROG = 'disac-train'
MODEL_JSON = 'model.json'
RECIPE_JSON = 'recipe.json'


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument('--out', required=True, help='model folder (checkpoints, logs, exports)')
    if data:
        p.add_argument('--data', required=True, help='training split (a disac-dataset folder)')
        p.add_argument('--val', help='validation split (optional)')
    p.add_argument('--recipe', help="'default', 'quick' or a recipe YAML (default: the one "
                                    'stored in OUT, else default)')
    p.add_argument('--quick', action='store_true', help='same as --recipe quick')
    p.add_argument('--llm', help="override the recipe's LLM: 'smollm2', 'tiny' or a folder")
    p.add_argument('--resume', action='store_true', help='continue from saved checkpoints')
    p.add_argument('--no-progress', action='store_true', help='hide progress bars')
    p.add_argument('--threads', type=int, help='torch threads (default: the recipe)')


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    s1 = sub.add_parser('stage1', help="train one device's RVFN, encoder and local head on its "
                                       'own data; export its transmitted symbols')
    _common(s1)
    s1.add_argument('--device', required=True, help='device id, e.g. dev0')
    s1.add_argument('--modalities', default='both', choices=('both', 'rf', 'camera'))
    s1.add_argument('--steps', type=int, help='total steps (override the recipe)')
    s1.add_argument('--export-only', action='store_true',
                    help="train nothing: write the device's exports (the symbols and features "
                         'of --data, and of --val) from its saved detector and encoder, e.g. '
                         'into a copy of an exported model before a decoder refit')
    dec = sub.add_parser('decoder', help='train a receiver decoder on all devices\' exports '
                                         'over the simulated channel')
    _common(dec, data=False)
    dec.add_argument('--kind', default='mlp', choices=DECODER_KINDS,
                     help="decoder kind; 'device' collects every device's stage-1 decoder "
                          '(no training)')
    dec.add_argument('--modalities', default='both', choices=('both', 'rf', 'camera'))
    dec.add_argument('--steps', type=int, help='total steps (override the recipe)')
    dec.add_argument('--max-seconds', type=float,
                     help='wall-clock budget (0 = none); the first of steps/seconds ends it')
    dec.add_argument('--batch-size', type=int,
                     help='packets per step (override the recipe; a GPU affords more)')
    dec.add_argument('--torch-device', default='cpu',
                     help="where the decoder trains: 'cpu' (default) or 'cuda'; the channel "
                          "is simulated on the CPU either way")
    dec.add_argument('--refit-steps', type=int, default=0, metavar='N',
                     help="'device' kind only: refit each collected per-device decoder for N "
                          "steps to its device's current features, encoder fixed (after "
                          'perception-only stage-1 rounds; collects first when nothing is '
                          'collected yet). Fine-tune the aggregators afterwards')
    s2 = sub.add_parser('stage2', help='train TRAM (or mean-pool) on decoded features only')
    _common(s2)
    s2.add_argument('--aggregator', default='tram', choices=('tram', 'mean_pool'))
    s2.add_argument('--modalities', default='both', choices=('both', 'rf', 'camera'))
    s2.add_argument('--decoder', help='decoder kind feeding the aggregator (default: the '
                                      "variant's own: the shipped kind where the variant has "
                                      'it, else mlp); another kind trains into '
                                      'stage2/<variant>_<aggregator>_<kind>')
    s2.add_argument('--steps', type=int, help='total steps (override the recipe)')
    s2.add_argument('--torch-device', default='cpu',
                    help="where the decoder and the aggregator run: 'cpu' (default) or 'cuda'; "
                         'the channel and the labels stay on the CPU')
    s2.add_argument('--fresh-optimizer', action='store_true',
                    help='with --resume: weights and step count from the checkpoint, a new '
                         'optimizer (for an exported model, which keeps no optimizer state, '
                         'or after a decoder refit)')
    cal = sub.add_parser('calibrate', help="fit every aggregator's class weights on the "
                                           'validation split (stage2/<name>/calibration.json)')
    cal.add_argument('--out', required=True, help='model folder (a disac-train output or an '
                                                  'exported model)')
    cal.add_argument('--val', required=True, help='validation split (a disac-dataset folder)')
    cal.add_argument('--threads', type=int, help='torch threads (default: the recipe)')
    a = sub.add_parser('all', help='every stage, all devices, decoders and baselines')
    _common(a)
    a.add_argument('--devices', nargs='+', help='device ids (default: all in the dataset)')
    ad = sub.add_parser('adapt', help='adapt a device-agnostic model to a site: simulate the '
                                      'scenario, score, fine-tune, score again')
    ad.add_argument('--scenario', required=True, help='the site as a scenario YAML')
    ad.add_argument('--from', dest='src', required=True, help='device-agnostic model folder')
    ad.add_argument('--out', required=True, help='the adapted model folder (new)')
    ad.add_argument('--train-seeds', type=int, nargs='+', default=list(range(5000, 5008)))
    ad.add_argument('--val-seeds', type=int, nargs='+', default=[5100, 5101])
    ad.add_argument('--test-seeds', type=int, nargs='+', default=[5200, 5201, 5202, 5203])
    ad.add_argument('--frames-per-seed', type=int, default=30)
    ad.add_argument('--frame-stride', type=int, default=8)
    ad.add_argument('--rounds', type=int, default=30, help='federated stage-1 rounds on the site')
    ad.add_argument('--stage2-steps', type=int, default=1500, help='TRAM fine-tune steps')
    ad.add_argument('--renderer', default='genesis', choices=('genesis', 'none'))
    ad.add_argument('--threads', type=int, help='torch threads (default: the recipe)')
    ad.add_argument('--no-progress', action='store_true', help='hide progress bars')
    ex = sub.add_parser('export', help='copy only what the running system loads (stage-1 '
                                       'detector+encoder, shipped decoder, TRAM) + MODEL_CARD.md')
    ex.add_argument('--from', dest='src', required=True, help='trained model folder')
    ex.add_argument('--to', dest='dst', required=True, help='destination, e.g. models/default '
                                                            '(replaced)')
    ex.add_argument('--metrics', help="a disac-eval metrics.md to quote in the model card")
    ex.add_argument('--notes', help='a text file of known weaknesses for the model card')
    ex.add_argument('--command', dest='train_command',
                    help='the training command line to record in the model card')
    return p


class UsageError(Exception):
    """Bad command-line input (exit status 2)."""


def resolve_recipe(args: argparse.Namespace) -> Any:
    """The recipe: --recipe/--quick, else OUT/recipe.json, else 'default'; --llm/--threads."""
    from dataclasses import replace
    from disac_ros.core.training.recipes import load_recipe, Recipe
    out = Path(args.out)
    name = 'quick' if args.quick else args.recipe
    if name is not None:
        recipe = load_recipe(name)
    elif (out / RECIPE_JSON).is_file():
        recipe = Recipe.from_dict(json.loads((out / RECIPE_JSON).read_text()))
    else:
        recipe = load_recipe('default')
    if args.llm:
        recipe = replace(recipe, llm=args.llm)
    from disac_ros.core.training.common import write_json
    # Atomic: stage-1 jobs of several devices start at once on the same folder. --threads is
    # how this job runs, not part of the model: stored, it would leave every later job of the
    # folder (disac-eval included) on that many threads.
    write_json(out / RECIPE_JSON, recipe.to_dict(), sort_keys=False)
    if args.threads is not None:
        recipe = replace(recipe, threads=args.threads)
    return recipe


def stored_recipe(args: argparse.Namespace) -> Any:
    """OUT/recipe.json (UsageError when OUT is not a model folder), with --threads."""
    from dataclasses import replace
    from disac_ros.core.training.recipes import Recipe
    path = Path(args.out) / RECIPE_JSON
    if not path.is_file():
        raise UsageError(f'--out: {args.out} is not a model folder (no {RECIPE_JSON})')
    recipe = Recipe.from_dict(json.loads(path.read_text()))
    return recipe if args.threads is None else replace(recipe, threads=args.threads)


def update_model_json(out: Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into OUT/model.json (the top-level description of a model folder)."""
    from disac_ros.core.training.common import folder_lock, write_json
    path = out / MODEL_JSON
    with folder_lock(out):       # several jobs (one per device) may finish at the same time
        data = json.loads(path.read_text()) if path.is_file() else {
            'format': 'disac_ros.model', 'format_version': 1}
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        write_json(path, data)
    return data


def _open(path: str | None) -> Any:
    if path is None:
        return None
    from disac_ros.core.dataset import DisacDataset
    return DisacDataset(path)


def cmd_stage1(args: argparse.Namespace, recipe: Any) -> dict[str, Any]:
    """Train one device (stage 1)."""
    from disac_ros.core.training.stage1 import train_stage1
    train = _open(args.data)
    if args.device not in train.device_ids:
        raise UsageError(f'--device: unknown device {args.device!r}; the dataset has '
                         f'{train.device_ids}')
    if getattr(args, 'export_only', False):
        from disac_ros.core.training.stage1 import export_stage1
        e = export_stage1(train, args.device, args.out, args.modalities, val=_open(args.val))
        print(f'stage1 {args.modalities}/{args.device}: exported '
              + ', '.join(f'{n} {k} frames' for k, n in e['frames'].items())
              + f' in {e["wall_s"]} s')
        return e
    s = train_stage1(train, args.device, args.out, recipe, modalities=args.modalities,
                     val=_open(args.val), resume=args.resume,
                     show_progress=not args.no_progress, steps=args.steps)
    from disac_ros.core.sensor_adapt import sensors_of_manifest
    update_model_json(Path(args.out), devices=train.device_ids,
                      sensors=sensors_of_manifest(train.manifest).to_dict(),
                      stage1={f'{args.modalities}/{args.device}': _brief(s)})
    print(f'stage1 {args.modalities}/{args.device}: {s["steps"]} steps in {s["wall_s"]} s, '
          f'loss {s["loss_first"]:.3f} -> {s["loss_last"]:.3f}')
    return s


def cmd_decoder(args: argparse.Namespace, recipe: Any) -> dict[str, Any]:
    """Train one decoder; re-pick the shipped decoder."""
    from disac_ros.core.training.decoder import (choose_shipped, decoder_dir,
                                                 refit_device_decoders, train_decoder)
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f'--batch-size: must be >= 1, got {args.batch_size}')
    refit = getattr(args, 'refit_steps', 0) or 0
    if refit < 0:
        raise UsageError(f'--refit-steps: must be >= 0, got {refit}')
    if refit and args.kind != 'device':
        raise UsageError(f"--refit-steps: only for --kind device, not {args.kind!r}")
    # A refit starts from the collected decoders (an earlier refit included); collect first.
    if not (refit and (decoder_dir(args.out, args.modalities, 'device') / 'checkpoint').is_dir()):
        s = train_decoder(args.out, recipe, args.kind, args.modalities, resume=args.resume,
                          show_progress=not args.no_progress, steps=args.steps,
                          max_seconds=args.max_seconds, batch_size=args.batch_size,
                          torch_device=args.torch_device, devices=_model_devices(Path(args.out)))
    if refit:
        s = refit_device_decoders(args.out, recipe, args.modalities, refit,
                                  show_progress=not args.no_progress)
    fields: dict[str, Any] = {'decoders': {f'{args.modalities}/{args.kind}': _brief(s)}}
    if args.modalities == 'both':
        shipped, scores = choose_shipped(args.out, rule=recipe.decoder.shipped)
        fields.update(shipped_decoder=shipped, decoder_val_nmse_db=scores)
    update_model_json(Path(args.out), **fields)
    if refit:
        print(f'decoder {args.modalities}/device: refit {refit} steps per device in '
              f'{s["refit_wall_s"]} s, val NMSE {s["val_nmse_db_before_refit"]["mean"]:.2f} -> '
              f'{s["val_nmse_db"]["mean"]:.2f} dB (mean over SNR/fading)')
    else:
        print(f'decoder {args.modalities}/{args.kind}: {s["steps_done"]} steps in '
              f'{s["wall_s"]} s, val NMSE {s["val_nmse_db"]["mean"]:.2f} dB (mean over '
              'SNR/fading)')
    return s


def _model_json(out: Path) -> dict[str, Any]:
    path = out / MODEL_JSON
    return json.loads(path.read_text()) if path.is_file() else {}


def _model_devices(out: Path) -> list[str] | None:
    devices = _model_json(out).get('devices')
    return list(devices) if isinstance(devices, list) and devices else None


def variant_decoder(out: Path, modalities: str) -> str:
    """A variant's own decoder kind: the shipped kind where the variant has that decoder
    (the unimodal baselines then decode like the system they are compared with), else mlp."""
    from disac_ros.core.training.decoder import decoder_dir
    shipped = str(_model_json(out).get('shipped_decoder', 'mlp'))
    if modalities == 'both' or (decoder_dir(out, modalities, shipped) / 'checkpoint').is_dir():
        return shipped
    return 'mlp'


def cmd_stage2(args: argparse.Namespace, recipe: Any) -> dict[str, Any]:
    """Train one aggregator."""
    from disac_ros.core.training.stage2 import stage2_dir, train_stage2
    if getattr(args, 'fresh_optimizer', False) and not args.resume:
        raise UsageError('--fresh-optimizer: only with --resume')
    own = variant_decoder(Path(args.out), args.modalities)
    kind = args.decoder or own
    other = kind != own
    s = train_stage2(_open(args.data), args.out, recipe, modalities=args.modalities,
                     aggregator=args.aggregator, decoder_kind=kind, val=_open(args.val),
                     resume=args.resume, show_progress=not args.no_progress, steps=args.steps,
                     own_folder=other, torch_device=args.torch_device,
                     fresh_optimizer=getattr(args, 'fresh_optimizer', False))
    folder = stage2_dir(args.out, args.modalities, args.aggregator, kind if other else '')
    update_model_json(Path(args.out), stage2={folder.name: _brief(s)})
    print(f'stage2 {args.modalities}/{args.aggregator} (decoder {kind}) -> {folder}: '
          f'{s["steps"]} steps in {s["wall_s"]} s, loss {s["loss_first"]:.3f} -> '
          f'{s["loss_last"]:.3f}')
    return s


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if k != 'metrics'} | {'metrics': s.get('metrics')}


# What `all` passes to cmd_decoder for the decoder-only flags (recipe budgets, on the CPU).
_DECODER_DEFAULTS = {'steps': None, 'max_seconds': None, 'batch_size': None, 'torch_device': 'cpu'}


def cmd_all_shared(args: argparse.Namespace, recipe: Any) -> dict[str, Any]:
    """The device-agnostic pipeline (recipe with ``tram.geometry: relative``): federated
    stage 1 over every device of every scene, the shared decoder, TRAM (training.generalist)."""
    from disac_ros.core.training.generalist import train_all_shared
    if args.devices:
        raise UsageError('--devices: a device-agnostic recipe trains on every device of every '
                         'scene')
    info = train_all_shared(args.data, args.out, recipe, args.val, resume=args.resume,
                            show_progress=not args.no_progress)
    print(f'model folder {args.out}: device-agnostic, {info["data"]["train_scenes"]} training '
          f'scenes, {info["wall_s"]:.0f} s')
    return info


def cmd_all(args: argparse.Namespace, recipe: Any) -> dict[str, Any]:
    """Every stage in order, with a time summary."""
    if recipe.tram.geometry == 'relative':
        return cmd_all_shared(args, recipe)
    train = _open(args.data)
    devices = args.devices or train.device_ids
    times: list[tuple[str, float]] = []
    variants = ['both'] + [b.split('_')[0] for b in recipe.baselines
                           if b in ('rf_only', 'camera_only')]

    def run(label: str, fn: Any, ns: dict[str, Any]) -> None:
        t = time.perf_counter()
        fn(argparse.Namespace(**{**vars(args), **ns}), recipe)
        times.append((label, time.perf_counter() - t))

    for mod in variants:
        for dev in devices:
            run(f'stage1 {mod}/{dev}', cmd_stage1, {'device': dev, 'modalities': mod,
                                                     'steps': None})
    for kind in recipe.decoder.kinds:
        run(f'decoder both/{kind}', cmd_decoder, {'kind': kind, 'modalities': 'both',
                                                  **_DECODER_DEFAULTS})
    for mod in variants[1:]:
        for kind in ['mlp'] + ['device'] * ('device' in recipe.decoder.kinds):
            run(f'decoder {mod}/{kind}', cmd_decoder, {'kind': kind, 'modalities': mod,
                                                       **_DECODER_DEFAULTS})
    aggs = [('both', 'tram', None)] \
        + [('both', 'mean_pool', None)] * ('mean_pool' in recipe.baselines) \
        + [(m, 'tram', None) for m in variants[1:]] \
        + [('both', 'tram', k) for k in recipe.stage2.decoder_aggregators
           if k != variant_decoder(Path(args.out), 'both')]
    for mod, agg, kind in aggs:
        run(f'stage2 {mod}/{agg}' + (f' ({kind})' if kind else ''), cmd_stage2,
            {'modalities': mod, 'aggregator': agg, 'decoder': kind, 'steps': None,
             'torch_device': 'cpu'})
    if args.val:
        run('calibrate', cmd_calibrate, {})
    total = sum(t for _, t in times)
    print('\ntime summary:')
    for label, t in times:
        print(f'  {label:32s} {t:8.1f} s')
    print(f'  {"total":32s} {total:8.1f} s')
    update_model_json(Path(args.out), recipe=recipe.name, variants=variants,
                      timing_s={label: round(t, 1) for label, t in times}
                      | {'total': round(total, 1)})
    return {'times': times, 'total_s': total}


def cmd_calibrate(args: argparse.Namespace, recipe: Any) -> dict[str, Any]:
    """Fit and store every aggregator's class weights on the validation split."""
    from disac_ros.core.training.calibration import calibrate_model
    from disac_ros.core.training.stage1 import is_device_agnostic
    if is_device_agnostic(args.out):
        from disac_ros.core.training.generalist import calibrate_variants, load_scene_list
        variants = _model_json(Path(args.out)).get('variants', ['both'])
        cals = calibrate_variants(args.out, load_scene_list(args.val), recipe, variants)
        update_model_json(Path(args.out), calibration=cals)
        return {'calibrated': list(cals.values())}
    done = calibrate_model(args.out, _open(args.val), recipe=recipe, log=print)
    update_model_json(Path(args.out), calibration={Path(d['folder']).name: {
        k: d[k] for k in ('class_weights', 'class_thresholds', 'accuracy_before', 'accuracy_after',
                          'seeds')}
        for d in done})
    return {'calibrated': done}


def cmd_adapt(args: argparse.Namespace) -> dict[str, Any]:
    """Site adaptation (training.adapt): prints the before / after table."""
    from disac_ros.core.training.adapt import adapt_model
    for name in ('frames_per_seed', 'frame_stride', 'rounds', 'stage2_steps'):
        if getattr(args, name) < 1:
            raise UsageError(f'--{name.replace("_", "-")}: must be >= 1')
    if not Path(args.scenario).is_file():
        raise UsageError(f'--scenario: {args.scenario}: no such file')
    rep = adapt_model(args.scenario, args.src, args.out, train_seeds=args.train_seeds,
                      val_seeds=args.val_seeds, test_seeds=args.test_seeds,
                      frames_per_seed=args.frames_per_seed, frame_stride=args.frame_stride,
                      rounds=args.rounds, stage2_steps=args.stage2_steps,
                      renderer=args.renderer, threads=args.threads,
                      show_progress=not args.no_progress)
    print(f'\nadapted {args.src} -> {args.out} in {rep["wall_s"]:.0f} s; test seeds '
          f'{args.test_seeds}:')
    print(f'  {"condition":14s} {"before":>8s} {"after":>8s}   (accuracy; precision)')
    for cond, after in rep['after'].items():
        b = rep['before'].get(cond, {})
        print(f'  {cond:14s} {b.get("accuracy", float("nan")):8.3f} {after["accuracy"]:8.3f}'
              f'   ({b.get("precision", float("nan")):.2f} -> {after["precision"]:.2f})')
    return rep


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    """Export the shipped subset of a model folder (see training.export)."""
    from disac_ros.core.training.export import export_model, metrics_sections
    texts: dict[str, str | None] = {}
    for name in ('metrics', 'notes'):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            raise UsageError(f'--{name}: {path}: no such file')
        texts[name] = Path(path).read_text() if path else None
    metrics = metrics_sections(texts['metrics']) if texts['metrics'] else None
    s = export_model(args.src, args.dst, command=args.train_command, metrics_md=metrics,
                     notes=texts['notes'])
    print(f'exported {args.src} -> {s["path"]}: {s["bytes"] / 1e6:.2f} MB, devices '
          f'{", ".join(s["devices"])}, decoder {s["shipped_decoder"]}')
    return s


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``disac-train``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command in ('stage1', 'stage2', 'all', 'calibrate'):
            for name in ('data', 'val'):
                path = getattr(args, name, None)
                family_ok = args.command in ('all', 'calibrate') \
                    and (Path(path or '') / 'family.json').is_file()
                if path is not None and not family_ok \
                        and not (Path(path) / 'manifest.json').is_file():
                    raise UsageError(f'--{name}: {path} is not a dataset folder '
                                     f'(no manifest.json, nor family.json for `all`)')
        if args.command == 'export':    # reads a finished folder: no recipe to resolve
            cmd_export(args)
            return 0
        if args.command == 'adapt':     # the source folder's recipe
            cmd_adapt(args)
            return 0
        # calibrate reads a finished folder: its stored recipe, never rewritten
        recipe = stored_recipe(args) if args.command == 'calibrate' else resolve_recipe(args)
        {'stage1': cmd_stage1, 'decoder': cmd_decoder, 'stage2': cmd_stage2,
         'calibrate': cmd_calibrate, 'all': cmd_all}[args.command](args, recipe)
    except (UsageError, ConfigError) as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 2
    except DisacError as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
