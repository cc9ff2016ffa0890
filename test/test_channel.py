"""Channel model statistics, path loss, and the semantic encoder's power normalisation."""
import math

import pytest
import torch

from disac_ros.core.errors import ConfigError
from disac_ros.core.models.channel import (amplitude_gain, noise_power_dbm, path_loss_db,
                                           power_normalize, snr_db_from_distance,
                                           WirelessChannel)
from disac_ros.core.models.config import ChannelConfig, EncoderConfig
from disac_ros.core.models.semantic_codec import SemanticEncoder


def _unit_symbols(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return power_normalize(torch.randn(batch, length, 2, generator=g))


def _measured_snr_db(x, out):
    """E|a h x|^2 / E|n|^2 from the samples, with n recovered as y - a h x."""
    from disac_ros.core.models.channel import complex_mul
    signal = out.gain.view(-1, 1, 1) * complex_mul(out.h, x)
    noise = out.y - signal
    return 10 * math.log10(signal.pow(2).sum().item() / noise.pow(2).sum().item())


@pytest.mark.parametrize('fading', ['awgn', 'rayleigh'])
@pytest.mark.parametrize('snr_db', [-5.0, 0.0, 10.0, 25.0])
def test_measured_snr_matches_set_snr_within_half_db(fading, snr_db):
    x = _unit_symbols(4000, 64)
    chan = WirelessChannel(ChannelConfig())
    dist = torch.linspace(20.0, 800.0, 4000)   # any distance: the set SNR must still hold
    out = chan(x, dist, snr_db=snr_db, fading=fading,
               generator=torch.Generator().manual_seed(1))
    assert abs(_measured_snr_db(x, out) - snr_db) < 0.5
    assert torch.allclose(out.snr_db, torch.full((4000,), snr_db))


def test_rayleigh_fading_is_unit_power_circular_and_per_packet():
    x = _unit_symbols(20000, 8)
    out = WirelessChannel()(x, 100.0, snr_db=60.0, fading='rayleigh',
                            generator=torch.Generator().manual_seed(2))
    power = out.h.pow(2).sum(-1)
    assert abs(power.mean().item() - 1.0) < 0.03
    # |h|^2 of CN(0, 1) is Exp(1): P(|h|^2 < 0.1) = 1 - e^-0.1
    assert abs((power < 0.1).float().mean().item() - (1 - math.exp(-0.1))) < 0.01
    assert abs(out.h[:, 0].mean().item()) < 0.02 and abs(out.h[:, 1].mean().item()) < 0.02


def test_derived_snr_follows_the_link_budget_and_keeps_noise_fixed():
    cfg = ChannelConfig()
    assert noise_power_dbm(cfg) == pytest.approx(-174 + 70 + 9)
    pl0 = 20 * math.log10(4 * math.pi * 1.0 * 5.9e9 / 299_792_458.0)
    assert path_loss_db(1.0, cfg).item() == pytest.approx(pl0, abs=1e-3)
    assert path_loss_db(100.0, cfg).item() == pytest.approx(pl0 + 27 * 2, abs=1e-3)
    assert snr_db_from_distance(100.0, cfg).item() == pytest.approx(
        23 - (pl0 + 54) - (-95), abs=1e-3)
    x = _unit_symbols(3000, 32)
    dist = torch.cat([torch.full((1500,), 50.0), torch.full((1500,), 400.0)])
    out = WirelessChannel(cfg)(x, dist, fading='awgn', generator=torch.Generator().manual_seed(3))
    # Physical link: the noise floor is the same at every distance, the signal falls with it.
    assert torch.allclose(out.noise_var, out.noise_var[0].expand(3000), rtol=1e-4)
    near = _measured_snr_db(x[:1500], _slice(out, slice(0, 1500)))
    far = _measured_snr_db(x[1500:], _slice(out, slice(1500, 3000)))
    assert near == pytest.approx(snr_db_from_distance(50.0, cfg).item(), abs=0.5)
    assert far == pytest.approx(snr_db_from_distance(400.0, cfg).item(), abs=0.5)


def _slice(out, s):
    from disac_ros.core.models.channel import ChannelOutput
    return ChannelOutput(out.y[s], out.snr_db[s], out.distance_m[s], out.gain[s], out.h[s],
                         out.noise_var[s])


def test_path_loss_is_monotone_in_distance_and_gain_is_relative_to_reference():
    cfg = ChannelConfig()
    d = torch.logspace(0, 3.5, 200)
    pl = path_loss_db(d, cfg)
    assert bool((pl[1:] > pl[:-1]).all())
    gain = amplitude_gain(d, cfg)
    assert bool((gain[1:] < gain[:-1]).all())
    assert amplitude_gain(cfg.ref_distance_m, cfg).item() == pytest.approx(1.0)
    # Below the minimum distance the model is clamped, not singular.
    assert torch.isfinite(path_loss_db(torch.tensor([0.0, 1e-6]), cfg)).all()


def test_received_amplitude_carries_the_path_loss():
    x = _unit_symbols(500, 32)
    chan = WirelessChannel()
    near = chan(x, 50.0, snr_db=40.0, fading='awgn', generator=torch.Generator().manual_seed(0))
    far = chan(x, 500.0, snr_db=40.0, fading='awgn', generator=torch.Generator().manual_seed(0))
    ratio_db = 10 * math.log10(near.y.pow(2).mean().item() / far.y.pow(2).mean().item())
    assert ratio_db == pytest.approx(10 * 2.7 * 1.0, abs=0.2)   # one decade at n = 2.7


def test_channel_is_reproducible_with_a_generator():
    x = _unit_symbols(8, 16)
    chan = WirelessChannel()
    a = chan(x, 120.0, generator=torch.Generator().manual_seed(5))
    b = chan(x, 120.0, generator=torch.Generator().manual_seed(5))
    c = chan(x, 120.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)


def test_channel_rejects_bad_arguments_naming_them():
    x = _unit_symbols(4, 8)
    chan = WirelessChannel()
    with pytest.raises(ConfigError, match='distance_m'):
        chan(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ConfigError, match='distance_m'):
        chan(x, 0.0)
    with pytest.raises(ConfigError, match='snr_db'):
        chan(x, 10.0, snr_db=float('nan'))
    with pytest.raises(ConfigError, match='fading'):
        chan(x, 10.0, fading='rician')
    with pytest.raises(ConfigError, match='channel.path_loss_exponent'):
        ChannelConfig.from_dict({'path_loss_exponent': 9})


def test_encoder_output_is_power_normalised_per_packet():
    torch.manual_seed(0)
    enc = SemanticEncoder(EncoderConfig(feature_dim=24, num_symbols=64, hidden=32))
    x = enc(torch.randn(16, 24) * 7.0)
    assert x.shape == (16, 64, 2)
    power = x.pow(2).sum(-1).mean(-1)
    assert torch.allclose(power, torch.ones(16), atol=1e-4)
    # Payload at 8 bits per real: L complex symbols -> 2L bytes, within the 512-byte budget.
    assert 2 * EncoderConfig().num_symbols <= 512
    with pytest.raises(ValueError, match='feature'):
        enc(torch.randn(2, 25))
