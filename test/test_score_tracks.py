"""disac-score-tracks: a synthetic recorded run (ground truth + tracks in an MCAP bag) scored."""
import json

import numpy as np
import pytest

pytest.importorskip('disac_interfaces.msg', reason='needs the built workspace (scripts/setup.sh)')

from rclpy.serialization import serialize_message  # noqa: E402

from disac_interfaces.msg import TrackedObject, TrackedObjectArray  # noqa: E402
from disac_ros.core.bagfile import BagWriter  # noqa: E402
from disac_ros.core.types import ObjectTruth  # noqa: E402
from disac_ros.nodes import conversions as cv  # noqa: E402
from disac_ros.tools import score_tracks  # noqa: E402

T0 = 1_700_000_000.0
TYPE = 'disac_interfaces/msg/TrackedObjectArray'


def gt_msg(t, objects):
    return cv.objects_to_msg(objects, cv.time_to_msg(t), 'world', ['dev0'])


def truth(oid, cls, x, y, visible=True):
    return ObjectTruth(oid, cls, np.array([x, y, 0.0]), np.zeros(3), 0.0, (4.0, 2.0, 1.5),
                       visible_camera={'dev0': visible}, in_rf_range={'dev0': visible})


def track(tid, cls_id, x, y):
    o = TrackedObject()
    o.id, o.classification = tid, cls_id
    o.pose.pose.position.x, o.pose.pose.position.y = x, y
    return o


def write_bag(path, frames):
    """frames: (stamp_s, gt objects, tracks or None, latency_s)."""
    with BagWriter(path) as w:
        w.add_topic('/world/ground_truth', TYPE)
        w.add_topic('/aggregator/tracks', TYPE)
        for t, gt, tracks, lat in frames:
            w.write('/world/ground_truth', int((t + 0.001) * 1e9), serialize_message(gt_msg(t, gt)))
            if tracks is not None:
                m = TrackedObjectArray()
                m.header = cv.make_header(cv.time_to_msg(t), 'world')
                m.objects = tracks
                w.write('/aggregator/tracks', int((t + lat) * 1e9), serialize_message(m))


def run(capsys, *args):
    code = score_tracks.main(list(args))
    out = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(out[0]) if out else None), out


def test_perfect_run_scores_one_and_reports_latency(tmp_path, capsys):
    frames = []
    for k in range(30):
        t = T0 + 0.2 * k
        gt = [truth(7, 'car', k * 0.5, 0.0), truth(9, 'pedestrian', 10.0, k * 0.1)]
        tracks = [track(1, 1, k * 0.5 + 0.3, 0.0), track(2, 3, 10.0, k * 0.1 + 0.4)] if k >= 3 else []
        frames.append((t, gt, tracks, 0.05 if k % 2 else 0.15))
    write_bag(tmp_path / 'bag', frames)
    code, res, lines = run(capsys, '--bag', str(tmp_path / 'bag'), '--warmup-s', '1.0')
    assert code == 0 and len(lines) == 1
    for key in ('mota', 'idf1', 'accuracy', 'position_rmse_m', 'tracked_fraction', 'latency_p50_ms',
                'latency_p95_ms'):
        assert key in res
    assert res['mota'] == pytest.approx(1.0) and res['idf1'] == pytest.approx(1.0)
    assert res['accuracy'] == pytest.approx(1.0) and res['tracked_fraction'] == pytest.approx(1.0)
    assert res['position_rmse_m'] == pytest.approx(np.sqrt((0.3 ** 2 + 0.4 ** 2) / 2), abs=1e-3)
    assert 50.0 <= res['latency_p50_ms'] <= 150.0 and res['latency_p95_ms'] == pytest.approx(150.0, abs=1.0)
    assert res['first_tracks_s'] == pytest.approx(0.6) and res['id_switches'] == 0
    # Ground truth is logged 1 ms after its stamp: the pipeline latency excludes that lag.
    assert res['pipeline_latency_p50_ms'] == pytest.approx(res['latency_p50_ms'] - 1.0, abs=0.01)


def test_id_switch_wrong_class_missing_frames_and_invisible_objects(tmp_path, capsys):
    frames = []
    for k in range(20):
        t = T0 + 0.2 * k
        gt = [truth(1, 'car', 0.0, 0.0), truth(2, 'truck', 20.0, 0.0), truth(3, 'cyclist', 40.0, 0.0, visible=False)]
        tid = 5 if k < 10 else 6                         # the car's track id switches once
        tracks = [track(tid, 1, 0.0, 0.0), track(8, 1, 20.0, 0.0)]   # the truck is called a car
        frames.append((t, gt, None if k in (15, 16) else tracks, 0.05))   # two outputs lost
    write_bag(tmp_path / 'bag', frames)
    code, res, _ = run(capsys, '--bag', str(tmp_path / 'bag'), '--warmup-s', '0')
    assert code == 0
    assert res['id_switches'] == 1 and res['idf1'] < 1.0
    assert res['accuracy'] == pytest.approx(0.5)
    # 2 visible objects x 20 frames; the truck never counts (wrong class), 2 car frames lost.
    assert res['tracked_fraction'] == pytest.approx(18 / 40)
    code, res_all, _ = run(capsys, '--bag', str(tmp_path / 'bag'), '--warmup-s', '0', '--visibility', 'all')
    assert res_all['num_objects'] > res['num_objects']   # the invisible cyclist now counts


def test_missing_topics_and_bags_exit_2(tmp_path, capsys):
    with BagWriter(tmp_path / 'gt_only') as w:
        w.add_topic('/world/ground_truth', TYPE)
        w.write('/world/ground_truth', int(T0 * 1e9), serialize_message(gt_msg(T0, [truth(1, 'car', 0, 0)])))
    assert score_tracks.main(['--bag', str(tmp_path / 'gt_only')]) == 2
    assert 'no /aggregator/tracks' in capsys.readouterr().err
    assert score_tracks.main(['--bag', str(tmp_path / 'nope')]) == 2
