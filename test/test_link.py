"""Link emulation (disac_ros.core.link): SNR from distance, channel on the symbols, loss, delay,
bandwidth cap, determinism and config errors."""
import math

import numpy as np
import pytest

from disac_ros.core.errors import ConfigError
from disac_ros.core.link import LinkConfig, LinkEmulator
from disac_ros.core.models.channel import snr_db_from_distance
from disac_ros.core.models.config import ChannelConfig
from disac_ros.core.packet import dequantize, quantize


def symbols(n=64, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 2))
    return x / np.sqrt((x ** 2).sum(-1).mean())


PAYLOAD = quantize(symbols(), 8)


def test_distance_and_snr_follow_the_path_loss_model():
    link = LinkEmulator(LinkConfig(aggregator_xy=(10.0, 0.0)))
    out = link.transmit('dev0', PAYLOAD, (10.0, 100.0), 0.0)
    assert out.distance_m == pytest.approx(100.0)
    assert out.snr_db == pytest.approx(float(snr_db_from_distance(100.0, ChannelConfig())), abs=1e-4)
    far = link.transmit('dev0', PAYLOAD, (10.0, 300.0), 0.1)
    assert far.snr_db < out.snr_db - 10           # 2.7 * 10 log10(3) = 12.9 dB less
    fixed = LinkEmulator(LinkConfig(snr_mode='fixed', fixed_snr_db=3.0)).transmit('d', PAYLOAD, (50, 0), 0.0)
    assert fixed.snr_db == 3.0


def test_no_fading_passes_the_payload_unchanged():
    out = LinkEmulator(LinkConfig(fading='none')).transmit('dev0', PAYLOAD, (30.0, 0.0), 0.0)
    assert out.delivered and out.payload == PAYLOAD


def test_channel_noise_grows_as_snr_falls():
    x = dequantize(PAYLOAD)

    def err(snr):
        link = LinkEmulator(LinkConfig(fading='awgn', snr_mode='fixed', fixed_snr_db=snr,
                                       channel=ChannelConfig(ref_distance_m=100.0)), seed=1)
        out = link.transmit('dev0', PAYLOAD, (100.0, 0.0), 0.0)   # at the reference distance: gain 1
        y = dequantize(out.payload)
        assert y.shape == x.shape
        return float(np.mean((y - x) ** 2))

    hi, lo = err(30.0), err(0.0)
    assert hi < 0.01                                  # 30 dB: noise power 1e-3 (+ quantisation)
    assert lo == pytest.approx(0.5, rel=0.3)          # 0 dB: E|n|^2 = 1, 0.5 per component
    # Rayleigh: one complex gain per packet, so the received block is a rotated, scaled x.
    ray = LinkEmulator(LinkConfig(fading='rayleigh', snr_mode='fixed', fixed_snr_db=40.0), seed=2)
    y = dequantize(ray.transmit('dev0', PAYLOAD, (100.0, 0.0), 0.0).payload)
    z, w = x[:, 0] + 1j * x[:, 1], y[:, 0] + 1j * y[:, 1]
    h = np.vdot(z, w) / np.vdot(z, z)
    assert np.mean(np.abs(w - h * z) ** 2) < 0.02 * np.mean(np.abs(w) ** 2)


def test_fixed_loss_rate_and_snr_dependent_loss():
    link = LinkEmulator(LinkConfig(loss_probability=0.3, fading='none'), seed=3)
    outs = [link.transmit('dev0', PAYLOAD, (20.0, 0.0), 0.1 * i) for i in range(2000)]
    lost = sum(not o.delivered for o in outs) / len(outs)
    assert 0.26 < lost < 0.34 and {o.reason for o in outs if not o.delivered} == {'loss'}
    assert all(LinkEmulator(LinkConfig(loss_probability=1.0)).transmit('d', PAYLOAD, (1, 1), 0).reason == 'loss'
               for _ in range(5))
    wf = LinkEmulator(LinkConfig(fading='none', loss_snr_midpoint_db=10.0, loss_snr_width_db=1.0), seed=4)
    near = [wf.transmit('near', PAYLOAD, (20.0, 0.0), i) for i in range(300)]       # ~30 dB
    far = [wf.transmit('far', PAYLOAD, (400.0, 0.0), i) for i in range(300)]       # ~0 dB
    assert sum(o.delivered for o in near) > 295 and sum(o.delivered for o in far) < 5
    assert {o.reason for o in far if not o.delivered} == {'snr'}
    assert wf.loss_probability(10.0) == pytest.approx(0.5)


def test_token_bucket_caps_the_rate_without_queueing():
    size = len(PAYLOAD.payload)                         # 128 bytes
    link = LinkEmulator(LinkConfig(fading='none', bandwidth_bps=size * 8 * 5.0, bucket_bytes=2 * size), seed=0)
    outs = [link.transmit('dev0', PAYLOAD, (20.0, 0.0), 0.1 * i) for i in range(100)]   # 10 Hz offered
    ok = sum(o.delivered for o in outs)
    assert 49 <= ok <= 53                               # 5 Hz pass (+ the initial burst)
    assert {o.reason for o in outs if not o.delivered} == {'bandwidth'}
    # Another device has its own bucket.
    assert link.transmit('dev1', PAYLOAD, (20.0, 0.0), 10.0).delivered


def test_delay_and_jitter_can_reorder():
    link = LinkEmulator(LinkConfig(fading='none', delay_s=0.05, jitter_s=0.02), seed=5)
    outs = [link.transmit('dev0', PAYLOAD, (20.0, 0.0), 0.001 * i) for i in range(200)]
    delays = np.array([o.deliver_at_s - 0.001 * i for i, o in enumerate(outs)])
    assert np.all(delays >= 0.05) and delays.max() > 0.07
    arrival = [o.deliver_at_s for o in outs]
    assert any(b < a for a, b in zip(arrival, arrival[1:]))      # some packets overtake others


def test_seeded_and_independent_of_interleaving():
    cfg = LinkConfig(loss_probability=0.2, jitter_s=0.01)

    def run(order):
        link = LinkEmulator(cfg, seed=7)
        res = {}
        for i, dev in order:
            o = link.transmit(dev, PAYLOAD, (50.0, 10.0), float(i))
            res[(dev, i)] = (o.delivered, o.deliver_at_s, o.payload)
        return res

    a = [(i, d) for i in range(30) for d in ('dev0', 'dev1')]
    b = [(i, 'dev1') for i in range(30)] + [(i, 'dev0') for i in range(30)]
    ra, rb = run(a), run(b)
    assert ra.keys() == rb.keys()
    for k in ra:
        assert ra[k][0] == rb[k][0] and (math.isnan(ra[k][1]) or ra[k][1] == rb[k][1]) and ra[k][2] == rb[k][2]
    other = LinkEmulator(cfg, seed=8)
    assert [other.transmit('dev0', PAYLOAD, (50, 10), i).delivered for i in range(30)] != \
        [ra[('dev0', i)][0] for i in range(30)]


@pytest.mark.parametrize('kwargs,field', [
    ({'fading': 'rician'}, 'link.fading'), ({'loss_probability': 1.5}, 'link.loss_probability'),
    ({'delay_s': -1.0}, 'link.delay_s'), ({'bits': 1}, 'link.bits'), ({'bucket_bytes': 0}, 'link.bucket_bytes'),
    ({'snr_mode': 'x'}, 'link.snr_mode'), ({'jitter_s': math.nan}, 'link.jitter_s')])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        LinkConfig(**kwargs)
    assert err.value.field == field


def test_from_dict_and_bad_device_position():
    cfg = LinkConfig.from_dict({'aggregator_xy': [1, 2], 'channel': {'path_loss_exponent': 3.0}})
    assert cfg.aggregator_xy == (1.0, 2.0) and cfg.channel.path_loss_exponent == 3.0
    with pytest.raises(ConfigError, match='link.colour'):
        LinkConfig.from_dict({'colour': 1})
    with pytest.raises(ConfigError, match='device_xy'):
        LinkEmulator().transmit('dev0', PAYLOAD, (math.nan, 0.0), 0.0)
