"""FMCW radar parameters (``RadarConfig``): one frozen dataclass, validated on construction.

The defaults are a 77 GHz automotive radar sized for a street scene and a small network input:

=========================  ===============  ==============================================
quantity                   default          follows from
=========================  ===============  ==============================================
wavelength                 3.89 mm          c / carrier_frequency_hz
range resolution           0.50 m           c / (2 * sampled bandwidth); the ADC window
                                            (num_samples / sample_rate_hz) covers the whole
                                            chirp, so the sampled bandwidth is 300 MHz
max unambiguous range      64.0 m           num_samples * range resolution (complex IF)
velocity resolution        1.52 m/s         wavelength / (2 * num_chirps * chirp_interval_s)
max unambiguous speed      +-24.4 m/s       wavelength / (4 * chirp_interval_s)
frame duration             1.28 ms          num_chirps * chirp_interval_s
noise power per sample     -95 dBm          k * 290 K * sample_rate_hz * noise figure
=========================  ===============  ==============================================

A scenario YAML gives these under ``radar:`` (any subset; missing keys keep their default).
Write exponents with a dot and a sign (``77.0e+9``): PyYAML reads ``77e9`` as a string.

.. code-block:: yaml

    radar:
      carrier_frequency_hz: 77.0e+9  # carrier (start) frequency of the chirp
      bandwidth_hz: 300.0e+6         # swept bandwidth over chirp_duration_s
      num_samples: 128               # complex ADC samples per chirp (fast time)
      num_chirps: 32                 # chirps per frame (slow time)
      num_rx: 4                      # receive antennas, a uniform linear array along body +y
      sample_rate_hz: 5.0e+6         # complex (I/Q) ADC rate; also the noise bandwidth
      chirp_duration_s: 25.6e-6      # ramp time; the ADC window must fit inside it
      chirp_interval_s: 40.0e-6      # chirp repetition interval (ramp + idle time)
      rx_spacing_m: null             # element spacing; null means half a wavelength
      tx_power_dbm: 12.0             # transmit power
      antenna_gain_dbi: 15.0         # gain of the TX antenna and of each RX antenna
      noise_figure_db: 12.0          # receiver noise figure
      max_range_m: 60.0              # coverage for the "within RF range" ground truth
      fov_deg: 120.0                 # full azimuth field of view (sector antenna)
      occlusion_loss_db: 15.0        # two-way loss per occluding obstacle
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields
import math
from typing import Any
from typing import Mapping

from disac_ros.core.errors import ConfigError
from disac_ros.core.errors import ScenarioError

SPEED_OF_LIGHT_MPS = 299_792_458.0

_INT_FIELDS = ('num_samples', 'num_chirps', 'num_rx')
_OPTIONAL_FIELDS = ('rx_spacing_m',)
# Fields that must be > 0; the others (dBm, dBi, dB) may be any finite number unless listed below.
_POSITIVE_FIELDS = (
    'carrier_frequency_hz', 'bandwidth_hz', 'num_samples', 'num_chirps', 'num_rx',
    'sample_rate_hz', 'chirp_duration_s', 'chirp_interval_s', 'rx_spacing_m', 'max_range_m',
    'fov_deg')
_NON_NEGATIVE_FIELDS = ('noise_figure_db', 'occlusion_loss_db')


@dataclass(frozen=True)
class RadarConfig:
    """
    An FMCW radar with one TX and a uniform linear RX array; every field is in SI units or dB.

    Construction validates every field and the cross-field constraints (the ADC window fits in
    the chirp, the chirp fits in the chirp interval, ``max_range_m`` is unambiguous, and
    ``num_chirps >= num_rx`` so that both feature maps share one height). ``from_dict`` does the
    same for a scenario YAML mapping and names the offending key.
    """

    carrier_frequency_hz: float = 77e9
    bandwidth_hz: float = 300e6
    num_samples: int = 128
    num_chirps: int = 32
    num_rx: int = 4
    sample_rate_hz: float = 5e6
    chirp_duration_s: float = 25.6e-6
    chirp_interval_s: float = 40e-6
    rx_spacing_m: float | None = None
    tx_power_dbm: float = 12.0
    antenna_gain_dbi: float = 15.0
    noise_figure_db: float = 12.0
    max_range_m: float = 60.0
    fov_deg: float = 120.0
    occlusion_loss_db: float = 15.0

    def __post_init__(self) -> None:
        _validate(self.to_dict(), 'RadarConfig', ConfigError)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = 'radar') -> 'RadarConfig':
        """
        Build from a scenario mapping; missing keys keep their defaults.

        Raises
        ------
            ScenarioError: for an unknown key or a bad value, naming ``f'{where}.{key}'``.

        """
        if not isinstance(d, Mapping):
            raise ScenarioError(where, f'expected a mapping of radar parameters, '
                                       f'got {type(d).__name__}')
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ScenarioError(f'{where}.{key}',
                                    f'unknown key; expected one of {", ".join(sorted(known))}')
        values = cls().to_dict()
        values.update(d)
        _validate(values, where, ScenarioError)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return every field as a plain scalar (YAML/JSON friendly); the inverse of from_dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # Derived quantities. Properties, not fields, so a YAML cannot make them inconsistent.
    @property
    def wavelength_m(self) -> float:
        """Carrier wavelength."""
        return SPEED_OF_LIGHT_MPS / self.carrier_frequency_hz

    @property
    def rx_spacing(self) -> float:
        """RX element spacing in metres (``rx_spacing_m`` or half a wavelength)."""
        return self.wavelength_m / 2.0 if self.rx_spacing_m is None else float(self.rx_spacing_m)

    @property
    def slope_hz_per_s(self) -> float:
        """Chirp slope S = bandwidth / chirp duration."""
        return self.bandwidth_hz / self.chirp_duration_s

    @property
    def range_resolution_m(self) -> float:
        """Range-bin width: c / (2 * sampled bandwidth)."""
        sampled_bandwidth = self.slope_hz_per_s * self.num_samples / self.sample_rate_hz
        return SPEED_OF_LIGHT_MPS / (2.0 * sampled_bandwidth)

    @property
    def max_unambiguous_range_m(self) -> float:
        """Range at a beat frequency of sample_rate_hz (complex IF: beat in [0, fs))."""
        return self.num_samples * self.range_resolution_m

    @property
    def velocity_resolution_mps(self) -> float:
        """Doppler-bin width in radial speed."""
        return self.wavelength_m / (2.0 * self.num_chirps * self.chirp_interval_s)

    @property
    def max_unambiguous_speed_mps(self) -> float:
        """Radial speeds are unambiguous in [-v, v)."""
        return self.wavelength_m / (4.0 * self.chirp_interval_s)


def _yaml_hint(value: Any) -> str:
    """Explain the PyYAML trap: YAML 1.1 reads ``77e9`` or ``1.0e9`` (no exponent sign) as text."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ''
        return ' (a string: YAML 1.1 needs a dot and a signed exponent, e.g. 77.0e+9)'
    return ''


def _validate(values: Mapping[str, Any], where: str, error: type[ConfigError]) -> None:
    """Check types, ranges and cross-field constraints; raise ``error`` naming the field."""
    for name, value in values.items():
        field_name = f'{where}.{name}'
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        # bool is an int subclass; a YAML 'yes' must not become 1 antenna.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(field_name, f'expected a number, got {value!r}{_yaml_hint(value)}')
        if name in _INT_FIELDS and not isinstance(value, int):
            raise error(field_name, f'expected an integer, got {value!r}')
        if not math.isfinite(value):
            raise error(field_name, f'expected a finite number, got {value!r}')
        if name in _POSITIVE_FIELDS and value <= 0:
            raise error(field_name, f'must be > 0, got {value!r}')
        if name in _NON_NEGATIVE_FIELDS and value < 0:
            raise error(field_name, f'must be >= 0, got {value!r}')
    if values['fov_deg'] > 180.0:
        raise error(f'{where}.fov_deg', f'must be <= 180 (a linear array sees one half-space), '
                                        f'got {values["fov_deg"]!r}')
    adc_window_s = values['num_samples'] / values['sample_rate_hz']
    if adc_window_s > values['chirp_duration_s'] * (1 + 1e-9):
        raise error(f'{where}.sample_rate_hz',
                    f'the ADC window num_samples / sample_rate_hz = {adc_window_s:.3g} s is '
                    f'longer than chirp_duration_s = {values["chirp_duration_s"]:.3g} s')
    if values['chirp_interval_s'] < values['chirp_duration_s']:
        raise error(f'{where}.chirp_interval_s',
                    f'must be >= chirp_duration_s = {values["chirp_duration_s"]!r}, '
                    f'got {values["chirp_interval_s"]!r}')
    if values['num_chirps'] < values['num_rx']:
        raise error(f'{where}.num_chirps',
                    f'must be >= num_rx = {values["num_rx"]} (the range-angle feature map uses '
                    f'num_chirps angle bins), got {values["num_chirps"]}')
    # Max unambiguous range = fs * c / (2 S); computed here because the object does not exist yet.
    slope = values['bandwidth_hz'] / values['chirp_duration_s']
    max_unambiguous = values['sample_rate_hz'] * SPEED_OF_LIGHT_MPS / (2.0 * slope)
    if values['max_range_m'] > max_unambiguous:
        raise error(f'{where}.max_range_m',
                    f'must be <= the max unambiguous range {max_unambiguous:.1f} m '
                    f'(sample_rate_hz * c / (2 * slope)), got {values["max_range_m"]!r}')
