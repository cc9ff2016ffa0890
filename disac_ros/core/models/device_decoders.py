"""Per-device codec decoders: the receiver decodes each device's packets with that device's own
stage-1 decoder.

In stage 1 every device trains its semantic encoder end to end with a small MLP decoder through
the simulated channel, on its own detection loss (plus a feature-reconstruction term). That
decoder is the encoder's partner: it learned what the code means for the task, not only how to
reproduce the feature in the NMSE sense. :class:`DeviceDecoders` ships those partners to the
aggregator (weights only; no device data leaves the device) and routes every received packet to
the decoder of the device that sent it, by the device's model slot (its index in the model's
device list, the same slot TRAM's device embedding uses).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from disac_ros.core.errors import ConfigError
from disac_ros.core.models.config import MLPDecoderConfig
from disac_ros.core.models.semantic_codec import MLPDecoder


@dataclass(frozen=True)
class DeviceDecodersConfig:
    """One MLP decoder per device (all of one shape), in model slot order."""

    SECTION: ClassVar[str] = 'device_decoders'
    devices: tuple[str, ...] = ()
    decoder: MLPDecoderConfig = field(default_factory=MLPDecoderConfig)

    def __post_init__(self) -> None:
        if not self.devices or not all(isinstance(d, str) and d for d in self.devices):
            raise ConfigError('device_decoders.devices', 'must be a non-empty list of device ids')
        if len(set(self.devices)) != len(self.devices):
            raise ConfigError('device_decoders.devices', f'duplicate ids in {list(self.devices)}')
        if not isinstance(self.decoder, MLPDecoderConfig):
            raise ConfigError('device_decoders.decoder', 'must be an MLP decoder config')

    @property
    def num_symbols(self) -> int:
        """Channel symbols per packet."""
        return self.decoder.num_symbols

    @property
    def feature_dim(self) -> int:
        """Decoded feature size."""
        return self.decoder.feature_dim

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict."""
        return {'devices': list(self.devices), 'decoder': asdict(self.decoder)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'DeviceDecodersConfig':
        """Build from a mapping; bad values raise ConfigError naming the field."""
        if not isinstance(data, Mapping) or set(data) != {'devices', 'decoder'}:
            raise ConfigError('device_decoders', "expected a mapping with keys 'devices' and "
                                                 f"'decoder', got {data!r:.80}")
        devices = data['devices']
        if not isinstance(devices, (list, tuple)):
            raise ConfigError('device_decoders.devices', f'expected a list, got {devices!r}')
        return cls(tuple(devices), MLPDecoderConfig.from_dict(data['decoder'],
                                                              'device_decoders.decoder.'))


class DeviceDecoders(nn.Module):
    """Received packets of several devices -> features, each by its sender's decoder.

    Same call as the shared decoders plus ``slot``: (B, L, 2) samples, (B,) SNR and distance,
    (B,) long model slot of each packet's device -> (B, F).
    """

    routes_by_device: ClassVar[bool] = True

    def __init__(self, config: DeviceDecodersConfig) -> None:
        super().__init__()
        self.config = config
        self.decoders = nn.ModuleList(MLPDecoder(config.decoder) for _ in config.devices)

    @classmethod
    def from_decoders(cls, devices: Sequence[str],
                      decoders: Sequence[MLPDecoder]) -> 'DeviceDecoders':
        """Collect trained per-device decoders (copied; they must share one config)."""
        if len(devices) != len(decoders) or not decoders:
            raise ConfigError('device_decoders', f'{len(devices)} devices but {len(decoders)} '
                                                 'decoders')
        configs = {d.config for d in decoders}
        if len(configs) != 1:
            raise ConfigError('device_decoders', 'the devices\' decoders differ in shape; '
                                                 'train them with one recipe')
        out = cls(DeviceDecodersConfig(tuple(devices), decoders[0].config))
        for mine, theirs in zip(out.decoders, decoders):
            mine.load_state_dict(theirs.state_dict())
        return out

    def forward(self, y: torch.Tensor, snr_db: torch.Tensor, distance_m: torch.Tensor,
                slot: torch.Tensor | None = None) -> torch.Tensor:
        """Decode every packet by the decoder of its device slot."""
        if slot is None:
            raise ValueError('DeviceDecoders needs the device slot of every packet')
        slot = torch.as_tensor(slot, dtype=torch.long).reshape(-1)
        if slot.shape[0] != y.shape[0]:
            raise ValueError(f'slot has {slot.shape[0]} entries for {y.shape[0]} packets')
        n = len(self.decoders)
        if slot.numel() and (int(slot.min()) < 0 or int(slot.max()) >= n):
            raise ValueError(f'device slot out of range [0, {n}): {slot.tolist()}')
        out = y.new_zeros(y.shape[0], self.config.feature_dim, dtype=torch.float32)
        snr_db = torch.as_tensor(snr_db, dtype=torch.float32).reshape(-1)
        distance_m = torch.as_tensor(distance_m, dtype=torch.float32).reshape(-1)
        for s in torch.unique(slot).tolist():
            rows = torch.nonzero(slot == s).flatten()
            out[rows] = self.decoders[s](y[rows], snr_db[rows.to(snr_db.device)],
                                         distance_m[rows.to(distance_m.device)]).float()
        return out


def decoder_slots(decoder: nn.Module, device_ids: Sequence[str]) -> torch.Tensor | None:
    """Slots of ``device_ids`` in a device-routing decoder (None for a shared decoder)."""
    if not getattr(decoder, 'routes_by_device', False):
        return None
    known = list(decoder.config.devices)
    missing = [d for d in device_ids if d not in known]
    if missing:
        raise ConfigError('device_decoders', f'no decoder for device(s) {missing}; the model '
                                             f'has {known}')
    return torch.as_tensor([known.index(d) for d in device_ids], dtype=torch.long)


def run_decoder(decoder: nn.Module, y: torch.Tensor, snr_db: torch.Tensor,
                distance_m: torch.Tensor, slot: torch.Tensor | None = None) -> torch.Tensor:
    """Call any receiver decoder; ``slot`` goes only to those that route by device."""
    if getattr(decoder, 'routes_by_device', False):
        return decoder(y, snr_db, distance_m, slot)
    return decoder(y, snr_db, distance_m)
