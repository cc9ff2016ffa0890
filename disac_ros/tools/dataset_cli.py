"""``disac-dataset``: generate, inspect and verify multi-view RF-visual datasets.

Examples::

    disac-dataset generate --scenario config/scenarios/default.yaml --frames 200 --seed 0 \\
        --out data/ds0
    disac-dataset splits --scenario config/scenarios/default.yaml --out data/splits \\
        --train-seeds 0 1 --val-seeds 100 --test-seeds 200 --frames-per-seed 100
    disac-dataset family --family config/families/urban.yaml --out data/urban \\
        --seed-range 0 100 --frames-per-seed 30 --frame-stride 8
    disac-dataset family-show --family config/families/urban.yaml --seed 7
    disac-dataset info data/ds0
    disac-dataset verify data/ds0

Exit status: 0 on success, 1 when ``verify`` finds problems or generation fails, 2 on bad
arguments (including an invalid scenario or an existing non-empty output folder).
"""
from __future__ import annotations

import argparse
from pathlib import Path
import shlex
import sys
import time
from typing import Sequence

from disac_ros.core.errors import DatasetError
from disac_ros.core.errors import ScenarioError

PROG = 'disac-dataset'
# Files a previous run may have left; --overwrite removes exactly these (never anything else).
_OWN_FILES = ('manifest.json', 'DATASET_CARD.md', 'timing.json', 'splits.json')
_OWN_GLOB = 'shard_*.npz*'
_FAMILY_OWN_FILES = ('family.json', 'family.json.tmp', 'timing.json', 'timing.json.tmp')
SPLITS = ('train', 'val', 'test')


class UsageError(Exception):
    """Bad command-line input (exit status 2)."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
    if v < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {v}')
    return v


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer seed, got {text!r}') from None
    if v < 0:
        raise argparse.ArgumentTypeError(f'seed must be >= 0, got {v}')
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to render --help)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description='Write, inspect and verify LLM-DiSAC multi-view RF-visual datasets. A '
                    'scenario YAML describes the street scene, the K sensing devices (vehicles '
                    'and roadside units, each with a camera and a radar) and the moving objects; '
                    'the simulator (Genesis for images, numpy for RF) produces per-device images, '
                    'radar cubes and ground truth, written as deterministic shards with a '
                    'manifest and a dataset card. The same scenario and seed always give '
                    'byte-identical shards.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Run "disac-dataset COMMAND --help" for the options of each command.')
    sub = p.add_subparsers(dest='command', required=True, metavar='COMMAND')

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument('--scenario', required=True, metavar='FILE',
                        help='scenario YAML (e.g. config/scenarios/default.yaml)')
        sp.add_argument('--num-devices', type=_positive_int, default=None, metavar='K',
                        help='use only the first K devices of the scenario (default: all)')
        sp.add_argument('--shard-size', type=_positive_int, default=50, metavar='N',
                        help='frames per shard file (default: 50)')
        sp.add_argument('--overwrite', action='store_true',
                        help='allow an existing non-empty output folder; removes only files '
                             'a previous run wrote (manifest, card, timing, shards)')
        sp.add_argument('--renderer', choices=('genesis', 'none'), default='genesis',
                        help="'genesis' renders camera images (default); 'none' writes black "
                             'images (RF and ground truth only, fast)')
        sp.add_argument('--no-progress', action='store_true', help='hide the progress bar')
        sp.add_argument('--frame-stride', type=_positive_int, default=1, metavar='N',
                        help='keep every N-th simulation step; the traffic advances in between '
                             'without rendering, so a seed\'s frames cover N times as long a '
                             'run (default: 1 = every step). Training sets of short runs need '
                             'it to see the vehicles and traffic as they are after the first '
                             'seconds (e.g. 30 frames with stride 8 span 24 s)')

    g = sub.add_parser('generate', help='simulate one seed and write a dataset folder',
                       description='Simulate a scenario for N frames with one seed and write '
                                   'OUT/manifest.json, OUT/DATASET_CARD.md and the shards. '
                                   'Prints the throughput (frames per second) at the end.')
    common(g)
    g.add_argument('--frames', type=_positive_int, required=True, metavar='N',
                   help='number of frames (time steps; each has one view per device)')
    g.add_argument('--seed', type=_seed, required=True, metavar='S',
                   help='scenario seed: traffic and RF noise; equal seeds give equal bytes')
    g.add_argument('--out', required=True, metavar='DIR', help='output folder')
    g.add_argument('--split', default=None, metavar='NAME',
                   help='split name recorded in the manifest (e.g. train)')

    s = sub.add_parser('splits', help='write train/val/test folders from disjoint seeds',
                       description='Write OUT/train, OUT/val and OUT/test, each a dataset '
                                   'folder; each split uses its own seeds, so no test frame '
                                   'shares traffic with a training frame. One Genesis scene '
                                   'is built and reused for every seed.')
    common(s)
    s.add_argument('--out', required=True, metavar='DIR', help='output folder')
    s.add_argument('--frames-per-seed', type=_positive_int, required=True, metavar='N',
                   help='frames simulated for each seed')
    s.add_argument('--train-seeds', type=_seed, nargs='+', default=[0, 1], metavar='S',
                   help='seeds of the training split (default: 0 1)')
    s.add_argument('--val-seeds', type=_seed, nargs='+', default=[100], metavar='S',
                   help='seeds of the validation split (default: 100)')
    s.add_argument('--test-seeds', type=_seed, nargs='+', default=[200], metavar='S',
                   help='seeds of the test split (default: 200)')

    f = sub.add_parser('family', help='write a procedural scene-family dataset (one scene '
                                      'per seed)',
                       description='Generate one concrete scenario per seed from a family YAML '
                                   '(config/families/*.yaml), simulate it and write '
                                   'OUT/scene_<seed>/ (a dataset folder plus scenario.yaml) '
                                   'and OUT/family.json indexing the scenes. Each scene builds '
                                   'its own world. Prints the throughput at the end.')
    f.add_argument('--family', required=True, metavar='FILE',
                   help='family YAML (e.g. config/families/urban.yaml)')
    f.add_argument('--out', required=True, metavar='DIR', help='output folder')
    seeds = f.add_mutually_exclusive_group(required=True)
    seeds.add_argument('--seeds', type=_seed, nargs='+', metavar='S',
                       help='scene seeds (each seed is one street layout and its traffic)')
    seeds.add_argument('--seed-range', type=_seed, nargs=2, metavar=('START', 'COUNT'),
                       help='COUNT consecutive seeds from START')
    f.add_argument('--frames-per-seed', type=_positive_int, required=True, metavar='N',
                   help='frames simulated per scene')
    f.add_argument('--frame-stride', type=_positive_int, default=1, metavar='N',
                   help='keep every N-th simulation step (default: 1)')
    f.add_argument('--topologies', nargs='+', default=None, metavar='T',
                   help='draw each seed\'s topology only among these (re-weighted; a topology '
                        'of weight 0, e.g. a held-out one, may be named). Known: straight, '
                        't_junction, four_way, offset, skewed')
    f.add_argument('--split', default='train', metavar='NAME',
                   help='split name recorded in family.json and each manifest (default: train)')
    f.add_argument('--shard-size', type=_positive_int, default=50, metavar='N',
                   help='frames per shard file (default: 50)')
    f.add_argument('--renderer', choices=('genesis', 'none'), default='genesis',
                   help="'genesis' renders camera images (default); 'none' writes black images")
    f.add_argument('--overwrite', action='store_true',
                   help='allow an existing non-empty output folder; removes only what a '
                        'previous run wrote (family.json, timing.json, scene folders\' files)')
    f.add_argument('--no-progress', action='store_true', help='hide the progress bar')

    fs = sub.add_parser('family-show', help='print the concrete scenario YAML of one seed',
                        description='Print the scenario that a family makes of SEED (the same '
                                    'YAML that `family` writes as scene_<seed>/scenario.yaml; '
                                    'it loads as a --scenario for the other commands).')
    fs.add_argument('--family', required=True, metavar='FILE', help='family YAML')
    fs.add_argument('--seed', type=_seed, required=True, metavar='S', help='scene seed')
    fs.add_argument('--topology', default=None, metavar='T',
                    help='force this topology (default: drawn from the seed)')

    i = sub.add_parser('info', help='print a summary of a dataset or family folder')
    i.add_argument('dir', metavar='DIR')
    v = sub.add_parser('verify',
                       help='check shard checksums and frame counts against the manifest '
                            '(every scene of a family folder)')
    v.add_argument('dir', metavar='DIR')
    return p


def _must_replace(out: Path, overwrite: bool) -> bool:
    """True when ``out`` holds files that --overwrite allows replacing; UsageError when it is
    not a folder, or not empty without --overwrite."""
    if out.exists() and not out.is_dir():
        raise UsageError(f'--out {out}: exists and is not a folder')
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f'--out {out}: folder exists and is not empty '
                             '(use --overwrite to replace a previous dataset)')
        return True
    return False


def _prepare_out(out: Path, overwrite: bool, subdirs: Sequence[str] = ()) -> None:
    if _must_replace(out, overwrite):
        for d in [out, *(out / s for s in subdirs)]:
            if not d.is_dir():
                continue
            for name in _OWN_FILES:
                (d / name).unlink(missing_ok=True)
            for f in d.glob(_OWN_GLOB):
                f.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _prepare_family_out(out: Path, overwrite: bool) -> None:
    if _must_replace(out, overwrite):
        for name in _FAMILY_OWN_FILES:
            (out / name).unlink(missing_ok=True)
        for d in sorted(out.glob('scene_*')):
            if not d.is_dir():
                continue
            for name in (*_OWN_FILES, 'scenario.yaml'):
                (d / name).unlink(missing_ok=True)
            for f in d.glob(_OWN_GLOB):
                f.unlink()
            if not any(d.iterdir()):
                d.rmdir()
    out.mkdir(parents=True, exist_ok=True)


def _run_family(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from disac_ros.core.family_dataset import generate_family_dataset
    from disac_ros.core.scene_family import load_family

    family = load_family(args.family)
    topologies = family.check_topologies(args.topologies, '--topologies')
    seeds = (list(args.seeds) if args.seeds is not None
             else list(range(args.seed_range[0], args.seed_range[0] + args.seed_range[1])))
    if not seeds:
        raise UsageError('--seed-range: COUNT must be >= 1')
    if len(set(seeds)) != len(seeds):
        raise UsageError(f'--seeds: duplicate seeds in {seeds}')
    out = Path(args.out)
    _prepare_family_out(out, args.overwrite)
    total = len(seeds) * args.frames_per_seed

    from tqdm import tqdm
    print(f'{PROG}: family {family.name!r}: {len(seeds)} scene(s) x {args.frames_per_seed} '
          f'frames (renderer {args.renderer}); each scene builds its own world...',
          file=sys.stderr)
    with tqdm(total=total, unit='frame', desc=PROG, disable=args.no_progress,
              file=sys.stderr) as bar:
        def scene_done(rec: dict) -> None:
            bar.set_postfix_str(f'{rec["name"]} built in {rec["world_build_s"]:.1f} s',
                                refresh=False)
        doc = generate_family_dataset(
            family, out, seeds, args.frames_per_seed, frame_stride=args.frame_stride,
            topologies=topologies, renderer=args.renderer, split=args.split,
            on_frame=lambda: bar.update(1), shard_size=args.shard_size,
            command=_command_line(argv), on_scene=scene_done)
    t = doc['timing']
    wall, build = t['wall_time_s'], t['world_build_s']
    sim = max(wall - build, 1e-9)
    topo: dict[str, int] = {}
    for s in doc['scenes']:
        topo[s['topology']] = topo.get(s['topology'], 0) + 1
    builds = [r['world_build_s'] for r in t['scenes']]
    # The first build also starts the renderer (Genesis import and init, kernel compile on a
    # new machine); the later ones are what each extra scene costs.
    later = (f', then {sum(builds[1:]) / len(builds[1:]):.2f} s/scene' if len(builds) > 1
             else '')
    print(f'wrote {t["frames"]} frames ({t["device_views"]} device-views) of {len(seeds)} '
          f'scene(s) {topo} to {out} in {wall:.1f} s (world builds {build:.1f} s: first '
          f'{builds[0]:.1f} s{later}): {t["frames"] / wall:.2f} frames/s, '
          f'{t["device_views"] / wall:.1f} device-views/s '
          f'({t["frames"] / sim:.2f} frames/s without the builds)')
    return 0


def _run_family_show(args: argparse.Namespace) -> int:
    from disac_ros.core.family_dataset import dump_scenario_yaml
    from disac_ros.core.scene_family import load_family

    family = load_family(args.family)
    topology = args.topology
    if topology is not None:
        family.check_topologies(topology, '--topology')
    else:
        topology = family.topology_of(args.seed)
    d = family.scenario_dict(args.seed, topology)
    print(f'# family {family.name!r} ({args.family}), seed {args.seed}, topology {topology}')
    sys.stdout.write(dump_scenario_yaml(d))
    return 0


def _command_line(argv: Sequence[str]) -> str:
    """The command as recorded in the card; the output folder is elided so that the card, like
    the shards and the manifest, is identical wherever the same dataset is written."""
    out, skip = [], False
    for a in argv:
        if skip:
            out.append('DIR')
            skip = False
        elif a == '--out':
            out.append(a)
            skip = True
        elif a.startswith('--out='):
            out.append('--out=DIR')
        else:
            out.append(shlex.quote(a))
    return ' '.join([PROG, *out])


def _run_generation(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from disac_ros.core.dataset import generate
    from disac_ros.core.scenario import load_scenario

    scenario = load_scenario(args.scenario, num_devices=args.num_devices)
    out = Path(args.out)
    if args.command == 'generate':
        plan = [(args.split, out, [args.seed], args.frames)]
        _prepare_out(out, args.overwrite)
    else:
        seeds = {'train': args.train_seeds, 'val': args.val_seeds, 'test': args.test_seeds}
        seen: dict[int, str] = {}
        for split, ss in seeds.items():
            for sd in ss:
                if sd in seen:
                    raise UsageError(f'--{split}-seeds: seed {sd} is also in --{seen[sd]}-seeds; '
                                     'splits must use different seeds')
                seen[sd] = split
        _prepare_out(out, args.overwrite, SPLITS)
        plan = []
        for split in SPLITS:
            _prepare_out(out / split, args.overwrite)
            plan.append((split, out / split, seeds[split], args.frames_per_seed))
    total = sum(len(seeds_) * n for _, _, seeds_, n in plan)

    from tqdm import tqdm

    from disac_ros.core.world import World
    t0 = time.perf_counter()
    print(f'{PROG}: building the world for scenario {scenario.name!r} '
          f'({len(scenario.devices)} devices, renderer {args.renderer})...', file=sys.stderr)
    world = World(scenario, seed=plan[0][2][0], renderer=args.renderer)
    build_s = time.perf_counter() - t0
    results = []
    try:
        with tqdm(total=total, unit='frame', desc=PROG, disable=args.no_progress,
                  file=sys.stderr) as bar:
            t1 = time.perf_counter()
            for split, folder, seeds_, n in plan:
                results.append(generate(world, folder, seeds_, n, shard_size=args.shard_size,
                                        split=split, command=_command_line(argv),
                                        on_frame=lambda: bar.update(1),
                                        frame_stride=args.frame_stride))
            wall = time.perf_counter() - t1
    finally:
        world.close()
    if args.command == 'splits':
        import json
        summary = {s: {'seeds': r['seeds'], 'frames': r['frames']}
                   for s, r in zip(SPLITS, results)}
        (out / 'splits.json').write_text(json.dumps(summary, indent=2, sort_keys=True) + '\n',
                                         encoding='utf-8')
    k = len(scenario.devices)
    print(f'wrote {total} frames x {k} devices to {out} in {wall:.1f} s '
          f'(world build {build_s:.1f} s): {total / wall:.2f} frames/s, '
          f'{total * k / wall:.1f} device-views/s')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``disac-dataset`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ('generate', 'splits'):
            return _run_generation(args, argv)
        if args.command == 'family':
            return _run_family(args, argv)
        if args.command == 'family-show':
            return _run_family_show(args)
        from disac_ros.core.dataset import summary
        from disac_ros.core.dataset import verify
        from disac_ros.core.family_dataset import family_summary
        from disac_ros.core.family_dataset import is_family_folder
        from disac_ros.core.family_dataset import verify_family
        family = is_family_folder(args.dir)
        if args.command == 'info':
            print(family_summary(args.dir) if family else summary(args.dir))
            return 0
        problems = verify_family(args.dir) if family else verify(args.dir)
        for prob in problems:
            print(f'{PROG}: {args.dir}: {prob}', file=sys.stderr)
        if problems:
            return 1
        print(f'{args.dir}: OK')
        return 0
    except (UsageError, ScenarioError) as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 2
    except DatasetError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
