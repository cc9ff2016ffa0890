"""Offline fleet tracking: the ROS-free pipeline over a dataset split, scored like a recorded run.

Run: ``python benchmarks/offline_tracking.py --data SPLIT_OR_FAMILY [...] [--model models/default]
[--fading rayleigh] [--fusions weighted:2.5 nms:1.5] [--configs default ...]
[--thresholds model 0.5 0.6 0.7]``.

Every frame of the split goes through what the fleet does (device RVFN + encoder, the wireless
channel with the SNR of the path-loss model at each device's distance from the trained receiver
position, the shipped decoder, TRAM) once; every query scoring >= 0.3 is cached, merged by each
``--fusions`` method (``detection_fusion.py``) at each ``--thresholds`` entry (a number: that one
threshold, no calibration; ``model``: the model's fitted class weights and thresholds, as the
aggregator node runs by default, ``score_threshold`` 0.5 without them), and replayed through
:class:`MultiObjectTracker` for every tracker config; the tracks are scored with
:func:`score_tracks` (the metrics of ``disac-score-tracks``: MOTA, IDF1, tracked_fraction, class
accuracy, position RMSE). Each row also gives the per-frame detection metrics of
``disac-eval`` (accuracy, precision, recall of the merged detections against the visible objects,
2 m gate). Same queries for every row, so the rows compare settings side by side. The link node's
8-bit re-quantisation, packet loss and delays are left out; the first ``--warmup-s`` seconds of
each seed are not scored (the ROS demo's scorer skips its warm-up the same way).

Named tracker configs (``--configs``): ``default`` (TrackerConfig()), ``fleet`` (the ``tracker:``
section of config/fleet.yaml when it has one) and any ``key=value;key=value`` override string,
e.g. ``'min_hits=2;confirm_window=3;max_misses=8'``.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
import sys
import time

# Measure this checkout, not an older copy installed in the colcon workspace.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from disac_ros.core.dataset import DisacDataset  # noqa: E402
from disac_ros.core.detection_fusion import FusionConfig  # noqa: E402
from disac_ros.core.family_dataset import load_scenes  # noqa: E402
from disac_ros.core.evaluation.metrics import DetectionStats  # noqa: E402
from disac_ros.core.inference import (  # noqa: E402
    AggregatorPipeline, DevicePipeline, find_model_dir, merged_detections, ReceivedPacket)
from disac_ros.core.models.channel import WirelessChannel  # noqa: E402
from disac_ros.core.mot_scoring import (  # noqa: E402
    GtObject, score_tracks, ScoringFrame, TrackedObject)
from disac_ros.core.sensor_adapt import sensors_of_manifest  # noqa: E402
from disac_ros.core.tracking import Detection, MultiObjectTracker, TrackerConfig  # noqa: E402
from disac_ros.core.training.calibration import Calibration, load_calibration  # noqa: E402
from disac_ros.core.training.stage2 import stage2_dir  # noqa: E402

CACHE_THRESHOLD = 0.3       # queries are cached at this score; rows filter and merge upwards


def detect_split(data: Path, model: Path, fading: str, seed: int, max_frames: int,
                 threads: int) -> list[dict]:
    """Run devices + channel + decoder + TRAM over the split; one record per frame with every
    query scoring >= CACHE_THRESHOLD as an unmerged detection."""
    ds = DisacDataset(data)
    devices = [DevicePipeline(model, d, threads=threads) for d in ds.device_ids]
    sensors = sensors_of_manifest(ds.manifest)     # what device_node reads from its topics
    agg = AggregatorPipeline(model, threads=threads, score_threshold=CACHE_THRESHOLD,
                             fusion=FusionConfig('nms', 0.0), class_weights=(), class_thresholds=())
    channel = WirelessChannel(agg.channel_config)
    gen = torch.Generator().manual_seed(seed)
    ax, ay = agg.info.aggregator_xy
    n = len(ds) if max_frames <= 0 else min(len(ds), max_frames)
    out = []
    t0 = time.perf_counter()
    for i in range(n):
        fr = ds.frame(i)
        packets = []
        for k, (dev, pipe) in enumerate(zip(ds.device_ids, devices)):
            rf = fr['rf'][k].astype(np.float32)
            cube = rf[..., 0] + 1j * rf[..., 1]
            sym = pipe.run([fr['images'][k]], [cube], [sensors.camera], [sensors.radar]).symbols
            pose = fr['device_pose'][k]
            dist = max(math.hypot(pose[0] - ax, pose[1] - ay), agg.channel_config.min_distance_m)
            rx = channel(torch.from_numpy(sym), dist, fading=fading, generator=gen)
            packets.append(ReceivedPacket(dev, rx.y[0].numpy(), float(rx.snr_db[0]), dist,
                                          (float(pose[0]), float(pose[1]), float(pose[3]))))
        res = agg.run([packets])[0]
        vis = fr['visible_camera'].any(axis=1) | fr['in_rf_range'].any(axis=1)
        gt = [GtObject(int(fr['seed']) * 100000 + int(fr['object_id'][m]), int(fr['class_id'][m]),
                       tuple(float(v) for v in fr['position'][m][:2]), bool(vis[m]))
              for m in range(len(fr['valid'])) if fr['valid'][m]]
        out.append({'seed': fr['seed'], 'time_s': fr['time_s'], 'gt': gt,
                    'detections': res.detections})
        if (i + 1) % 50 == 0:
            print(f'  {i + 1}/{n} frames, {time.perf_counter() - t0:.0f} s', file=sys.stderr)
    return out


def merge(detections: list[Detection], threshold: float, fusion: FusionConfig) -> list[Detection]:
    """The detections the aggregator would publish from these cached queries."""
    if not detections:
        return []
    # Cached unmerged queries: each names the one device whose cell it is.
    present = sorted(detections[0].present_devices)
    source = np.array([present.index(next(iter(d.devices))) for d in detections])
    return merged_detections(np.array([d.confidence for d in detections]),
                             np.array([d.class_probabilities[1:] for d in detections]),
                             np.array([d.position[:2] for d in detections]),
                             np.array([d.velocity[:2] for d in detections]), threshold, fusion,
                             present, source)


def detection_metrics(frames: list[dict]) -> dict[str, float]:
    """disac-eval's per-frame metrics of the frames' detections against the visible objects."""
    stats = DetectionStats(2.0)
    for fr in frames:
        gt = [g for g in fr['gt'] if g.visible]
        dp = np.array([d.position[:2] for d in fr['detections']]).reshape(-1, 2)
        dc = np.array([int(np.argmax(d.class_probabilities)) for d in fr['detections']])
        stats.add_frame(dc, dp, np.zeros_like(dp), np.array([g.class_id for g in gt]),
                        np.array([g.position for g in gt]).reshape(-1, 2), np.zeros((len(gt), 2)))
    return stats.summary()


def run_tracker(frames: list[dict], config: TrackerConfig, threshold: float,
                warmup_s: float) -> dict[str, float]:
    """Replay detections (those scoring >= threshold) through one tracker config and score the
    tracks."""
    tracker = MultiObjectTracker(config)
    scored: list[ScoringFrame] = []
    seed = None
    start = 0.0
    for fr in frames:
        if fr['seed'] != seed:
            seed, start = fr['seed'], fr['time_s']
            tracker.reset()
        dets: list[Detection] = [d for d in fr['detections'] if d.confidence >= threshold]
        tracks = tracker.update(fr['time_s'], dets)
        if fr['time_s'] - start < warmup_s:
            continue
        scored.append(ScoringFrame(fr['time_s'], fr['gt'], [
            TrackedObject(int(t.id), int(t.class_id), tuple(float(v) for v in t.position[:2]))
            for t in tracks]))
    return score_tracks(scored)


def parse_config(name: str) -> TrackerConfig:
    """'default', 'fleet' or 'key=value;...' overrides of the defaults."""
    if name == 'default':
        return TrackerConfig()
    if name == 'fleet':
        doc = yaml.safe_load((Path(__file__).resolve().parents[1] / 'config' / 'fleet.yaml')
                             .read_text()) or {}
        return TrackerConfig.from_dict(doc.get('tracker', {}))
    data = {}
    for item in filter(None, name.split(';')):
        key, _, value = item.partition('=')
        data[key.strip()] = yaml.safe_load(value)
    return TrackerConfig.from_dict(data)


def parse_fusion(spec: str) -> FusionConfig:
    """'weighted:2.5' or 'nms:1.5' (radius in metres; the method alone keeps its default)."""
    method, _, radius = spec.partition(':')
    return FusionConfig(method, float(radius)) if radius else FusionConfig(method)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', required=True, nargs='+',
                   help='dataset splits (sequential frames per seed) or family folders (their scene_* '
                        'datasets); all are pooled')
    p.add_argument('--model', default=str(Path(__file__).resolve().parents[1] / 'models' / 'default'),
                   help="model folder (default: this checkout's models/default)")
    p.add_argument('--fading', default='rayleigh', choices=('awgn', 'rayleigh'))
    p.add_argument('--seed', type=int, default=0, help='channel noise/fading seed')
    p.add_argument('--max-frames', type=int, default=0, help='0 = the whole split')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--warmup-s', type=float, default=5.0)
    p.add_argument('--fusions', nargs='+', default=['weighted:2.5'],
                   help="detection merging, METHOD:RADIUS_M each (weighted or nms; the "
                        "aggregator's detection_fusion and fusion_radius_m / nms_radius_m)")
    p.add_argument('--thresholds', nargs='+', default=['model'],
                   help="score thresholds (numbers, uncalibrated) and/or 'model' (the model's "
                        'fitted per-class calibration, the aggregator default)')
    p.add_argument('--configs', nargs='+', default=['default'])
    args = p.parse_args()
    try:
        thresholds = [t if t == 'model' else float(t) for t in args.thresholds]
    except ValueError:
        p.error(f"--thresholds: numbers or 'model', got {args.thresholds}")
    if any(t != 'model' and not CACHE_THRESHOLD <= t <= 1.0 for t in thresholds):
        p.error(f'--thresholds must lie in [{CACHE_THRESHOLD}, 1]')
    try:
        configs = {c: parse_config(c) for c in args.configs}
    except Exception as err:  # noqa: BLE001 - a bad override names itself
        p.error(f'--configs: {err}')
    try:
        fusions = {f: parse_fusion(f) for f in args.fusions}
    except Exception as err:  # noqa: BLE001
        p.error(f'--fusions: {err}')
    model = find_model_dir(args.model)
    calibration = load_calibration(stage2_dir(model, 'both', 'tram'))
    t0 = time.perf_counter()
    frames = [fr for data in args.data for scene in load_scenes(data)
              for fr in detect_split(scene.path, model, args.fading, args.seed, args.max_frames,
                                     args.threads)]
    print(f'{len(frames)} frames through the fleet pipeline in {time.perf_counter() - t0:.0f} s '
          f'({args.fading}, SNR from distance)')
    det_cols = ('accuracy', 'precision', 'recall')
    cols = ('tracked_fraction', 'accuracy', 'mota', 'idf1', 'id_switches', 'num_false_positives',
            'position_rmse_m')
    print('| fusion | threshold | detection ' + ' | detection '.join(det_cols) + ' | config | '
          + ' | '.join(cols) + ' |')
    print('|' + '---|' * (len(det_cols) + len(cols) + 3))
    for fname, fusion in fusions.items():
        for th in thresholds:
            if th == 'model':      # the fit for the number of devices each frame has
                cal = calibration
                th, label = 0.5, 'model' + ('' if calibration.class_weights else ' (none)')
            else:
                cal, label = Calibration(), f'{th:g}'
            merged = [dict(fr, detections=merge(fr['detections'], th, cal.fusion(
                fusion, len(fr['detections'][0].present_devices) if fr['detections'] else 1)))
                      for fr in frames]
            d = detection_metrics(merged)
            dvals = ' | '.join(f'{d[c]:.3f}' for c in det_cols)
            for name, cfg in configs.items():
                # merge() already kept what the threshold(s) keep
                s = run_tracker(merged, cfg, 0.0, args.warmup_s)
                vals = [f'{s[c]:.3f}' if isinstance(s[c], float) else str(s[c]) for c in cols]
                print(f'| {fname} | {label} | {dvals} | {name} | ' + ' | '.join(vals) + ' |',
                      flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
