"""disac-score-tracks: score a recorded run's tracks against the simulator's ground truth.

    disac-score-tracks --bag out/demo/bag [BAG2 ...] [--tracks /aggregator/tracks] [--gt /world/ground_truth]
        [--max-distance 2.0] [--warmup-s 5] [--visibility any|camera|all]

Reads the bag (rosbags; no ROS needed), pairs every ground-truth message with the tracks message of
the same sensor stamp (nearest within ``--stamp-tolerance``; a ground-truth frame without one is
scored with no tracks, so dropped outputs count as misses), skips the first ``--warmup-s``
seconds, and prints ONE JSON object: the metrics of :func:`disac_ros.core.mot_scoring.score_tracks`
(``mota``, ``idf1``, ``accuracy``, ``position_rmse_m``, ``tracked_fraction``, ``id_switches``, ...)
plus

* ``latency_p50_ms`` / ``latency_p95_ms``: log (record) time of each tracks message minus its
  header stamp, i.e. sensor stamp to tracks as seen by the recorder;
* ``pipeline_latency_p50_ms`` / ``_p95_ms``: log time of each tracks message minus the log time of
  the ground truth of the same stamp, i.e. from when the simulator published the instant to
  tracks; unlike the stamp-based latency it excludes how far a slow simulator's stamps trail the
  wall clock (world_node's ``stamp_lag_s``);
* ``first_tracks_s``: from the first ground truth to the first non-empty tracks message (stamps);
* ``latency_trend_ms_per_min``: slope of the latency over the run (a growing backlog shows here).

Ground-truth objects count as visible when a device senses them (``any``: camera or RF, the
objects the models are trained to find; ``camera``: camera only; ``all``: every object).
Exit status: 0 on success, 2 on bad input (unreadable bag, missing topics).
"""
from __future__ import annotations

import argparse
from bisect import bisect_left
import json
import math
import sys
from typing import Any, Sequence

import numpy as np

from disac_ros.core.errors import ConfigError
from disac_ros.core.types import SENSED_CAMERA

TRACKS_TOPIC = '/aggregator/tracks'
GT_TOPIC = '/world/ground_truth'
MSGTYPE = 'disac_interfaces/msg/TrackedObjectArray'


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see --help)."""
    p = argparse.ArgumentParser(prog='disac-score-tracks', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--bag', required=True, nargs='+',
                   help='rosbag2 folder (mcap or sqlite3); several are read as one recording')
    p.add_argument('--tracks', default=TRACKS_TOPIC, help=f'tracks topic (default {TRACKS_TOPIC})')
    p.add_argument('--gt', default=GT_TOPIC, help=f'ground-truth topic (default {GT_TOPIC})')
    p.add_argument('--max-distance', type=float, default=2.0, help='match gate in metres (default 2)')
    p.add_argument('--warmup-s', type=float, default=5.0, help='skip this many seconds of stamps at the start')
    p.add_argument('--stamp-tolerance', type=float, default=0.05, help='max |GT stamp - tracks stamp| (s)')
    p.add_argument('--visibility', choices=('any', 'camera', 'all'), default='any',
                   help='which ground-truth objects must be tracked (default: sensed by any device)')
    return p.parse_args(argv)


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _objects(msg: Any, gt: bool, visibility: str) -> list:
    from disac_ros.core.mot_scoring import GtObject, TrackedObject
    out = []
    for o in msg.objects:
        pos = (float(o.pose.pose.position.x), float(o.pose.pose.position.y))
        if gt:
            bits = [int(b) for b in o.sensed_by_modalities]
            if visibility == 'all':
                visible = True
            elif visibility == 'camera':
                visible = any(b & SENSED_CAMERA for b in bits)
            else:
                visible = any(bits)
            out.append(GtObject(int(o.id), int(o.classification), pos, visible))
        else:
            out.append(TrackedObject(int(o.id), int(o.classification), pos))
    return out


GtRecord = tuple[int, Any, int]        # (stamp_ns, message, log_ns)
TracksRecord = tuple[int, int, Any]    # (stamp_ns, log_ns, message)


def load_run(bag: str | Sequence[str], tracks_topic: str, gt_topic: str) -> tuple[list[GtRecord], list[TracksRecord]]:
    """(ground truth [(stamp_ns, msg, log_ns)], tracks [(stamp_ns, log_ns, msg)]) from one bag,
    or from several recorded at the same time on one host (e.g. ground truth on the sensing side
    of a network, tracks on the aggregator's: log times are the same wall clock)."""
    from disac_ros.core.bagfile import make_typestore, read_messages
    bags = [bag] if isinstance(bag, (str, bytes)) or not isinstance(bag, Sequence) else list(bag)
    store = make_typestore()
    gt: list[GtRecord] = []
    tracks: list[TracksRecord] = []
    for one in bags:
        for m in read_messages(one, [tracks_topic, gt_topic]):
            if m.msgtype != MSGTYPE:
                raise ConfigError(m.topic, f'expected {MSGTYPE}, got {m.msgtype}')
            msg = store.deserialize_cdr(m.data, m.msgtype)
            if m.topic == gt_topic:
                gt.append((_stamp_ns(msg), msg, m.timestamp_ns))
            else:
                tracks.append((_stamp_ns(msg), m.timestamp_ns, msg))
    where = ' or '.join(str(b) for b in bags)
    if not gt:
        raise ConfigError('--gt', f'no {gt_topic} messages in {where}')
    if not tracks:
        raise ConfigError('--tracks', f'no {tracks_topic} messages in {where}')
    gt.sort(key=lambda x: x[0])
    tracks.sort(key=lambda x: x[0])
    return gt, tracks


def score_run(gt: list[GtRecord], tracks: list[TracksRecord], *, max_distance_m: float = 2.0,
              warmup_s: float = 5.0, stamp_tolerance_s: float = 0.05, visibility: str = 'any') -> dict[str, Any]:
    """Pair frames, score them, add latency and start-up figures (see the module docstring)."""
    from disac_ros.core.mot_scoring import ScoringFrame, score_tracks
    t0 = gt[0][0]
    stamps = [s for s, _, _ in tracks]
    frames = []
    for stamp, gmsg, _ in gt:
        if (stamp - t0) * 1e-9 < warmup_s:
            continue
        i = bisect_left(stamps, stamp)
        best = min((j for j in (i - 1, i) if 0 <= j < len(stamps)), key=lambda j: abs(stamps[j] - stamp),
                   default=None)
        tmsg = tracks[best][2] if best is not None and abs(stamps[best] - stamp) * 1e-9 <= stamp_tolerance_s else None
        frames.append(ScoringFrame(stamp * 1e-9, _objects(gmsg, True, visibility),
                                   _objects(tmsg, False, visibility) if tmsg is not None else []))
    lat = [(log - s) * 1e-9 for s, log, _ in tracks if (s - t0) * 1e-9 >= warmup_s]
    result = score_tracks(frames, lat, max_distance_m=max_distance_m)
    gt_log = {s: log for s, _, log in gt}
    pipe = [(log - gt_log[s]) * 1e-9 for s, log, _ in tracks if s in gt_log and (s - t0) * 1e-9 >= warmup_s]
    result['pipeline_latency_p50_ms'] = float(np.percentile(pipe, 50) * 1e3) if pipe else math.nan
    result['pipeline_latency_p95_ms'] = float(np.percentile(pipe, 95) * 1e3) if pipe else math.nan
    first = next((s for s, _, m in tracks if len(m.objects) > 0), None)
    result['first_tracks_s'] = (first - t0) * 1e-9 if first is not None else math.nan
    if len(lat) >= 3:
        t = np.array([log * 1e-9 for s, log, _ in tracks if (s - t0) * 1e-9 >= warmup_s])
        slope = np.polyfit(t - t[0], np.array(lat), 1)[0]
        result['latency_trend_ms_per_min'] = float(slope * 1e3 * 60.0)
    else:
        result['latency_trend_ms_per_min'] = math.nan
    result['duration_s'] = (gt[-1][0] - t0) * 1e-9
    result['num_tracks_messages'] = len(tracks)
    result['num_gt_messages'] = len(gt)
    result['warmup_s'] = warmup_s
    result['max_distance_m'] = max_distance_m
    result['visibility'] = visibility
    return result


def _json_safe(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``disac-score-tracks``: prints one JSON object (NaN as null)."""
    args = parse_args(argv)
    try:
        gt, tracks = load_run(args.bag, args.tracks, args.gt)
        result = score_run(gt, tracks, max_distance_m=args.max_distance, warmup_s=args.warmup_s,
                           stamp_tolerance_s=args.stamp_tolerance, visibility=args.visibility)
    except ConfigError as exc:
        print(f'disac-score-tracks: {exc}', file=sys.stderr)
        return 2
    print(json.dumps({k: _json_safe(v) for k, v in sorted(result.items())}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
