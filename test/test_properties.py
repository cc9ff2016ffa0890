"""Property-based tests (hypothesis) of the ROS-free codec and synchroniser under hostile input.

Whatever arrives on the wire, the codec either returns finite values of the declared shape or
raises CodecError (never another exception, never inf/NaN), a signed packet verifies exactly
when nothing it covers changed, and the synchroniser never raises, never emits a group twice and
never lets one device's stamps block the others for longer than its wait.
"""
from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings, strategies as st
import numpy as np

from disac_ros.core.packet import (CodecError, KeyRing, PacketFields, QuantizedPayload, dequantize,
                                   quantize)
from disac_ros.core.sync import FeatureSynchronizer, TimedPacket

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
anything = st.floats(allow_nan=True, allow_infinity=True)


@SETTINGS
@given(shape=st.lists(st.integers(0, 70), min_size=0, max_size=3), scale=anything,
       zero_point=st.integers(-2 ** 33, 2 ** 33), bits=st.integers(-2, 12),
       payload=st.binary(max_size=300))
def test_dequantize_returns_finite_values_or_a_codec_error(shape, scale, zero_point, bits, payload):
    p = QuantizedPayload(shape=tuple(shape), scale=scale, zero_point=zero_point, bits=bits, payload=payload)
    try:
        values = dequantize(p)
    except CodecError:
        return
    assert values.shape == tuple(shape) and values.dtype == np.float32
    assert np.isfinite(values).all()


@SETTINGS
@given(values=st.lists(st.tuples(finite, finite), min_size=1, max_size=64), bits=st.integers(2, 8))
def test_quantize_round_trips_within_half_a_step(values, bits):
    x = np.asarray(values, dtype=np.float32)
    try:
        p = quantize(x, bits)
    except CodecError:
        return
    y = dequantize(p)
    assert y.shape == x.shape
    # Half a step, or one step where the top of float32's range forced the scale a hair down.
    step = float(np.float32(p.scale))
    assert np.all(np.abs(y.astype(np.float64) - x) <= step * (1.0 if np.abs(x).max() > 1e38 else 0.5) * 1.001 + 1e-30)


@SETTINGS
@given(seq=st.integers(0, 2 ** 64 - 1), sec=st.integers(-2 ** 31, 2 ** 31 - 1),
       nanosec=st.integers(0, 999_999_999), pose=st.lists(finite, min_size=7, max_size=7),
       flip=st.sampled_from(['none', 'seq', 'stamp', 'pose', 'device', 'symbols']),
       scope=st.sampled_from(['payload', 'header']))
def test_a_tag_verifies_exactly_when_nothing_it_covers_changed(seq, sec, nanosec, pose, flip, scope):
    ring = KeyRing.from_mapping({'shared_secret': 'hex:' + '5a' * 32})
    payload = quantize(np.linspace(-1, 1, 32, dtype=np.float32).reshape(16, 2), 8)
    fields = PacketFields('dev0', seq, 1, sec, nanosec, payload, tuple(pose))
    tag = ring.sign(fields, scope)
    changed = {
        'none': fields,
        'seq': PacketFields('dev0', seq ^ 1, 1, sec, nanosec, payload, tuple(pose)),
        'stamp': PacketFields('dev0', seq, 1, sec, nanosec ^ 1, payload, tuple(pose)),
        'pose': PacketFields('dev0', seq, 1, sec, nanosec, payload, (pose[0] + 1.0, *pose[1:])),
        'device': PacketFields('dev1', seq, 1, sec, nanosec, payload, tuple(pose)),
        'symbols': PacketFields('dev0', seq, 1, sec, nanosec, quantize(np.zeros((16, 2), np.float32) + 0.5, 6),
                                tuple(pose)),
    }[flip]
    if flip == 'pose' and pose[0] + 1.0 == pose[0]:
        return                                  # too large to change by 1
    expect = flip == 'none' or (flip == 'symbols' and scope == 'header')
    assert ring.verify(changed, tag, scope) is expect


packet_events = st.lists(st.tuples(st.sampled_from(['a', 'b', 'c', 'x']),
                                   st.one_of(finite.map(float), anything),
                                   st.floats(0.0, 5.0)), max_size=60)


@SETTINGS
@given(events=packet_events)
def test_synchronizer_never_raises_and_emits_each_packet_at_most_once(events):
    sync = FeatureSynchronizer(['a', 'b', 'c'], window_s=0.1, max_wait_s=0.3, active_timeout_s=1.0)
    now, emitted = 100.0, []
    for k, (dev, stamp, dt) in enumerate(events):
        now += dt
        result = sync.add(TimedPacket(dev, stamp, now, k))
        assert result in ('accepted', 'late', 'duplicate', 'unknown')
        for g in sync.pop_ready(now):
            assert all(math.isfinite(p.stamp_s) for p in g.packets.values())
            emitted.extend(p.data for p in g.packets.values())
    for g in sync.pop_ready(now + 10.0):
        emitted.extend(p.data for p in g.packets.values())
    assert len(emitted) == len(set(emitted))
    assert sync.pending == 0
