"""Aggregator cost against the number of devices K: time per group of the shipped pipeline.

Times ``AggregatorPipeline.run`` (what the aggregator node calls per group: decode every packet,
fuse with TRAM, merge detections) on one group of K packets, for each K of ``--ks``, with the
model of ``--model`` (default: the shipped ``models/default``) and ``--threads`` torch threads
(the node's default is 1). Inputs are seeded: unit-variance I/Q symbols, SNR 10 dB, devices
spread on a 40 m circle facing its centre, distances 30-300 m. Besides the whole group it times
the decoder and TRAM alone on the same inputs, so the growth can be attributed.

Reports the median of ``--repeats`` calls after ``--warmup``, the time per device, and the ratio
to K = 4 (issue target: K = 16 at most 3x K = 4). Every K is measured in one process, interleaved
round by round, so machine noise hits all K alike.

    python benchmarks/bench_aggregator_scaling.py [--ks 1 2 4 8 16] [--threads 1] [--json results/aggregator_scaling.json]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import statistics
import sys
import time

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a source checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_group(k: int, num_symbols: int, seed: int) -> list:
    """K seeded packets of distinct devices (ids car0.. : the model must not need known ids)."""
    from disac_ros.core.inference import ReceivedPacket
    rng = np.random.default_rng(seed)
    group = []
    for i in range(k):
        angle = 2 * math.pi * i / k
        x, y = 40 * math.cos(angle), 40 * math.sin(angle)
        group.append(ReceivedPacket(f'car{i}', rng.standard_normal((num_symbols, 2)).astype(np.float32),
                                    10.0, float(30 + 270 * i / max(1, k - 1)),
                                    (x, y, angle + math.pi)))
    return group


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='', help='model folder (default: the shipped models/default)')
    p.add_argument('--ks', nargs='+', type=int, default=[1, 2, 4, 8, 16])
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--repeats', type=int, default=30)
    p.add_argument('--max-cells', type=int, nargs='+', default=[0],
                   help="TRAM's max_cells_per_device settings to compare (0 = every cell), side by side")
    p.add_argument('--max-fused-cells', type=int, nargs='+', default=[],
                   help="also TRAM's max_fused_cells budgets (cells over all devices, each device "
                        "N // K of its own), side by side")
    p.add_argument('--json', default='')
    args = p.parse_args(argv)
    if any(k < 1 for k in args.ks):
        p.error('--ks must be >= 1')
    from disac_ros.core.inference import AggregatorPipeline, decoder_slots, find_model_dir, run_decoder
    pipe = AggregatorPipeline(find_model_dir(args.model), threads=args.threads)
    if not pipe.info.device_agnostic:
        raise SystemExit(f'{pipe.info.root}: this model has per-device parameters; it cannot take '
                         f'{max(args.ks)} devices of unknown ids')
    groups = {k: make_group(k, pipe.num_symbols, seed=k) for k in args.ks}

    def inputs(k: int) -> tuple:
        g = groups[k]
        y = torch.from_numpy(np.stack([q.symbols for q in g]))
        snr = torch.full((k,), 10.0)
        dist = torch.tensor([q.distance_m for q in g])
        return y, snr, dist, decoder_slots(pipe.decoder, [q.device_id for q in g])

    def decode(k: int) -> torch.Tensor:
        return run_decoder(pipe.decoder, *inputs(k)).float()

    with torch.no_grad():
        feats = {k: decode(k)[None] for k in args.ks}

    def tram(k: int) -> None:
        g = groups[k]
        pose = torch.tensor([q.pose_xyyaw for q in g], dtype=torch.float32)[None]
        link = torch.tensor([[10.0, q.distance_m] for q in g])[None]
        pipe.tram(feats[k], torch.ones(1, k, dtype=torch.bool), pose, link, torch.zeros(1, k, dtype=torch.long))

    parts = {'group': lambda k: pipe.run([groups[k]]), 'decoder': decode, 'tram': tram}
    # Each setting: (label, max_cells_per_device, max_fused_cells).
    settings = ([(f'max_cells_per_device {m or "all"}', m, 0) for m in args.max_cells]
                + [(f'max_fused_cells {b}', 0, b) for b in args.max_fused_cells])
    times = {(label, name): {k: [] for k in args.ks} for label, _, _ in settings for name in parts}
    with torch.no_grad():
        for r in range(args.warmup + args.repeats):
            for label, m, budget in settings:
                pipe.tram.max_cells_per_device, pipe.tram.max_fused_cells = m, budget
                for k in args.ks:                   # interleaved: noise hits every K alike
                    for name, fn in parts.items():
                        t0 = time.perf_counter()
                        fn(k)
                        if r >= args.warmup:
                            times[(label, name)][k].append((time.perf_counter() - t0) * 1e3)
    med = {key: {k: statistics.median(v) for k, v in per_k.items()} for key, per_k in times.items()}
    ref = 4 if 4 in args.ks else args.ks[0]
    print(f'{pipe.info.root}: threads {args.threads}, median of {args.repeats} calls (ms)')
    for label, _, _ in settings:
        print(f'\n{label}')
        print(f'{"K":>3} {"group":>8} {"per dev":>8} {"vs K=" + str(ref):>8} {"decoder":>8} {"tram":>8}')
        for k in args.ks:
            g = med[(label, 'group')][k]
            print(f'{k:3d} {g:8.2f} {g / k:8.2f} {g / med[(label, "group")][ref]:8.2f} '
                  f'{med[(label, "decoder")][k]:8.2f} {med[(label, "tram")][k]:8.2f}')
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({'args': vars(args), 'model': str(pipe.info.root),
                                               'median_ms': {f'{name}@{label}': {str(k): v for k, v in d.items()}
                                                             for (label, name), d in med.items()}}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
