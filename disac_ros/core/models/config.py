"""Frozen, validated size/hyper-parameter configs of every model of the LLM-DiSAC pipeline.

Each config is a frozen dataclass with ``to_dict()`` / ``from_dict()`` (plain JSON types, so a
checkpoint stores it as ``config.json``) and ``validate()`` which raises
:class:`~disac_ros.core.errors.ConfigError` naming the offending field. ``from_dict`` rejects
unknown keys, so a typo in a YAML file fails loudly instead of silently using a default.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
import math
import types
import typing
from typing import Any, ClassVar, Mapping, TypeVar

from disac_ros.core.errors import ConfigError

T = TypeVar('T', bound='_Config')

# Number of classes the heads predict: index 0 is "no object", 1..4 are CLASS_NAMES[1:] of
# disac_ros.core.types (car, truck, pedestrian, cyclist).
NUM_CLASSES_WITH_NO_OBJECT = 5


def _check(cond: bool, name: str, problem: str, prefix: str) -> None:
    if not cond:
        raise ConfigError(f'{prefix}{name}', problem)


class _Config:
    """Mixin: dict round trip and field validation for frozen dataclasses."""

    SECTION: ClassVar[str] = ''

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of this config (tuples become lists)."""
        out = asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = '') -> T:
        """Build from a mapping; unknown keys and bad values raise ConfigError naming the field."""
        if not isinstance(data, Mapping):
            raise ConfigError(prefix.rstrip('.') or cls.SECTION or cls.__name__,
                              f'expected a mapping, got {type(data).__name__}')
        prefix = prefix or (cls.SECTION + '.' if cls.SECTION else '')
        names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f'{prefix}{unknown[0]}',
                              f'unknown key; expected one of {", ".join(sorted(names))}')
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            kwargs[key] = _coerce(value, hints[key], f'{prefix}{key}')
        try:
            return cls(**kwargs)
        except ConfigError as err:
            raise _reprefix(err, cls.SECTION, prefix) from None

    def __post_init__(self) -> None:
        self.validate(self.SECTION + '.' if self.SECTION else '')

    def validate(self, prefix: str = '') -> None:  # pragma: no cover - overridden
        """Raise ConfigError naming the first invalid field."""


def _reprefix(err: ConfigError, section: str, prefix: str) -> ConfigError:
    """Re-address an error raised by __post_init__ ('section.x') to the caller's prefix."""
    name = err.field
    if section and name.startswith(section + '.'):
        name = name[len(section) + 1:]
    return ConfigError(f'{prefix}{name}', err.problem, err.source)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert JSON/YAML scalars and lists to the annotated type, naming the field on error."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f'expected a list, got {type(value).__name__}')
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f'{name}[{i}]') for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f'expected true/false, got {value!r}')
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f'expected an integer, got {value!r}')
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f'expected a number, got {value!r}')
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(name, f'expected a string, got {value!r}')
        return value
    return value


@dataclass(frozen=True)
class RVFNConfig(_Config):
    """RF-vision fusion network (device side).

    Image input (B, 3, H, W) in [0, 1]; RF input (B, rf_in_channels, H_rf, W_rf) of any size:
    both CNNs end in adaptive average pooling to a fixed token grid.
    """

    SECTION: ClassVar[str] = 'rvfn'
    image_channels: int = 3
    rf_in_channels: int = 2
    vis_channels: tuple[int, ...] = (32, 64, 128, 128)   # one stride-2 stage each
    rf_channels: tuple[int, ...] = (32, 64, 128)
    vis_grid: tuple[int, int] = (4, 4)                   # visual tokens = 16
    rf_grid: tuple[int, int] = (4, 8)                    # RF tokens = 32 (Doppler x range)
    dim: int = 128                                       # token width
    num_heads: int = 4
    num_cross_layers: int = 2
    ffn_mult: int = 2
    dropout: float = 0.0
    feature_dim: int = 256                               # fused semantic feature size
    modalities: str = 'both'                             # 'both' | 'rf' | 'camera' (baselines)
    # Append 2 normalised (row, col) coordinate maps to each CNN input (CoordConv): the pooled
    # tokens can then say *where* in their cell a peak is (range/angle bin, pixel), which the
    # translation-equivariant CNN + average pool otherwise throws away. False = old checkpoints.
    coord_channels: bool = False
    # 'pooled': feature = Linear(mean of RF tokens, mean of visual tokens) (old checkpoints).
    # 'polar': the RF tokens are the cells of a polar grid (polar_grid.py) with the camera's
    # column features lifted onto their azimuth; feature = cell_dim values per cell, flattened
    # (feature_dim must equal num_angle_cells * num_range_cells * cell_dim).
    layout: str = 'pooled'
    polar_grid: tuple[int, int] = (8, 16)                # (angle cells in sin(az), range cells)
    max_range_m: float = 64.0                            # range covered by the polar grid
    cell_dim: int = 8                                    # feature values per polar cell
    camera_hfov_deg: float = 60.0                        # camera field of view for the lift
    # How an angle cell reads the camera's columns: 'span' averages every column whose azimuth
    # falls inside the cell; 'sample' (old checkpoints) interpolates the one column at the
    # cell's centre azimuth, which misses an object seen only off-centre in its cell.
    camera_lift: str = 'sample'
    # A per-angle-cell class head on the lifted camera features (polar layout): which object
    # classes the camera sees in each angle cell. Only stage 1's camera auxiliary loss
    # (stage1.camera_aux_weight) reads it, so that the camera branch must learn what the RF
    # cannot tell (a truck from a car); nothing at run time uses it. False = old checkpoints.
    camera_class_head: bool = False

    def validate(self, prefix: str = '') -> None:
        """Raise ConfigError naming the first invalid field."""
        p = prefix
        _check(self.layout in ('pooled', 'polar'), 'layout',
               f"must be 'pooled' or 'polar', got {self.layout!r}", p)
        if self.layout == 'polar':
            _check(len(self.polar_grid) == 2 and all(g >= 1 for g in self.polar_grid),
                   'polar_grid', 'must be two positive integers [angle cells, range cells]', p)
            _check(self.cell_dim >= 1, 'cell_dim', 'must be >= 1', p)
            cells = self.polar_grid[0] * self.polar_grid[1]
            _check(self.feature_dim == cells * self.cell_dim, 'feature_dim',
                   f'must equal polar cells x cell_dim = {cells * self.cell_dim}', p)
            _check(math.isfinite(self.max_range_m) and self.max_range_m > 0, 'max_range_m',
                   'must be > 0', p)
            _check(0.0 < self.camera_hfov_deg < 180.0, 'camera_hfov_deg',
                   'must be in (0, 180)', p)
            _check(self.camera_lift in ('span', 'sample'), 'camera_lift',
                   f"must be 'span' or 'sample', got {self.camera_lift!r}", p)
        for name in ('image_channels', 'rf_in_channels', 'dim', 'num_heads', 'feature_dim',
                     'ffn_mult'):
            _check(getattr(self, name) >= 1, name, 'must be >= 1', p)
        _check(self.num_cross_layers >= 0, 'num_cross_layers', 'must be >= 0', p)
        _check(self.dim % self.num_heads == 0, 'num_heads', f'must divide dim={self.dim}', p)
        for name in ('vis_channels', 'rf_channels'):
            val = getattr(self, name)
            _check(len(val) >= 1 and all(c >= 1 for c in val), name,
                   'must be a non-empty list of positive channel counts', p)
        for name in ('vis_grid', 'rf_grid'):
            val = getattr(self, name)
            _check(len(val) == 2 and all(g >= 1 for g in val), name,
                   'must be two positive integers [rows, cols]', p)
        _check(0.0 <= self.dropout < 1.0, 'dropout', 'must be in [0, 1)', p)
        _check(self.modalities in ('both', 'rf', 'camera'), 'modalities',
               f"must be 'both', 'rf' or 'camera', got {self.modalities!r}", p)


@dataclass(frozen=True)
class HeadConfig(_Config):
    """DETR-style set-prediction head shared by the device-local detector and TRAM."""

    SECTION: ClassVar[str] = 'head'
    dim: int = 128
    num_queries: int = 12
    num_layers: int = 2
    num_heads: int = 4
    ffn_mult: int = 2
    dropout: float = 0.0
    num_classes: int = NUM_CLASSES_WITH_NO_OBJECT   # index 0 = no object
    position_scale_m: float = 50.0   # outputs are tanh-bounded to +-2x this (metres)
    velocity_scale_mps: float = 15.0
    # 'set': DETR queries + Hungarian loss. 'grid': one prediction per polar-grid cell of the
    # device frame (polar_grid.py; centre-in-cell assignment, GridCriterion); num_queries,
    # num_layers and position_scale_m are then unused.
    kind: str = 'set'
    polar_grid: tuple[int, int] = (8, 16)
    max_range_m: float = 64.0
    # Grid heads: residual 3x3 conv layers over each device's (angle, range) grid of cell tokens
    # before the per-cell readout (heads.GridContext), so a cell's prediction sees its
    # neighbours: a truck's extent over several cells, and what an occupied cell's mostly empty
    # neighbours carry for it at the same payload. 0 = per-cell only (old checkpoints).
    cell_context: int = 0

    def validate(self, prefix: str = '') -> None:
        """Raise ConfigError naming the first invalid field."""
        p = prefix
        _check(self.kind in ('set', 'grid'), 'kind', f"must be 'set' or 'grid', got {self.kind!r}",
               p)
        _check(0 <= self.cell_context <= 8, 'cell_context', 'must be an integer in [0, 8]', p)
        _check(self.cell_context == 0 or self.kind == 'grid', 'cell_context',
               'needs kind=grid', p)
        _check(len(self.polar_grid) == 2 and all(g >= 1 for g in self.polar_grid), 'polar_grid',
               'must be two positive integers [angle cells, range cells]', p)
        _check(math.isfinite(self.max_range_m) and self.max_range_m > 0, 'max_range_m',
               'must be > 0', p)
        for name in ('dim', 'num_queries', 'num_layers', 'num_heads', 'ffn_mult'):
            _check(getattr(self, name) >= 1, name, 'must be >= 1', p)
        _check(self.dim % self.num_heads == 0, 'num_heads', f'must divide dim={self.dim}', p)
        _check(self.num_classes >= 2, 'num_classes', 'must be >= 2 (no-object + 1 class)', p)
        _check(0.0 <= self.dropout < 1.0, 'dropout', 'must be in [0, 1)', p)
        for name in ('position_scale_m', 'velocity_scale_mps'):
            _check(getattr(self, name) > 0, name, 'must be > 0', p)


@dataclass(frozen=True)
class EncoderConfig(_Config):
    """Semantic encoder: fused feature (B, feature_dim) -> L complex symbols (B, L, 2)."""

    SECTION: ClassVar[str] = 'encoder'
    feature_dim: int = 256
    num_symbols: int = 64     # L complex symbols = 128 reals; 128 bytes at 8 bits per real
    hidden: int = 256         # 0 = a single linear layer

    def validate(self, prefix: str = '') -> None:
        """Raise ConfigError naming the first invalid field."""
        _check(self.feature_dim >= 1, 'feature_dim', 'must be >= 1', prefix)
        _check(self.num_symbols >= 1, 'num_symbols', 'must be >= 1', prefix)
        _check(self.hidden >= 0, 'hidden', 'must be >= 0', prefix)


@dataclass(frozen=True)
class ChannelConfig(_Config):
    """Wireless link: log-distance path loss, thermal noise, AWGN or Rayleigh block fading.

    See :mod:`disac_ros.core.models.channel` for the exact equations.
    """

    SECTION: ClassVar[str] = 'channel'
    carrier_hz: float = 5.9e9          # ITS band (IEEE 802.11p / C-V2X)
    d0_m: float = 1.0                  # reference distance of the log-distance model
    path_loss_exponent: float = 2.7    # urban LOS/NLOS mix (free space = 2)
    tx_power_dbm: float = 23.0         # C-V2X UE maximum
    bandwidth_hz: float = 10e6
    noise_figure_db: float = 9.0
    ref_distance_m: float = 100.0      # received amplitude is expressed relative to this distance
    min_distance_m: float = 1.0        # distances are clamped here (the far-field model breaks)
    fading: str = 'rayleigh'           # 'awgn' | 'rayleigh'

    def validate(self, prefix: str = '') -> None:
        """Raise ConfigError naming the first invalid field."""
        p = prefix
        for name in ('carrier_hz', 'd0_m', 'bandwidth_hz', 'ref_distance_m', 'min_distance_m'):
            val = getattr(self, name)
            _check(math.isfinite(val) and val > 0, name, 'must be a finite number > 0', p)
        _check(1.0 <= self.path_loss_exponent <= 6.0, 'path_loss_exponent',
               'must be in [1, 6]', p)
        for name in ('tx_power_dbm', 'noise_figure_db'):
            _check(math.isfinite(getattr(self, name)), name, 'must be finite', p)
        _check(self.fading in ('awgn', 'rayleigh'), 'fading',
               f"must be 'awgn' or 'rayleigh', got {self.fading!r}", p)


# Receiver-side input scaling, shared by both decoders (see semantic_codec.py):
#   'agc'  : blind per-packet automatic gain control y / rms(y); log10(rms) is passed on as an
#            input so no information is lost. No pilots, no knowledge of h.
#   'none' : the raw received samples.
#   'agc_phase': AGC, then rotate the packet so its own mean symbol is real (blind, no pilot).
INPUT_SCALINGS = ('agc', 'agc_phase', 'none')


@dataclass(frozen=True)
class MLPDecoderConfig(_Config):
    """Non-LLM baseline decoder: (y, snr, distance) -> feature, width matched to the LLM."""

    SECTION: ClassVar[str] = 'mlp_decoder'
    num_symbols: int = 64
    feature_dim: int = 256
    hidden: int = 712          # trainable params ~= the default LLM decoder's (test checks)
    num_layers: int = 3
    use_side_info: bool = True
    input_scaling: str = 'agc'
    # Add a linear map of the scaled samples to the output: with a near-identity code (a
    # linear encoder, as many reals as feature values) the MLP then only learns the correction
    # for fading and noise instead of re-learning the identity. False = old checkpoints.
    linear_skip: bool = False

    def validate(self, prefix: str = '') -> None:
        """Raise ConfigError naming the first invalid field."""
        p = prefix
        for name in ('num_symbols', 'feature_dim', 'hidden', 'num_layers'):
            _check(getattr(self, name) >= 1, name, 'must be >= 1', p)
        _check(self.input_scaling in INPUT_SCALINGS, 'input_scaling',
               f'must be one of {INPUT_SCALINGS}, got {self.input_scaling!r}', p)


LLM_READOUTS = ('pooled', 'tokens')


@dataclass(frozen=True)
class LLMDecoderConfig(_Config):
    """LLM-based decoder: frozen causal LM + LoRA, symbol tokens and channel-condition tokens."""

    SECTION: ClassVar[str] = 'llm_decoder'
    llm: str = 'smollm2'                 # 'smollm2' or a local Hugging Face causal-LM folder
    num_symbols: int = 64
    symbols_per_token: int = 8           # 8 complex symbols = 16 reals per input token
    feature_dim: int = 256
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: tuple[str, ...] = ('q_proj', 'k_proj', 'v_proj', 'o_proj')
    use_channel_tokens: bool = True      # False = the llm_no_channel_tokens ablation
    cond_hidden: int = 64
    input_scaling: str = 'agc'
    autocast_bf16: bool = True
    backbone_dtype: str = 'bfloat16'     # dtype the frozen backbone is held in
    # 'pooled': [mean of symbol-token states, last state] -> feature (a 2H bottleneck);
    # 'tokens': every symbol token's state -> readout_width values, concatenated -> feature.
    readout: str = 'pooled'
    readout_width: int = 64

    def validate(self, prefix: str = '') -> None:
        """Raise ConfigError naming the first invalid field."""
        p = prefix
        _check(bool(self.llm), 'llm', 'must name smollm2 or a model folder', p)
        _check(self.readout in LLM_READOUTS, 'readout',
               f'must be one of {LLM_READOUTS}, got {self.readout!r}', p)
        for name in ('num_symbols', 'symbols_per_token', 'feature_dim', 'lora_r',
                     'lora_alpha', 'cond_hidden', 'readout_width'):
            _check(getattr(self, name) >= 1, name, 'must be >= 1', p)
        _check(self.num_symbols % self.symbols_per_token == 0, 'symbols_per_token',
               f'must divide num_symbols={self.num_symbols}', p)
        _check(len(self.lora_target_modules) >= 1, 'lora_target_modules',
               'must name at least one module', p)
        _check(self.input_scaling in INPUT_SCALINGS, 'input_scaling',
               f'must be one of {INPUT_SCALINGS}, got {self.input_scaling!r}', p)
        _check(self.backbone_dtype in ('bfloat16', 'float32'), 'backbone_dtype',
               "must be 'bfloat16' or 'float32'", p)


@dataclass(frozen=True)
class TRAMConfig(_Config):
    """Transformer aggregation model over K devices' decoded features."""

    SECTION: ClassVar[str] = 'tram'
    feature_dim: int = 256
    dim: int = 128
    tokens_per_device: int = 4
    max_devices: int = 8                 # size of the device-id embedding table
    num_layers: int = 2
    num_heads: int = 4
    ffn_mult: int = 2
    dropout: float = 0.0
    aggregator: str = 'tram'             # 'tram' | 'mean_pool' (baseline)
    scene_scale_m: float = 50.0          # normalises device positions for the pose embedding
    # True: the head decodes each device's (cross-device encoded) tokens in that DEVICE's frame
    # and the known pose maps them to the world exactly (see tram.py); False: one world-frame
    # head over all tokens (old checkpoints).
    detect_in_device_frame: bool = False
    # 'absolute': tokens carry a device-id embedding, the device pose and (grid) the cells' world
    # positions: a model of one map and one set of ids (old checkpoints). 'relative': no per-id
    # parameter and no absolute position at all; cells of different devices attend to each other
    # by their distance on the ground (a learnt per-head decay of the attention logit), which is
    # the same under any translation or rotation of the scene, so any site, any ids, any K.
    geometry: str = 'absolute'
    relative_scale_m: float = 8.0         # distance unit of the relative attention bias
    head: HeadConfig = field(default_factory=HeadConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of this config (tuples become lists)."""
        out = super().to_dict()
        out['head'] = self.head.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = '') -> 'TRAMConfig':
        """Build from a mapping; unknown keys and bad values raise ConfigError naming the field."""
        prefix = prefix or cls.SECTION + '.'
        if isinstance(data, Mapping) and 'head' in data and not isinstance(data['head'],
                                                                           HeadConfig):
            # Build the nested head first so its errors carry the 'head.' path.
            data = {**data, 'head': HeadConfig.from_dict(data['head'], prefix=f'{prefix}head.')}
        return super().from_dict(data, prefix=prefix)

    def validate(self, prefix: str = '') -> None:
        """Raise ConfigError naming the first invalid field."""
        p = prefix
        for name in ('feature_dim', 'dim', 'tokens_per_device', 'max_devices', 'num_heads',
                     'ffn_mult'):
            _check(getattr(self, name) >= 1, name, 'must be >= 1', p)
        _check(self.num_layers >= 0, 'num_layers', 'must be >= 0', p)
        _check(self.dim % self.num_heads == 0, 'num_heads', f'must divide dim={self.dim}', p)
        _check(0.0 <= self.dropout < 1.0, 'dropout', 'must be in [0, 1)', p)
        _check(not (self.detect_in_device_frame and self.aggregator != 'tram'),
               'detect_in_device_frame', "needs aggregator='tram'", p)
        _check(self.aggregator in ('tram', 'mean_pool'), 'aggregator',
               f"must be 'tram' or 'mean_pool', got {self.aggregator!r}", p)
        _check(self.scene_scale_m > 0, 'scene_scale_m', 'must be > 0', p)
        _check(self.geometry in ('absolute', 'relative'), 'geometry',
               f"must be 'absolute' or 'relative', got {self.geometry!r}", p)
        _check(math.isfinite(self.relative_scale_m) and self.relative_scale_m > 0,
               'relative_scale_m', 'must be > 0', p)
        _check(self.geometry == 'absolute' or self.head.kind == 'grid', 'geometry',
               "'relative' needs head.kind=grid", p)
        _check(self.head.dim == self.dim, 'head.dim', f'must equal dim={self.dim}', p)
        if self.head.kind == 'grid':
            cells = self.head.polar_grid[0] * self.head.polar_grid[1]
            _check(self.feature_dim % cells == 0, 'feature_dim',
                   f'must be a multiple of the {cells} polar cells (head.kind=grid)', p)
            _check(self.aggregator == 'mean_pool' or self.detect_in_device_frame,
                   'detect_in_device_frame', 'must be true with head.kind=grid', p)
        self.head.validate(f'{p}head.')


@dataclass(frozen=True)
class LossConfig(_Config):
    """Set-matching loss weights (DETR style)."""

    SECTION: ClassVar[str] = 'loss'
    no_object_weight: float = 0.1    # CE weight of class 0, since most queries match nothing
    class_weight: float = 1.0
    position_weight: float = 5.0
    velocity_weight: float = 1.0
    cost_class: float = 1.0          # matching cost weights
    cost_position: float = 5.0
    # CE weight of each object class (car, truck, pedestrian, cyclist); empty = all 1. Rare
    # classes (trucks are 10 % of objects) are otherwise swallowed by the common ones.
    object_class_weights: tuple[float, ...] = ()

    def validate(self, prefix: str = '') -> None:
        """Raise ConfigError naming the first invalid field."""
        for f in fields(self):
            val = getattr(self, f.name)
            vals = val if isinstance(val, tuple) else (val,)
            _check(all(math.isfinite(v) and v >= 0 for v in vals), f.name,
                   'must be finite numbers >= 0', prefix)

    def class_weight_vector(self, num_classes: int) -> 'list[float]':
        """CE weights [no_object_weight, w_1 .. w_{C-1}] (missing object weights are 1)."""
        w = [self.no_object_weight] + [1.0] * (num_classes - 1)
        for i, v in enumerate(self.object_class_weights[:num_classes - 1]):
            w[1 + i] = float(v)
        return w
