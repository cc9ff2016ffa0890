"""DeviceDecoders: per-device routing, its errors, and the checkpoint round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from disac_ros.core.errors import ConfigError
from disac_ros.core.models.checkpoint import load_checkpoint, save_checkpoint
from disac_ros.core.models.config import MLPDecoderConfig
from disac_ros.core.models.device_decoders import (DeviceDecoders, DeviceDecodersConfig,
                                                   decoder_slots, run_decoder)
from disac_ros.core.models.semantic_codec import MLPDecoder

CFG = MLPDecoderConfig(num_symbols=8, feature_dim=12, hidden=16, num_layers=2)


def _decoders(n: int = 3) -> list[MLPDecoder]:
    torch.manual_seed(0)
    return [MLPDecoder(CFG).eval() for _ in range(n)]


def _packets(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 8, 2, generator=g), torch.rand(n, generator=g) * 20,
            50 + 100 * torch.rand(n, generator=g))


@torch.no_grad()
def test_each_row_is_decoded_by_its_devices_decoder_in_any_order() -> None:
    decs = _decoders()
    dd = DeviceDecoders.from_decoders(['a', 'b', 'c'], decs).eval()
    y, snr, dist = _packets(7)
    slot = torch.tensor([2, 0, 1, 2, 2, 0, 1])
    out = dd(y, snr, dist, slot)
    for i in range(7):
        expect = decs[int(slot[i])](y[i:i + 1], snr[i:i + 1], dist[i:i + 1])[0]
        torch.testing.assert_close(out[i], expect)
    assert not torch.allclose(dd(y, snr, dist, torch.zeros(7, dtype=torch.long)), out)
    # The shared call helper passes the slot only to decoders that route by device.
    torch.testing.assert_close(run_decoder(dd, y, snr, dist, slot), out)
    torch.testing.assert_close(run_decoder(decs[0], y, snr, dist, slot), decs[0](y, snr, dist))


def test_missing_or_bad_slots_and_unknown_devices_are_clear_errors() -> None:
    dd = DeviceDecoders.from_decoders(['a', 'b'], _decoders(2))
    y, snr, dist = _packets(3)
    with pytest.raises(ValueError, match='needs the device slot'):
        dd(y, snr, dist)
    with pytest.raises(ValueError, match='out of range'):
        dd(y, snr, dist, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match='2 entries for 3 packets'):
        dd(y, snr, dist, torch.tensor([0, 1]))
    assert decoder_slots(dd, ['b', 'a']).tolist() == [1, 0]
    assert decoder_slots(_decoders(1)[0], ['b']) is None
    with pytest.raises(ConfigError, match=r"no decoder for device\(s\) \['z'\]"):
        decoder_slots(dd, ['a', 'z'])
    with pytest.raises(ConfigError, match='differ in shape'):
        DeviceDecoders.from_decoders(['a', 'b'], [_decoders(1)[0],
                                                  MLPDecoder(MLPDecoderConfig(num_symbols=8))])
    with pytest.raises(ConfigError, match='duplicate'):
        DeviceDecodersConfig(('a', 'a'), CFG)
    with pytest.raises(ConfigError, match='device_decoders.decoder.hidden'):
        DeviceDecodersConfig.from_dict({'devices': ['a'], 'decoder': {'hidden': 0}})


@torch.no_grad()
def test_checkpoint_round_trip(tmp_path: Path) -> None:
    dd = DeviceDecoders.from_decoders(['dev0', 'dev1'], _decoders(2)).eval()
    save_checkpoint(tmp_path / 'ck', {'decoder': dd})
    back = load_checkpoint(tmp_path / 'ck').models['decoder'].eval()
    assert isinstance(back, DeviceDecoders) and back.config == dd.config
    y, snr, dist = _packets(4)
    slot = torch.tensor([1, 0, 1, 0])
    torch.testing.assert_close(back(y, snr, dist, slot), dd(y, snr, dist, slot))
