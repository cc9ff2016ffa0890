"""Grouping of device packets by sensor stamp (disac_ros.core.sync.FeatureSynchronizer)."""
import math

import pytest

from disac_ros.core.errors import ConfigError
from disac_ros.core.sync import FeatureSynchronizer, TimedPacket

DEVS = ['dev0', 'dev1', 'dev2']


def pkt(dev, stamp, recv):
    return TimedPacket(dev, stamp, recv, data=(dev, stamp))


def make(**kw):
    return FeatureSynchronizer(DEVS, **{'window_s': 0.1, 'max_wait_s': 0.3, 'active_timeout_s': 1.0, **kw})


def test_a_group_is_ready_when_every_active_device_arrived():
    s = make()
    for d in DEVS:                        # first round: every device becomes active
        assert s.add(pkt(d, 0.0, 0.01)) == 'accepted'
    assert [g.device_ids for g in s.pop_ready(0.02)] == [DEVS]
    s.add(pkt('dev0', 0.2, 0.21))
    s.add(pkt('dev2', 0.203, 0.22))       # within the window: same instant
    assert not s.has_complete(0.22)
    assert s.pop_ready(0.22) == []        # dev1 is active and missing
    s.add(pkt('dev1', 0.198, 0.23))
    assert s.has_complete(0.23)           # what wakes the aggregator's fusion at once
    (g,) = s.pop_ready(0.23)
    assert not s.has_complete(0.23)
    assert g.stamp_s == 0.2 and g.device_ids == DEVS


def test_missing_device_times_out_and_then_is_not_waited_for():
    s = make()
    for d in DEVS:
        s.add(pkt(d, 0.0, 0.0))
    s.pop_ready(0.0)
    s.add(pkt('dev0', 0.2, 0.2))
    s.add(pkt('dev1', 0.2, 0.2))
    assert s.pop_ready(0.45) == []        # waited 0.25 < 0.3
    (g,) = s.pop_ready(0.5)               # max_wait reached: fuse what is there
    assert g.device_ids == ['dev0', 'dev1'] and s.stats.groups_timed_out == 1
    # dev2 silent for > active_timeout: groups no longer wait for it.
    s.add(pkt('dev0', 1.2, 1.2))
    s.add(pkt('dev1', 1.2, 1.21))
    assert [g.device_ids for g in s.pop_ready(1.21)] == [['dev0', 'dev1']]
    assert s.active_devices(1.21) == ['dev0', 'dev1']


def test_out_of_order_packets_are_grouped_and_groups_emitted_in_stamp_order():
    s = make(max_wait_s=10.0)
    for d in DEVS:
        s.add(pkt(d, 0.0, 0.0))
    s.pop_ready(0.0)
    # Stamps 0.4 arrive before the stragglers of 0.2.
    for d in DEVS:
        s.add(pkt(d, 0.4, 0.45))
    s.add(pkt('dev0', 0.2, 0.46))
    groups = s.pop_ready(0.46)            # 0.4 is complete: the older 0.2 goes first
    assert [g.stamp_s for g in groups] == [0.2, 0.4]
    assert s.add(pkt('dev1', 0.2, 0.5)) == 'late'     # its instant was fused already
    assert s.stats.late == 1


def test_duplicates_unknown_devices_and_bad_stamps():
    s = make()
    assert s.add(pkt('dev1', 1.0, 1.0)) == 'accepted'       # anchors the group at 1.0
    assert s.add(pkt('dev0', 1.03, 1.01)) == 'accepted'
    assert s.add(pkt('dev0', 1.04, 1.02)) == 'duplicate'    # farther from the anchor: dropped
    assert s.add(pkt('dev0', 0.99, 1.03)) == 'accepted'     # closer: replaces (the old one counts)
    (g,) = s.flush()
    assert g.packets['dev0'].stamp_s == 0.99 and s.stats.duplicate == 2
    assert s.add(pkt('intruder', 2.0, 2.0)) == 'unknown' and s.stats.unknown == 1
    assert s.add(pkt('dev1', math.nan, 2.0)) == 'late'


def test_staleness_reports_link_latency_and_silence():
    s = make()
    s.add(pkt('dev0', 1.0, 1.25))
    st = s.staleness(2.0)
    assert st['dev0']['latency_s'] == pytest.approx(0.25) and st['dev0']['since_heard_s'] == pytest.approx(0.75)
    assert math.isnan(st['dev1']['since_heard_s'])


def test_no_backlog_when_packets_keep_coming():
    s = make()
    t = 0.0
    for k in range(200):                   # 5 Hz, dev2 dead after the first second
        t = 0.2 * k
        for d in DEVS if k < 5 else DEVS[:2]:
            s.add(pkt(d, t, t + 0.02))
        s.pop_ready(t + 0.03)
        assert s.pending <= 2
    assert s.stats.groups_emitted >= 195


def test_reset_after_time_jumps_back():
    s = make()
    s.add(pkt('dev0', 10.0, 10.0))
    s.flush()
    assert s.add(pkt('dev0', 1.0, 11.0)) == 'late'
    s.reset()
    assert s.add(pkt('dev0', 1.0, 11.0)) == 'accepted'


@pytest.mark.parametrize('kw,field', [({'window_s': 0}, 'window_s'), ({'max_wait_s': -1}, 'max_wait_s'),
                                      ({'active_timeout_s': math.inf}, 'active_timeout_s')])
def test_bad_parameters_name_the_field(kw, field):
    with pytest.raises(ConfigError) as err:
        make(**kw)
    assert err.value.field == field
    with pytest.raises(ConfigError):
        FeatureSynchronizer([])
