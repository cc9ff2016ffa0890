"""Evaluation: matching metrics, the digital chain's cliff, comparisons and the report files."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from disac_ros.core.evaluation import baselines
from disac_ros.core.evaluation.metrics import (DetectionStats, detections_from_prediction,
                                               FeatureError, match)
from disac_ros.core.evaluation.report import comparisons, markdown, write_report
from disac_ros.core.models.heads import SetPrediction


def test_matching_gates_at_two_metres_and_is_one_to_one() -> None:
    det = np.array([[0.0, 0.0], [10.0, 0.0], [0.5, 0.0]])
    gt = np.array([[0.4, 0.0], [12.5, 0.0]])
    rows, cols = match(det, gt, 2.0)
    assert list(zip(rows.tolist(), cols.tolist())) == [(2, 0)]   # nearest wins; 2.5 m is out
    assert match(np.zeros((0, 2)), gt, 2.0)[0].size == 0


def test_detection_stats_accuracy_precision_recall_rmse() -> None:
    s = DetectionStats(2.0)
    # frame 1: two objects, both found, one with the wrong class; one false positive
    s.add_frame(np.array([1, 3, 2]), np.array([[0.0, 0.0], [5.0, 1.0], [40.0, 0.0]]),
                np.zeros((3, 2)), np.array([1, 2]), np.array([[0.0, 1.0], [5.0, 0.0]]),
                np.array([[1.0, 0.0], [0.0, 0.0]]))
    # frame 2: everything lost
    s.add_missed(np.array([4, 4]))
    m = s.summary()
    assert m['num_gt'] == 4 and m['num_detections'] == 3 and m['num_matched'] == 2
    assert m['accuracy'] == pytest.approx(1 / 4)
    assert m['class_accuracy'] == pytest.approx(1 / 2)
    assert m['precision'] == pytest.approx(2 / 3)
    assert m['recall'] == pytest.approx(2 / 4)
    assert m['position_rmse_m'] == pytest.approx(1.0)
    assert m['velocity_rmse_m'] == pytest.approx(math.sqrt(0.5))
    # per class: the car found as a car, the truck found as a pedestrian, both cyclists missed
    pc = s.per_class()
    conf = np.array(pc['confusion'])
    assert conf[1, 1] == 1 and conf[2, 3] == 1 and conf[4, 0] == 2 and conf.sum() == 4
    assert pc['per_class_accuracy']['car'] == 1.0 and pc['per_class_accuracy']['truck'] == 0.0
    assert pc['per_class_accuracy']['cyclist'] == 0.0
    assert math.isnan(pc['per_class_accuracy']['pedestrian'])      # no pedestrian in the data
    s.add_frame(np.zeros(0), np.zeros((0, 2)), np.zeros((0, 2)), np.array([9]),
                np.zeros((1, 2)), np.zeros((1, 2)))               # unknown id: not in the table
    assert np.array(s.per_class()['confusion']).sum() == 4


def test_detections_use_the_object_probability_threshold() -> None:
    logits = torch.tensor([[[5.0, 0, 0, 0, 0], [0.0, 0, 6.0, 0, 0]]])
    pred = SetPrediction(logits, torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), torch.zeros(1, 2, 2))
    (cls, pos, _), = detections_from_prediction(pred, 0.5)
    assert cls.tolist() == [2] and pos.tolist() == [[3.0, 4.0]]


def test_feature_nmse_in_db() -> None:
    fe = FeatureError()
    t = np.ones((4, 8))
    fe.add(t * 1.1, t)
    assert fe.nmse_db() == pytest.approx(-20.0, abs=1e-9)
    assert math.isnan(FeatureError().nmse_db())


def test_digital_chain_is_delivered_above_the_capacity_cliff_and_lost_below() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    rfm = rng.normal(size=(2, 2, 8, 16)).astype(np.float32)
    pay = baselines.digital_payload(imgs, rfm, 50, 4)
    assert pay.images.shape == imgs.shape and pay.rf.shape == rfm.shape
    assert np.all(pay.bytes > 8 * 16 // 2)
    assert np.abs(pay.rf - rfm).max() < (rfm.max() - rfm.min()) / 15 + 1e-6
    bits = 8 * pay.bytes[0]
    uses = 1000
    snr_needed = 10 * math.log10(2 ** (bits / uses) - 1)
    ok = baselines.delivered(np.array([pay.bytes[0]] * 2), np.array([snr_needed + 0.1,
                                                                    snr_needed - 0.1]),
                             np.ones(2), uses)
    assert ok.tolist() == [True, False]
    # a deep fade loses a packet that AWGN at the same SNR would deliver
    assert not baselines.delivered(pay.bytes[:1], np.array([snr_needed + 3]), np.array([0.1]),
                                   uses)[0]


def _rows() -> list[dict]:
    base = dict(sweep='devices', fading='rayleigh', snr_db=10.0, distance_m=100.0, frames=10,
                precision=0.9, recall=0.9, velocity_rmse_m=1.0, bytes_per_device_frame=128.0,
                delivered_fraction=1.0, class_accuracy=1.0)
    return [dict(base, method='disac', K=4, accuracy=0.9, position_rmse_m=0.5, nmse_db=-10.0),
            dict(base, method='rf_only', K=4, accuracy=0.3, position_rmse_m=1.0, nmse_db=-7.0),
            dict(base, method='camera_only', K=4, accuracy=0.6, position_rmse_m=2.0,
                 nmse_db=float('nan')),
            dict(base, method='rf_only', K=1, accuracy=0.1, position_rmse_m=1.5, nmse_db=-5.0),
            dict(base, method='digital_jpeg', K=4, accuracy=0.0, position_rmse_m=float('nan'),
                 nmse_db=0.0, sweep='snr')]


def test_comparisons_follow_the_stated_formulas() -> None:
    ev = SimpleNamespace(reference_fading='rayleigh', reference_snr_db=10.0)
    c = comparisons(_rows(), ev, 4)
    rf = c['same_K']['rf_only']
    assert rf['relative_accuracy_gain_pct'] == pytest.approx(200.0)
    assert rf['rmse_reduction_pct'] == pytest.approx(50.0)
    lin = 10 ** (-1.0), 10 ** (-0.7)
    assert rf['nmse_reduction_pct'] == pytest.approx(100 * (lin[1] - lin[0]) / lin[1])
    assert c['same_K']['camera_only']['nmse_reduction_pct'] is None
    assert c['same_K']['mean_over_unimodal']['relative_accuracy_gain_pct'] == pytest.approx(
        (200.0 + 50.0) / 2)
    assert c['single_device_K1']['rf_only']['relative_accuracy_gain_pct'] == pytest.approx(800.0)
    assert 'acc_disac - acc_baseline' in c['formulas']['relative_accuracy_gain_pct']


def test_report_writes_strict_json_markdown_and_plots(tmp_path: Path) -> None:
    rows = _rows()
    ev = SimpleNamespace(reference_fading='rayleigh', reference_snr_db=10.0)
    result = {'rows': rows, 'comparisons': comparisons(rows, ev, 4),
              'meta': {'checkpoint': 'x', 'frames': 10}}
    files = write_report(result, tmp_path)
    data = json.loads(files['json'].read_text())            # strict: NaN became null
    assert data['rows'][2]['nmse_db'] is None
    md = files['markdown'].read_text()
    assert '| disac | 4 | rayleigh |' in md and 'relative_accuracy_gain_pct' in md
    pngs = sorted(p.name for p in tmp_path.glob('*.png'))
    assert pngs == ['vs_devices.png', 'vs_snr_rayleigh.png']
    assert all((tmp_path / p).read_bytes()[:4] == b'\x89PNG' for p in pngs)
    assert markdown(result).count('\n') > 10
    assert '## Per class' not in md                     # rows without per-class counts
    per = {'per_class_accuracy': {'car': 0.9, 'truck': float('nan'), 'pedestrian': 0.5,
                                  'cyclist': 0.25},
           'confusion': [[0] * 5, [1, 9, 0, 0, 0], [0] * 5, [1, 0, 0, 1, 0], [1, 0, 0, 2, 1]]}
    rows[0].update(per)
    text = markdown({'rows': rows, 'comparisons': comparisons(rows, ev, 4), 'meta': {}})
    assert '## Per class (K = 4, rayleigh, 10.0 dB)' in text
    assert '| disac | 0.900 | – | 0.500 | 0.250 | 10 |' in text
    assert '| cyclist | 1 | 0 | 0 | 2 | 1 |' in text
    # Read back from sorted-key JSON, the columns keep the class-id order of the matrix.
    back = json.loads(json.dumps({'rows': rows, 'comparisons': comparisons(rows, ev, 4),
                                  'meta': {}}, sort_keys=True))
    assert markdown(back) == text
    # A report re-rendered from metrics.json (NaN stored as null) shows the same dashes.
    reread = markdown(json.loads(files['json'].read_text()))
    table = [line for line in reread.splitlines() if line.startswith('|')]
    assert table == [line for line in md.splitlines() if line.startswith('|')]   # same rows, order
    assert not any('None' in line for line in table) and reread.count('–') == md.count('–')


def test_evaluation_quantises_symbols_as_the_device_codec_does() -> None:
    import torch
    from disac_ros.core import packet
    from disac_ros.core.evaluation.evaluate import Condition, quantise_symbols
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((5, 256, 2)).astype(np.float32))
    for bits in (2, 4, 8):
        got = quantise_symbols(x, bits)
        for i in range(len(x)):
            want = packet.dequantize(packet.quantize(x[i].numpy(), bits))
            np.testing.assert_allclose(got[i].numpy(), want, rtol=0, atol=1e-5)
        assert len(packet.quantize(x[0].numpy(), bits).payload) == packet.payload_bytes(256, bits)
    assert torch.count_nonzero(quantise_symbols(torch.zeros(1, 4, 2), 4)) == 0
    with pytest.raises(ValueError):
        quantise_symbols(x, 1)
    # Unquantised conditions keep their seeds; a quantised one gets its own.
    c = Condition('snr', 10.0, 'rayleigh', [0, 1], 30.0)
    assert c.key() == Condition('snr', 10.0, 'rayleigh', [0, 1], 30.0, 0).key() != \
        Condition('snr', 10.0, 'rayleigh', [0, 1], 30.0, 4).key()
