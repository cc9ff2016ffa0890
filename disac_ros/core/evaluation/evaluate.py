"""Evaluate a trained model folder and its baselines on a test split, over SNR, fading, K, distance.

Pipeline per test frame, as deployed: each device runs its own stage-1 RVFN + encoder on its own
image and RF (:class:`DeviceFrames` of its view), its symbols cross the channel (the same noise
and fading draws for every method of a condition), the aggregator decodes them and TRAM predicts
world-frame objects. Ground truth of a frame at K devices: the objects seen by the camera or in
radar range of at least one of those K devices (the same set for every method).

Methods (``rows[*].method``):

========================= ===============================================================
``disac``                 shipped system: both modalities, the shipped decoder, TRAM
``mlp_decoder``           both modalities, the MLP decoder, TRAM
``llm_decoder``           both modalities, the LLM decoder (channel tokens), TRAM
``llm_no_channel_tokens`` both modalities, the LLM decoder without channel tokens, TRAM
``device_decoder``        both modalities, each device's own stage-1 decoder, TRAM
``rf_only``               RF-only RVFN/encoder/decoder/TRAM (unimodal baseline; the shipped
                          decoder kind where the variant has it, else MLP)
``camera_only``           camera-only RVFN/encoder/decoder/TRAM (unimodal baseline, ditto)
``single_device``         the shipped system with one device (each device alone, pooled)
``mean_pool``             both modalities, shipped decoder, mean-pool instead of TRAM
``digital_jpeg``          JPEG + quantised RF over the same link, delivered or lost by SNR
========================= ===============================================================

Sweeps (``rows[*].sweep``): ``snr`` (every SNR x fading, all devices, nominal distance; SNR set
directly), ``devices`` (K = 1..K at the reference SNR/fading), ``distance`` (SNR from the link
budget at each distance, reference fading). LLM decoders run on ``llm_max_frames`` frames only
(CPU cost); their rows say how many frames they used. A decoder row uses the TRAM trained on that
decoder's output (``stage2/both_tram_<kind>``) where the model folder has one, else the shipped
TRAM; ``aggregator_trained_on`` says which. Each aggregator's class weights and thresholds, where
``disac-train calibrate`` fitted them (``stage2/.../calibration.json``), apply to its detections
in every row that uses it, the fit for the number of devices present in each frame;
``rows[*].class_weights`` / ``class_thresholds`` list those for the row's K (empty = none: the
recipe's single ``score_threshold``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import json
from pathlib import Path
import time
from typing import Any, Callable, Sequence
import zlib

import numpy as np
import torch

from disac_ros.core import packet
from disac_ros.core.dataset import DisacDataset
from disac_ros.core.errors import ConfigError
from disac_ros.core.evaluation import baselines
from disac_ros.core.detection_fusion import FusedDetections
from disac_ros.core.evaluation.metrics import DetectionStats, FeatureError, fused_from_prediction
from disac_ros.core.models.channel import WirelessChannel
from disac_ros.core.models.checkpoint import load_checkpoint
from disac_ros.core.sensor_adapt import sensors_of_model_json
from disac_ros.core.training import common
from disac_ros.core.training.calibration import Calibration, load_calibration
from disac_ros.core.training.data import AggregatorLabels, DeviceFrames
from disac_ros.core.training.decoder import (KINDS, decode, decoder_dir, device_slots,
                                             load_decoder)
from disac_ros.core.training.recipes import Recipe
from disac_ros.core.training.stage1 import (encode_frames, load_device_models, model_device,
                                            stage1_dir)
from disac_ros.core.training.stage2 import stage2_dir

METHODS = ('disac', 'llm_decoder', 'mlp_decoder', 'llm_no_channel_tokens', 'device_decoder',
           'rf_only', 'camera_only', 'single_device', 'mean_pool', 'digital_jpeg')
_DECODER_OF = {'mlp_decoder': 'mlp', 'llm_decoder': 'llm',
               'llm_no_channel_tokens': 'llm_no_channel_tokens', 'device_decoder': 'device'}


@dataclass
class Condition:
    """One evaluation condition."""

    sweep: str
    snr_db: float | None          # None: derived from distance (link budget)
    fading: str
    devices: list[int]            # indices into the evaluated device list
    distance_m: float
    # Bits per I/Q component on the air (the device's symmetric quantiser, as device_node's
    # ``bits``); 0: unquantised symbols, bytes counted at the recipe's eval.symbol_bits.
    symbol_bits: int = 0

    def key(self) -> int:
        text = f'{self.sweep}|{self.snr_db}|{self.fading}|{self.devices}|{self.distance_m}'
        if self.symbol_bits:        # unquantised conditions keep the seeds they always had
            text += f'|{self.symbol_bits}'
        return zlib.crc32(text.encode())


def quantise_symbols(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round trip of each packet (leading dims; the last two are (L, 2)) through the device's
    symmetric ``bits``-bit quantiser (:func:`disac_ros.core.packet.quantize`: one scale per
    packet, max |value| / (2^(bits-1) - 1), levels clipped to +-(2^(bits-1) - 1))."""
    if not 2 <= int(bits) <= 8:
        raise ValueError(f'bits: expected 2..8, got {bits!r}')
    half = 2 ** (int(bits) - 1) - 1
    amax = x.abs().amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(amax > 0, amax / half, torch.ones_like(amax))
    return torch.clamp(torch.round(x / scale), -half, half) * scale


@dataclass
class VariantData:
    """Device-side outputs of one modality variant on the test frames (all devices)."""

    symbols: torch.Tensor         # (N, K, L, 2)
    feature: torch.Tensor         # (N, K, F)


@dataclass
class EvalContext:
    """Everything loaded once for an evaluation run."""

    recipe: Recipe
    checkpoint: Path
    device_ids: list[str]
    slots: list[int]
    frames: np.ndarray            # test frame indices
    labels: AggregatorLabels
    pose: torch.Tensor            # (N, K, 3)
    variants: dict[str, VariantData] = field(default_factory=dict)
    digital: dict[str, Any] = field(default_factory=dict)
    decoders: dict[tuple[str, str], torch.nn.Module] = field(default_factory=dict)
    # (variant, aggregator, decoder kind it was trained on) -> model
    aggregators: dict[tuple[str, str, str], torch.nn.Module] = field(default_factory=dict)
    # the same keys -> the aggregator's folder (stage2/...) and its fitted class calibration
    aggregator_dirs: dict[tuple[str, str, str], Path] = field(default_factory=dict)
    calibration: dict[tuple[str, str, str], Calibration] = field(default_factory=dict)
    shipped: str = 'mlp'


def load_recipe_of(checkpoint: Path) -> Recipe:
    """The recipe stored in a model folder."""
    path = Path(checkpoint) / 'recipe.json'
    if not path.is_file():
        raise ConfigError('checkpoint', f'{checkpoint}: no recipe.json; not a disac-train model '
                                        'folder')
    return Recipe.from_dict(json.loads(path.read_text()))


def _subset(n: int, limit: int) -> np.ndarray:
    if limit <= 0 or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def prepare(checkpoint: str | Path, test: DisacDataset, recipe: Recipe | None = None,
            log: Callable[[str], None] = print, calibrations: bool = True,
            digital: bool = True, adapt_sensors: bool = True) -> EvalContext:
    """Run every device's stage-1 models on its own test view; load decoders and aggregators
    (and the aggregators' calibration files unless ``calibrations`` is False; the digital
    JPEG chain's inputs unless ``digital`` is False). Any device id of a device-agnostic model
    runs the shared network. Each device's camera and radar are resampled to the model's
    (``sensor_adapt.py``), as ``device_node`` does, unless ``adapt_sensors`` is False."""
    ckpt = Path(checkpoint)
    recipe = recipe or load_recipe_of(ckpt)
    common.set_threads(recipe.threads)
    model_json = ckpt / 'model.json'
    model = json.loads(model_json.read_text()) if model_json.is_file() else {}
    shipped = model.get('shipped_decoder', 'mlp')
    sensors = (sensors_of_model_json(model, recipe.rvfn.camera_hfov_deg, str(model_json))
               if adapt_sensors else None)
    devs = [d for d in test.device_ids
            if (stage1_dir(ckpt, 'both', model_device(ckpt, d)) / 'checkpoint').is_dir()]
    if not devs:
        raise ConfigError('checkpoint', f'{ckpt}: no stage-1 device models for the test devices '
                                        f'{test.device_ids}')
    frames = _subset(len(test), recipe.eval.max_frames)
    labels = AggregatorLabels(test)
    ctx = EvalContext(recipe, ckpt, devs, [test.device_ids.index(d) for d in devs], frames,
                      labels, torch.zeros(0), shipped=shipped)
    t0 = time.perf_counter()
    for mod in ('both', 'rf', 'camera'):
        if not all((stage1_dir(ckpt, mod, model_device(ckpt, d)) / 'checkpoint').is_dir()
                   for d in devs):
            continue
        syms, feats, poses, dig = [], [], [], []
        for d in devs:
            models = load_device_models(ckpt, mod, d)
            fr = DeviceFrames(test.device_view(d), mod, frames, sensors=sensors)
            s, f = encode_frames(models['detector'], models['encoder'], fr)
            syms.append(s)
            feats.append(f)
            poses.append(fr.pose)
            if mod == 'both' and digital:
                dig.append(_digital_features(models, fr, recipe))
        ctx.variants[mod] = VariantData(torch.from_numpy(np.stack(syms, 1)),
                                        torch.from_numpy(np.stack(feats, 1)))
        if mod == 'both':
            p = np.stack(poses, 1)
            ctx.pose = torch.from_numpy(np.stack((p[..., 0], p[..., 1], p[..., 3]), -1)
                                        .astype(np.float32))
            if dig:
                ctx.digital = {'feature': torch.from_numpy(np.stack([g[0] for g in dig], 1)),
                               'bytes': np.stack([g[1] for g in dig], 1)}
    log(f'device-side pass over {len(frames)} frames x {len(devs)} devices x '
        f'{len(ctx.variants)} variants: {time.perf_counter() - t0:.1f} s')
    for mod in ctx.variants:
        for kind in KINDS:
            if (decoder_dir(ckpt, mod, kind) / 'checkpoint').is_dir():
                ctx.decoders[(mod, kind)] = load_decoder(ckpt, mod, kind, recipe)
        for agg in ('tram', 'mean_pool'):
            for kind in ('',) + KINDS:
                folder = stage2_dir(ckpt, mod, agg, kind) / 'checkpoint'
                if folder.is_dir():
                    loaded = load_checkpoint(folder)
                    trained_on = kind or str(loaded.metadata.get('decoder', 'mlp'))
                    key = (mod, agg, trained_on)
                    ctx.aggregators[key] = loaded.models['aggregator'].eval()
                    ctx.aggregator_dirs[key] = folder.parent
                    if calibrations:
                        ctx.calibration[key] = load_calibration(folder.parent)
    if ('both', 'tram', shipped) not in ctx.aggregators or ('both', shipped) not in ctx.decoders:
        raise ConfigError('checkpoint', f'{ckpt}: the shipped system is incomplete (needs '
                                        f'decoders/both/{shipped} and stage2/both_tram)')
    return ctx


@torch.no_grad()
def _digital_features(models: dict[str, Any], fr: DeviceFrames,
                      recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """Aggregator-side RVFN features of the JPEG/quantised-RF round trip, and bytes per frame."""
    ev = recipe.eval
    pay = baselines.digital_payload(fr.images.numpy(), fr.rf.numpy(), ev.jpeg_quality,
                                    ev.digital_rf_bits)
    img = (torch.from_numpy(pay.images).permute(0, 3, 1, 2).float() / 255.0).contiguous()
    feats = []
    for s in range(0, len(img), 32):
        feats.append(models['detector'].rvfn(img[s:s + 32],
                                             torch.from_numpy(pay.rf[s:s + 32])).feature.numpy())
    return np.concatenate(feats), pay.bytes


def _method_plan(ctx: EvalContext, method: str) -> tuple[str, str, str, str] | None:
    """(variant, decoder kind, aggregator, decoder kind the aggregator was trained on) of a
    method, or None if its models are missing."""
    def own(mod: str) -> str:
        return ctx.shipped if (mod, ctx.shipped) in ctx.decoders else 'mlp'
    plan = {'disac': ('both', ctx.shipped, 'tram'), 'single_device': ('both', ctx.shipped, 'tram'),
            'mean_pool': ('both', ctx.shipped, 'mean_pool'),
            'rf_only': ('rf', own('rf'), 'tram'), 'camera_only': ('camera', own('camera'), 'tram'),
            'digital_jpeg': ('both', ctx.shipped, 'tram')}
    mod, kind, agg = plan.get(method) or ('both', _DECODER_OF[method], 'tram')
    if mod not in ctx.variants or (mod, kind) not in ctx.decoders:
        return None
    # An aggregator trained on this decoder's output, else (decoder rows) the shipped one.
    trained = [k for (m, a, k) in ctx.aggregators if m == mod and a == agg]
    if kind in trained:
        return mod, kind, agg, kind
    if method in _DECODER_OF and ctx.shipped in trained:
        return mod, kind, agg, ctx.shipped
    if mod != 'both' and len(trained) == 1:
        return mod, kind, agg, trained[0]
    return None


def method_aggregator(ctx: EvalContext, method: str) -> tuple[str, str, str] | None:
    """The key of ``ctx.aggregators`` a method runs (None when its models are absent)."""
    plan = _method_plan(ctx, method)
    return None if plan is None else (plan[0], plan[2], plan[3])


@torch.no_grad()
def run_condition(ctx: EvalContext, method: str, cond: Condition,
                  frame_limit: int = 0, rows: np.ndarray | None = None,
                  calibrated: bool = True, threshold: float | None = None,
                  on_frame: Callable[[FusedDetections, Any], None] | None = None
                  ) -> dict[str, Any] | None:
    """Metrics of one method under one condition (None when the method's models are absent).

    ``rows`` scores only those indices into ``ctx.frames`` (e.g. one bin of time into the run);
    otherwise ``frame_limit`` > 0 takes that many frames spread over all of them.
    ``calibrated`` applies the aggregator's fitted class weights and thresholds (if it has
    any); ``threshold`` overrides the recipe's detection threshold; ``on_frame``, when given,
    receives every scored frame's detections and ground truth (``.classes``, ``.position``)."""
    plan = _method_plan(ctx, method)
    if plan is None:
        return None
    mod, kind, agg, trained_on = plan
    rec = ctx.recipe
    cal = ctx.calibration.get((mod, agg, trained_on), Calibration()) if calibrated else Calibration()
    # merging + per-class settings by the number of devices present in a frame
    fusion_of = {k: cal.fusion(rec.eval.fusion_config(), k) for k in range(1, len(cond.devices) + 1)}
    row_k = 1 if method == 'single_device' else len(cond.devices)
    fusion = fusion_of[row_k]                                          # for the row's record
    threshold = rec.eval.score_threshold if threshold is None else float(threshold)
    if rows is None:
        rows = np.arange(len(ctx.frames)) if frame_limit <= 0 else _subset(len(ctx.frames),
                                                                           frame_limit)
    dev_sets = [[d] for d in cond.devices] if method == 'single_device' else [cond.devices]
    stats = DetectionStats(rec.eval.match_gate_m, fusion)
    ferr = FeatureError()
    sent_bytes: list[float] = []
    delivered_n = 0
    packets_n = 0
    channel = WirelessChannel(rec.channel)
    decoder = ctx.decoders[(mod, kind)]
    model = ctx.aggregators[(mod, agg, trained_on)]
    var = ctx.variants[mod]
    for devs in dev_sets:
        gen = torch.Generator().manual_seed(cond.key() * 7 + sum(devs))
        ri = torch.as_tensor(rows)
        di = torch.as_tensor(devs)
        b, k = len(rows), len(devs)
        x = var.symbols[ri][:, di].reshape(b * k, *var.symbols.shape[2:])
        if cond.symbol_bits and method != 'digital_jpeg':
            x = quantise_symbols(x, cond.symbol_bits)
        f = var.feature[ri][:, di]
        dist = torch.full((b * k,), cond.distance_m)
        snr = None if cond.snr_db is None else torch.full((b * k,), float(cond.snr_db))
        out = channel(x, dist, snr, fading=cond.fading, generator=gen)
        link = torch.stack((out.snr_db, out.distance_m), -1).view(b, k, 2)
        present = torch.ones(b, k, dtype=torch.bool)
        if method == 'digital_jpeg':
            nbytes = ctx.digital['bytes'][rows][:, devs].reshape(-1)
            gain = out.h.pow(2).sum(-1).numpy()
            ok = baselines.delivered(nbytes, out.snr_db.numpy(), gain,
                                     rec.eval.digital_channel_uses)
            present = torch.from_numpy(ok.reshape(b, k))
            fhat = ctx.digital['feature'][ri][:, di] * present[..., None]
            sent_bytes += nbytes.tolist()
            delivered_n += int(ok.sum())
            packets_n += int(ok.size)
        else:
            fhat = decode(decoder, out.y, out.snr_db, out.distance_m, 128,
                          device_slots(decoder, [ctx.device_ids[d] for d in devs], b)
                          ).view(b, k, -1)
            nb = packet.payload_bytes(rec.encoder.num_symbols, cond.symbol_bits or rec.eval.symbol_bits)
            sent_bytes += [float(nb)] * (b * k)
            delivered_n += b * k
            packets_n += b * k
        ferr.add(fhat.numpy(), f.numpy())
        slots = torch.as_tensor([ctx.slots[d] for d in devs], dtype=torch.long).expand(b, k)
        pose = ctx.pose[ri][:, di]
        any_present = present.any(dim=1)
        gts = [ctx.labels.objects(int(ctx.frames[r]), [ctx.slots[d] for d in devs], 'both')
               for r in rows]
        keep = torch.nonzero(any_present).flatten()
        for n in torch.nonzero(~any_present).flatten().tolist():
            stats.add_missed(gts[n].classes)
        for s in range(0, len(keep), 64):
            sel = keep[s:s + 64]
            pred = model(fhat[sel], present[sel], pose[sel], link[sel], slots[sel]).prediction
            per_frame = [fusion_of[n] for n in present[sel].sum(dim=1).tolist()]
            for j, fused in enumerate(fused_from_prediction(pred, threshold, per_frame)):
                gt = gts[int(sel[j])]
                stats.add_frame((fused.class_index + 1).astype(np.int64), fused.position,
                                fused.velocity, gt.classes, gt.position, gt.velocity)
                if on_frame is not None:
                    on_frame(fused, gt)
    s = stats.summary()
    return {'method': method, 'sweep': cond.sweep,
            'K': row_k,
            'snr_db': (float(cond.snr_db) if cond.snr_db is not None
                       else float(np.mean(common_snr(channel, cond.distance_m)))),
            'snr_from_distance': cond.snr_db is None, 'fading': cond.fading,
            'distance_m': cond.distance_m, 'frames': int(len(rows)),
            'accuracy': s['accuracy'], 'class_accuracy': s['class_accuracy'],
            'precision': s['precision'], 'recall': s['recall'],
            'position_rmse_m': s['position_rmse_m'], 'velocity_rmse_m': s['velocity_rmse_m'],
            'nmse_db': ferr.nmse_db(), 'bytes_per_device_frame': float(np.mean(sent_bytes)),
            'delivered_fraction': delivered_n / max(packets_n, 1), 'num_gt': s['num_gt'],
            'decoder': kind if method != 'digital_jpeg' else 'jpeg+rf', 'aggregator': agg,
            'aggregator_trained_on': trained_on, 'class_weights': list(fusion.class_weights),
            'class_thresholds': list(fusion.class_thresholds),
            'modalities': mod, **stats.per_class()}


def common_snr(channel: WirelessChannel, distance_m: float) -> float:
    """Link-budget SNR (dB) at a distance."""
    from disac_ros.core.models.channel import snr_db_from_distance
    return float(snr_db_from_distance(distance_m, channel.cfg))


def conditions(ctx: EvalContext) -> list[Condition]:
    """The sweeps of the recipe (see module doc)."""
    ev = ctx.recipe.eval
    kmax = len(ctx.device_ids)
    alldev = list(range(kmax))
    out = [Condition('snr', float(s), fad, alldev, ev.nominal_distance_m)
           for fad in ev.fading for s in ev.snr_db]
    out += [Condition('devices', ev.reference_snr_db, ev.reference_fading, list(range(k)),
                      ev.nominal_distance_m) for k in ev.num_devices if k <= kmax]
    out += [Condition('distance', None, ev.reference_fading, alldev, float(d))
            for d in ev.distance_m]
    return out


def evaluate(checkpoint: str | Path, test: DisacDataset, recipe: Recipe | None = None,
             methods: Sequence[str] = METHODS, log: Callable[[str], None] = print,
             show_progress: bool = True, calibrations: bool = True) -> dict[str, Any]:
    """Run every method over every condition; return {'rows', 'comparisons', 'meta'}
    (``calibrations`` False: ignore the aggregators' calibration files)."""
    from disac_ros.core.evaluation.report import comparisons
    from disac_ros.core.training.logging import progress
    t0 = time.perf_counter()
    ctx = prepare(checkpoint, test, recipe, log, calibrations=calibrations)
    ev = ctx.recipe.eval
    conds = conditions(ctx)
    rows: list[dict[str, Any]] = []
    bar = progress(len(conds) * len(methods), 0, 'evaluate', show_progress)
    for cond in conds:
        for method in methods:
            bar.update(1)
            if method == 'single_device' and cond.sweep == 'devices' and len(cond.devices) > 1:
                continue
            is_llm = method in ('llm_decoder', 'llm_no_channel_tokens') or (
                method == 'disac' and ctx.shipped in ('llm', 'llm_no_channel_tokens'))
            if is_llm and cond.sweep != 'snr' and method != 'disac':
                continue   # LLM decoders are CPU-expensive: SNR sweep only
            if method == 'device_decoder' and ctx.shipped == 'device' and cond.sweep != 'snr':
                continue   # the same models as disac: shown in the decoder comparison only
            row = run_condition(ctx, method, cond, ev.llm_max_frames if is_llm else 0)
            if row is not None:
                rows.append(row)
    bar.close()
    meta = {'checkpoint': str(ctx.checkpoint), 'test_data': str(test.root),
            'test_seeds': test.manifest.get('seeds'), 'frames': int(len(ctx.frames)),
            'devices': ctx.device_ids, 'shipped_decoder': ctx.shipped,
            'recipe': ctx.recipe.name, 'eval': ctx.recipe.to_dict()['eval'],
            'calibrated': calibrations,
            'train_channel': ctx.recipe.to_dict()['train_channel'],
            'wall_s': round(time.perf_counter() - t0, 1),
            'methods_missing': sorted({m for m in methods} - {r['method'] for r in rows})}
    return {'rows': rows, 'comparisons': comparisons(rows, ev, len(ctx.device_ids)),
            'meta': meta}
