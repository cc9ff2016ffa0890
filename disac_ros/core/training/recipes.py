"""Training recipes: every size, step budget and sweep of the two-stage pipeline in one place.

A :class:`Recipe` is a frozen dataclass tree built from YAML (``config/train_default.yaml``,
``config/train_quick.yaml``) with unknown keys rejected and every bad value named by its dotted
path (:class:`~disac_ros.core.errors.ConfigError`). The model sections reuse the model configs of
:mod:`disac_ros.core.models.config`, so a recipe fully determines the architectures.

* ``default``: finishes on a 2-core CPU in about 90 minutes on a ~1000-frame training split.
* ``quick``: a few minutes; what the tests use (small widths, few steps, a tiny LLM).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
import math
from pathlib import Path
from typing import Any, Mapping

import yaml

from disac_ros.core.detection_fusion import FUSION_METHODS, FusionConfig
from disac_ros.core.errors import ConfigError
from disac_ros.core.models import config as mc

CONFIG_DIR = Path(__file__).resolve().parents[3] / 'config'
RECIPE_FILES = {'default': 'train_default.yaml', 'quick': 'train_quick.yaml',
                'generalist': 'train_generalist.yaml',
                'quick_generalist': 'train_quick_generalist.yaml'}
# Receiver decoder kinds (training.decoder): the trained ones, then 'device' (collected).
DECODER_KINDS = ('mlp', 'llm', 'llm_no_channel_tokens', 'device')


def _check(cond: bool, name: str, problem: str) -> None:
    if not cond:
        raise ConfigError(name, problem)


def _build(cls: type, data: Mapping[str, Any] | None, prefix: str) -> Any:
    """Build a simple dataclass (scalars / lists) from a mapping, rejecting unknown keys."""
    data = data or {}
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip('.'), f'expected a mapping, got {type(data).__name__}')
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f'{prefix}{unknown[0]}',
                          f'unknown key; expected one of {", ".join(sorted(names))}')
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for key, value in data.items():
        default = getattr(defaults, key)
        name = f'{prefix}{key}'
        if isinstance(default, bool):
            _check(isinstance(value, bool), name, f'expected true/false, got {value!r}')
        elif isinstance(default, int):
            _check(isinstance(value, int) and not isinstance(value, bool), name,
                   f'expected an integer, got {value!r}')
        elif isinstance(default, float):
            _check(isinstance(value, (int, float)) and not isinstance(value, bool), name,
                   f'expected a number, got {value!r}')
            value = float(value)
        elif isinstance(default, str):
            _check(isinstance(value, str), name, f'expected a string, got {value!r}')
        elif isinstance(default, tuple):
            _check(isinstance(value, (list, tuple)), name, f'expected a list, got {value!r}')
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f'{prefix}{err.field}', err.problem) from None


@dataclass(frozen=True)
class ChannelRange:
    """Ranges the channel is drawn from during training (fresh draws every step)."""

    snr_db: tuple[float, float] = (-5.0, 20.0)
    distance_m: tuple[float, float] = (20.0, 400.0)   # log-uniform
    rayleigh_fraction: float = 0.5                    # else AWGN

    def __post_init__(self) -> None:
        for name in ('snr_db', 'distance_m'):
            v = getattr(self, name)
            _check(len(v) == 2 and v[0] <= v[1], name, 'must be [low, high] with low <= high')
        _check(self.distance_m[0] > 0, 'distance_m', 'must be > 0')
        _check(0.0 <= self.rayleigh_fraction <= 1.0, 'rayleigh_fraction', 'must be in [0, 1]')


def _check_schedule(schedule: str, decay_steps: int) -> None:
    _check(schedule in ('constant', 'cosine', 'wsd'), 'lr_schedule',
           "must be 'constant', 'cosine' or 'wsd'")
    _check(decay_steps >= 0, 'decay_steps', 'must be >= 0')
    _check(schedule != 'wsd' or decay_steps >= 1, 'decay_steps',
           "must be >= 1 with lr_schedule 'wsd'")


@dataclass(frozen=True)
class Stage1Recipe:
    """Per-device training: LocalDetector + encoder + a proxy decoder/head over the channel."""

    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    grad_clip: float = 1.0
    local_head_weight: float = 1.0     # set loss of the local head on the fused tokens
    proxy_head_weight: float = 1.0     # set loss of a head reading the *decoded* feature
    reconstruction_weight: float = 1.0  # NMSE of the proxy decoder's output
    mirror_augment: float = 0.0         # probability of reflecting a sample (y -> -y)
    # Weight of the camera auxiliary loss (needs rvfn.camera_class_head): the camera branch
    # alone must say which classes it sees in each angle cell. Without it the fusion network
    # learns from the RF alone and ignores the camera (the first generalist: shuffling the
    # images between frames cost 0.02 of its device accuracy; no truck told from a car).
    camera_aux_weight: float = 0.0
    proxy_decoder_hidden: int = 256
    eval_every: int = 200
    checkpoint_every: int = 200
    # after warm-up: 'constant', 'cosine' (to 5 % at the end) or 'wsd' (constant, then a linear
    # decay to 2 % over the last decay_steps; resumable to more steps, see common.set_lr)
    lr_schedule: str = 'constant'
    decay_steps: int = 0
    # Keep the semantic encoder and the proxy (= the device's own) decoder fixed and train only
    # the perception (RVFN + local head): a fine-tune that leaves the channel code, and so every
    # receiver decoder trained on it, valid.
    freeze_codec: bool = False
    # Device-agnostic models (one shared network, trained by Flower FedAvg on every device's own
    # data; training.federated): rounds, devices per round and local steps per device and
    # round. eval_every / checkpoint_every then count rounds; warmup_steps and decay_steps count
    # local steps (converted to rounds).
    rounds: int = 100
    clients_per_round: int = 4
    local_steps: int = 20
    # Rounds at which the federated LR schedule starts again (warm-up, stable, decay), e.g.
    # [720] with rounds 920: rounds 1-720 are exactly a 720-round run, then a second 200-round
    # cycle re-warms and decays again. So a finished run can be trained further, and the
    # longer run is still what one command gives from scratch (every round is seeded by its
    # number and starts from the previous round's weights).
    restart_rounds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ('steps', 'batch_size', 'eval_every', 'checkpoint_every',
                     'proxy_decoder_hidden', 'rounds', 'clients_per_round', 'local_steps'):
            _check(getattr(self, name) >= 1, name, 'must be >= 1')
        restarts = list(self.restart_rounds)
        _check(all(isinstance(r, int) and 1 <= r < self.rounds for r in restarts)
               and restarts == sorted(set(restarts)), 'restart_rounds',
               f'must be increasing round numbers in [1, rounds = {self.rounds}), got {restarts}')
        _check(self.lr > 0, 'lr', 'must be > 0')
        _check_schedule(self.lr_schedule, self.decay_steps)
        _check(0.0 <= self.mirror_augment <= 1.0, 'mirror_augment', 'must be in [0, 1]')
        _check(self.camera_aux_weight >= 0.0, 'camera_aux_weight', 'must be >= 0')


@dataclass(frozen=True)
class DecoderRecipe:
    """Receiver decoder training on exported (symbols, feature) pairs over the channel."""

    # 'device' is collected from stage 1, not trained (decoder.collect_device_decoders).
    kinds: tuple[str, ...] = ('mlp', 'llm', 'llm_no_channel_tokens')
    # The kind the system ships once trained, or 'nmse': the lowest validation NMSE.
    shipped: str = 'nmse'
    steps: int = 3000                 # per decoder; the first of steps / max_seconds ends it
    max_seconds: float = 0.0          # 0 = no wall-clock limit
    llm_steps: int = 300
    llm_max_seconds: float = 0.0
    batch_size: int = 64
    llm_batch_size: int = 16
    lr: float = 1e-3
    lora_lr: float = 2e-4
    warmup_steps: int = 30
    grad_clip: float = 1.0
    val_packets: int = 256            # packets per validation condition

    def __post_init__(self) -> None:
        _check(len(self.kinds) >= 1 and set(self.kinds) <= set(DECODER_KINDS), 'kinds',
               f'must be a non-empty subset of {sorted(DECODER_KINDS)}')
        _check(self.shipped == 'nmse' or self.shipped in self.kinds, 'shipped',
               f"must be 'nmse' or one of kinds {list(self.kinds)}, got {self.shipped!r}")
        for name in ('steps', 'llm_steps', 'batch_size', 'llm_batch_size', 'val_packets'):
            _check(getattr(self, name) >= 1, name, 'must be >= 1')
        for name in ('max_seconds', 'llm_max_seconds'):
            _check(getattr(self, name) >= 0, name, 'must be >= 0 (0 = unlimited)')


@dataclass(frozen=True)
class Stage2Recipe:
    """Aggregator (TRAM / mean-pool) training on decoded features only."""

    steps: int = 1500
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    device_dropout: float = 0.3       # each device absent with this probability (>= 1 kept)
    eval_every: int = 500
    checkpoint_every: int = 500
    lr_schedule: str = 'constant'     # after warm-up: 'constant', 'cosine' or 'wsd' (as stage 1)
    decay_steps: int = 0              # length of the 'wsd' decay
    # Grid heads: which devices are trained to report an object. 'covering': every present
    # device whose grid contains it; 'sensing': only those whose own camera or radar perceives
    # it (the others need not guess, which keeps them from hallucinating).
    assign_to: str = 'covering'
    # Decoder kinds besides the shipped one that get their own TRAM in `disac-train all`
    # (stage2/both_tram_<kind>), so disac-eval compares decoders each with a matched aggregator.
    decoder_aggregators: tuple[str, ...] = ()
    # Cross-entropy weight of each object class (car, truck, pedestrian, cyclist) for the
    # aggregator only, in place of loss.object_class_weights (empty = those): the device
    # networks keep their own loss.
    object_class_weights: tuple[float, ...] = ()
    # Fraction of steps on which TRAM fuses only the m likeliest cells of each device, m drawn
    # uniformly from [pruned_min_cells, cells), as TRAM.max_fused_cells does for large groups at
    # run time; the cells left out are read by the grid head from their own tokens, which a
    # model trained only on full grids never learned. 0 = every step fuses every cell.
    pruned_step_fraction: float = 0.0
    pruned_min_cells: int = 16

    def __post_init__(self) -> None:
        _check(0.0 <= self.pruned_step_fraction <= 1.0, 'pruned_step_fraction',
               'must be in [0, 1]')
        _check(self.pruned_min_cells >= 1, 'pruned_min_cells', 'must be >= 1')
        _check(all(w >= 0 for w in self.object_class_weights), 'object_class_weights',
               'must be numbers >= 0')
        _check(set(self.decoder_aggregators) <= set(DECODER_KINDS), 'decoder_aggregators',
               f'must be a subset of {list(DECODER_KINDS)}, got '
               f'{list(self.decoder_aggregators)}')
        for name in ('steps', 'batch_size', 'eval_every', 'checkpoint_every'):
            _check(getattr(self, name) >= 1, name, 'must be >= 1')
        _check(0.0 <= self.device_dropout < 1.0, 'device_dropout', 'must be in [0, 1)')
        _check(self.assign_to in ('covering', 'sensing'), 'assign_to',
               "must be 'covering' or 'sensing'")
        _check_schedule(self.lr_schedule, self.decay_steps)


@dataclass(frozen=True)
class EvalRecipe:
    """Evaluation sweeps."""

    snr_db: tuple[float, ...] = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0)
    fading: tuple[str, ...] = ('awgn', 'rayleigh')
    num_devices: tuple[int, ...] = (1, 2, 3, 4)
    distance_m: tuple[float, ...] = (50.0, 100.0, 200.0, 300.0, 400.0)
    reference_snr_db: float = 10.0      # condition of the K and distance sweeps
    reference_fading: str = 'rayleigh'
    nominal_distance_m: float = 100.0   # distance of the SNR sweep (SNR set directly)
    max_frames: int = 0                 # 0 = the whole test split
    llm_max_frames: int = 60            # LLM decoders are slow on CPU: a fixed subset
    match_gate_m: float = 2.0
    score_threshold: float = 0.5
    # How the per-device reports of one object are merged (detection_fusion.py): 'weighted'
    # clusters within fusion_radius_m, 'nms' suppresses within nms_radius_m (0 = off).
    fusion: str = 'weighted'
    fusion_radius_m: float = 2.5
    fusion_min_score: float = 0.3
    nms_radius_m: float = 1.5
    seed: int = 1234
    jpeg_quality: int = 50
    digital_rf_bits: int = 4
    digital_channel_uses: int = 16384   # per device per frame, for the digital chain
    symbol_bits: int = 8                # quantisation of the semantic symbols on the wire

    def __post_init__(self) -> None:
        _check(len(self.snr_db) >= 1, 'snr_db', 'must list at least one SNR')
        _check(len(self.fading) >= 1 and set(self.fading) <= {'awgn', 'rayleigh'}, 'fading',
               "must list 'awgn' and/or 'rayleigh'")
        _check(len(self.num_devices) >= 1 and all(k >= 1 for k in self.num_devices),
               'num_devices', 'must list device counts >= 1')
        _check(all(d > 0 for d in self.distance_m), 'distance_m', 'must be > 0')
        _check(self.reference_fading in ('awgn', 'rayleigh'), 'reference_fading',
               "must be 'awgn' or 'rayleigh'")
        _check(self.match_gate_m > 0, 'match_gate_m', 'must be > 0')
        _check(0 < self.score_threshold < 1, 'score_threshold', 'must be in (0, 1)')
        _check(self.nms_radius_m >= 0, 'nms_radius_m', 'must be >= 0')
        _check(self.fusion in FUSION_METHODS, 'fusion',
               f'must be one of {", ".join(FUSION_METHODS)}')
        _check(self.fusion_radius_m >= 0, 'fusion_radius_m', 'must be >= 0')
        _check(0 < self.fusion_min_score <= 1, 'fusion_min_score', 'must be in (0, 1]')
        _check(1 <= self.jpeg_quality <= 100, 'jpeg_quality', 'must be in [1, 100]')
        _check(1 <= self.digital_rf_bits <= 8, 'digital_rf_bits', 'must be in [1, 8]')
        _check(self.digital_channel_uses >= 1, 'digital_channel_uses', 'must be >= 1')
        _check(1 <= self.symbol_bits <= 8, 'symbol_bits', 'must be in [1, 8]')
        _check(self.max_frames >= 0 and self.llm_max_frames >= 1, 'max_frames',
               'max_frames >= 0 and llm_max_frames >= 1')

    def fusion_config(self) -> FusionConfig:
        """The detection merging these settings describe."""
        return FusionConfig.for_method(self.fusion, self.fusion_radius_m, self.nms_radius_m,
                                       self.fusion_min_score)


@dataclass(frozen=True)
class Recipe:
    """Everything the pipeline needs besides the data."""

    name: str = 'default'
    seed: int = 0
    threads: int = 2
    llm: str = 'smollm2'                 # 'smollm2', 'tiny' (random tiny Llama) or a folder
    aggregator_xy: tuple[float, float] = (0.0, 0.0)   # receiver position (m), for distances
    baselines: tuple[str, ...] = ('rf_only', 'camera_only', 'mean_pool')
    rvfn: mc.RVFNConfig = field(default_factory=mc.RVFNConfig)
    head: mc.HeadConfig = field(default_factory=mc.HeadConfig)
    encoder: mc.EncoderConfig = field(default_factory=mc.EncoderConfig)
    mlp_decoder: mc.MLPDecoderConfig = field(default_factory=mc.MLPDecoderConfig)
    llm_decoder: mc.LLMDecoderConfig = field(default_factory=mc.LLMDecoderConfig)
    tram: mc.TRAMConfig = field(default_factory=mc.TRAMConfig)
    loss: mc.LossConfig = field(default_factory=mc.LossConfig)
    channel: mc.ChannelConfig = field(default_factory=mc.ChannelConfig)
    train_channel: ChannelRange = field(default_factory=ChannelRange)
    stage1: Stage1Recipe = field(default_factory=Stage1Recipe)
    decoder: DecoderRecipe = field(default_factory=DecoderRecipe)
    stage2: Stage2Recipe = field(default_factory=Stage2Recipe)
    eval: EvalRecipe = field(default_factory=EvalRecipe)

    def __post_init__(self) -> None:
        _check(self.threads >= 1, 'threads', 'must be >= 1')
        ok = {'rf_only', 'camera_only', 'mean_pool'}
        _check(set(self.baselines) <= ok, 'baselines', f'must be a subset of {sorted(ok)}')
        f = self.rvfn.feature_dim
        for name, value in (('encoder.feature_dim', self.encoder.feature_dim),
                            ('mlp_decoder.feature_dim', self.mlp_decoder.feature_dim),
                            ('llm_decoder.feature_dim', self.llm_decoder.feature_dim),
                            ('tram.feature_dim', self.tram.feature_dim)):
            _check(value == f, name, f'must equal rvfn.feature_dim={f}')
        n = self.encoder.num_symbols
        for name, value in (('mlp_decoder.num_symbols', self.mlp_decoder.num_symbols),
                            ('llm_decoder.num_symbols', self.llm_decoder.num_symbols)):
            _check(value == n, name, f'must equal encoder.num_symbols={n}')
        _check(self.head.dim == self.rvfn.dim, 'head.dim', f'must equal rvfn.dim={self.rvfn.dim}')
        polar = self.rvfn.layout == 'polar'
        for name, head in (('head', self.head), ('tram.head', self.tram.head)):
            _check((head.kind == 'grid') == polar, f'{name}.kind',
                   "must be 'grid' with rvfn.layout 'polar' and 'set' with 'pooled'")
            if polar:
                _check(tuple(head.polar_grid) == tuple(self.rvfn.polar_grid)
                       and head.max_range_m == self.rvfn.max_range_m, f'{name}.polar_grid',
                       'polar_grid and max_range_m must equal the rvfn ones')
        if polar and self.stage2.pruned_step_fraction > 0:
            # A pruned step keeps m in [pruned_min_cells, cells): with no such m it prunes nothing.
            cells = math.prod(self.tram.head.polar_grid)
            _check(self.stage2.pruned_min_cells < cells, 'stage2.pruned_min_cells',
                   f'must be below the {cells} cells of tram.head.polar_grid '
                   f'{list(self.tram.head.polar_grid)} when pruned_step_fraction > 0')

    # ------------------------------------------------------------------ (de)serialisation
    _MODEL_SECTIONS = {'rvfn': mc.RVFNConfig, 'head': mc.HeadConfig, 'encoder': mc.EncoderConfig,
                       'mlp_decoder': mc.MLPDecoderConfig, 'llm_decoder': mc.LLMDecoderConfig,
                       'tram': mc.TRAMConfig, 'loss': mc.LossConfig,
                       'channel': mc.ChannelConfig}
    _RECIPE_SECTIONS = {'train_channel': ChannelRange, 'stage1': Stage1Recipe,
                        'decoder': DecoderRecipe, 'stage2': Stage2Recipe, 'eval': EvalRecipe}

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict (round-trips through :meth:`from_dict`)."""
        out: dict[str, Any] = {'name': self.name, 'seed': self.seed, 'threads': self.threads,
                               'llm': self.llm, 'aggregator_xy': list(self.aggregator_xy),
                               'baselines': list(self.baselines)}
        for key in self._MODEL_SECTIONS:
            out[key] = getattr(self, key).to_dict()
        for key in self._RECIPE_SECTIONS:
            obj = getattr(self, key)
            out[key] = {f.name: (list(getattr(obj, f.name))
                                 if isinstance(getattr(obj, f.name), tuple)
                                 else getattr(obj, f.name)) for f in fields(obj)}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'Recipe':
        """Build from a mapping; unknown keys and bad values raise ConfigError naming the field."""
        if not isinstance(data, Mapping):
            raise ConfigError('recipe', f'expected a mapping, got {type(data).__name__}')
        top = {'name', 'seed', 'threads', 'llm', 'aggregator_xy', 'baselines'}
        known = top | set(cls._MODEL_SECTIONS) | set(cls._RECIPE_SECTIONS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0],
                              f'unknown key; expected one of {", ".join(sorted(known))}')
        kwargs: dict[str, Any] = {}
        scalars = _build(_TopLevel, {k: data[k] for k in top if k in data}, '')
        for k in top:
            kwargs[k] = getattr(scalars, k)
        for key, ctype in cls._MODEL_SECTIONS.items():
            if key in data:
                kwargs[key] = ctype.from_dict(data[key] or {}, prefix=f'{key}.')
        for key, rtype in cls._RECIPE_SECTIONS.items():
            if key in data:
                kwargs[key] = _build(rtype, data[key], f'{key}.')
        return cls(**kwargs)


@dataclass(frozen=True)
class _TopLevel:
    name: str = 'default'
    seed: int = 0
    threads: int = 2
    llm: str = 'smollm2'
    aggregator_xy: tuple[float, float] = (0.0, 0.0)
    baselines: tuple[str, ...] = ('rf_only', 'camera_only', 'mean_pool')


def load_recipe(name_or_path: str | Path) -> Recipe:
    """'default' / 'quick' (the shipped YAML files) or a path to a recipe YAML."""
    text = str(name_or_path)
    path = CONFIG_DIR / RECIPE_FILES[text] if text in RECIPE_FILES else Path(text)
    if not path.is_file():
        if text in ('default', 'quick'):
            # Installed without the config folder: fall back to the built-in values.
            return quick_recipe() if text == 'quick' else Recipe()
        raise ConfigError('recipe', f'{path}: no such recipe file (or use default/quick)')
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8')) or {}
    except yaml.YAMLError as err:
        raise ConfigError('recipe', f'{path}: invalid YAML: {err}') from err
    try:
        return Recipe.from_dict(data)
    except ConfigError as err:
        raise ConfigError(err.field, err.problem, source=str(path)) from None


def quick_recipe() -> Recipe:
    """The built-in quick recipe (same values as ``config/train_quick.yaml``)."""
    grid = (4, 8)
    f = grid[0] * grid[1] * 4
    dim = 32
    head = mc.HeadConfig(dim=dim, num_heads=2, kind='grid', polar_grid=grid)
    return Recipe(
        name='quick', seed=0, threads=2, llm='tiny',
        rvfn=mc.RVFNConfig(vis_channels=(8, 16, 32), rf_channels=(8, 16), dim=dim,
                           num_heads=2, num_cross_layers=1, feature_dim=f, coord_channels=True,
                           layout='polar', polar_grid=grid, cell_dim=4),
        head=head,
        encoder=mc.EncoderConfig(feature_dim=f, num_symbols=16, hidden=64),
        mlp_decoder=mc.MLPDecoderConfig(num_symbols=16, feature_dim=f, hidden=128, num_layers=2),
        llm_decoder=mc.LLMDecoderConfig(llm='tiny', num_symbols=16, symbols_per_token=4,
                                        feature_dim=f, lora_r=4, lora_alpha=8),
        tram=mc.TRAMConfig(feature_dim=f, dim=dim, num_layers=1, num_heads=2,
                           detect_in_device_frame=True, head=head),
        stage1=Stage1Recipe(steps=40, batch_size=8, lr=2e-3, warmup_steps=5,
                            proxy_decoder_hidden=64, eval_every=20, checkpoint_every=20),
        decoder=DecoderRecipe(kinds=DECODER_KINDS,
                              shipped='device', steps=300, llm_steps=20, batch_size=64,
                              llm_batch_size=8, warmup_steps=5, val_packets=64),
        stage2=Stage2Recipe(steps=80, batch_size=8, lr=2e-3, warmup_steps=5, eval_every=40,
                            checkpoint_every=40, decoder_aggregators=('mlp',)),
        eval=EvalRecipe(snr_db=(-5.0, 5.0, 20.0), num_devices=(1, 4), distance_m=(100.0, 400.0),
                        max_frames=24, llm_max_frames=8))

