"""Stage 1: train ONE device's models on that device's own data, then export what it transmits.

Models (per device, per modality variant):

* ``detector``: :class:`LocalDetector` = RVFN + set-prediction head, objects in the device frame;
* ``encoder``: :class:`SemanticEncoder` (fused feature -> L channel symbols);
* ``proxy_decoder``: a small :class:`MLPDecoder` standing in for the receiver during stage 1;
* ``proxy_head``: a one-device :class:`TRAM` (mean-pool, K = 1) that detects objects from the
  *decoded* feature (set heads only; a grid head reads the per-cell feature, so the local head
  itself detects from the decoded feature and the code is trained to survive the channel).

Loss = local-head set loss (fused tokens) + proxy-head set loss (decoded feature after a random
channel draw: SNR, distance, AWGN/Rayleigh) + NMSE(decoded, fused feature). The proxy path makes
the fused feature carry the objects and the code channel-robust; it is trained end to end through
the differentiable channel. Only this device's view of the dataset is read
(:class:`~disac_ros.core.training.data.DeviceFrames`).

Output folder ``OUT/stage1/<modalities>/<device>/``: ``checkpoint/`` (models, config, seeds,
metrics, optimizer state), ``train_log.{csv,jsonl}``, ``export_train.npz`` (and
``export_val.npz``): the device's symbols, feature targets, frame index, stamps and pose.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
import time
from typing import Any
import zlib

import numpy as np
import torch

from disac_ros.core.dataset import DisacDataset
from disac_ros.core.errors import ConfigError
from disac_ros.core.models.channel import WirelessChannel
from disac_ros.core.models.config import TRAMConfig
from disac_ros.core.models.losses import build_criterion, camera_class_loss
from disac_ros.core.models.rvfn import LocalDetector
from disac_ros.core.models.semantic_codec import MLPDecoder, SemanticEncoder
from disac_ros.core.models.config import MLPDecoderConfig
from disac_ros.core.models.tram import TRAM
from disac_ros.core.training import common
from disac_ros.core.training.data import DeviceFrames, save_export
from disac_ros.core.training.logging import LossLog, progress
from disac_ros.core.training.recipes import Recipe

MODEL_NAMES = ('detector', 'encoder', 'proxy_decoder', 'proxy_head')


def stage1_dir(out: str | Path, modalities: str, device_id: str) -> Path:
    """Folder of one device's stage-1 results."""
    return Path(out) / 'stage1' / modalities / device_id


def build_device_models(recipe: Recipe, modalities: str = 'both') -> dict[str, torch.nn.Module]:
    """Fresh stage-1 models of one device (weights seeded by the caller)."""
    rc = replace(recipe.rvfn, modalities=modalities)
    f = rc.feature_dim
    proxy_head_cfg = TRAMConfig(feature_dim=f, dim=recipe.head.dim,
                                tokens_per_device=recipe.tram.tokens_per_device, max_devices=1,
                                num_layers=0, num_heads=recipe.head.num_heads,
                                aggregator='mean_pool', head=recipe.head)
    models: dict[str, torch.nn.Module] = {
        'detector': LocalDetector(rc, recipe.head),
        'encoder': SemanticEncoder(recipe.encoder),
        'proxy_decoder': MLPDecoder(MLPDecoderConfig(
            num_symbols=recipe.encoder.num_symbols, feature_dim=f,
            hidden=recipe.stage1.proxy_decoder_hidden, num_layers=2,
            linear_skip=recipe.mlp_decoder.linear_skip,
            input_scaling=recipe.mlp_decoder.input_scaling)),
    }
    if recipe.head.kind != 'grid':   # grid heads read the feature: the local head is the proxy
        models['proxy_head'] = TRAM(proxy_head_cfg)
    return models


def _device_key(device_id: str) -> int:
    return zlib.crc32(device_id.encode('utf-8')) & 0x7FFFFFFF


def proxy_detect(models: dict[str, torch.nn.Module], fhat: torch.Tensor, snr: torch.Tensor,
                 dist: torch.Tensor) -> Any:
    """Detect from decoded features (B, F) -> SetPrediction: with a grid head, the device's own
    local head (it reads the per-cell feature); else the one-device proxy TRAM."""
    detector = models['detector']
    if 'proxy_head' not in models:
        return detector.detect_from_feature(fhat)  # type: ignore[operator]
    head = models['proxy_head']
    b = fhat.shape[0]
    return head(fhat[:, None], torch.ones(b, 1, dtype=torch.bool), torch.zeros(b, 1, 3),
                torch.stack((snr, dist), dim=-1)[:, None],
                torch.zeros(b, 1, dtype=torch.long)).prediction


def stage1_loss(models: dict[str, torch.nn.Module], img: torch.Tensor, rfx: torch.Tensor,
                tgt: Any, rng: np.random.Generator, recipe: Recipe, criterion: torch.nn.Module,
                channel: WirelessChannel) -> tuple[torch.Tensor, dict[str, float]]:
    """The stage-1 objective of one batch (module doc): local head + proxy head through a
    random channel drawn from ``rng`` + feature NMSE; also the parts as floats."""
    r1 = recipe.stage1
    fused, pred = models['detector'](img, rfx)
    x = models['encoder'](fused.feature)
    cond = common.draw_conditions(rng, img.shape[0], recipe.train_channel)
    y = common.send(channel, x, cond, common.torch_gen(rng))
    fhat = models['proxy_decoder'](y, cond.snr_db, cond.distance_m)
    ppred = proxy_detect(models, fhat, cond.snr_db, cond.distance_m)
    l_local = criterion(pred, tgt)
    l_proxy = criterion(ppred, tgt)
    l_rec = common.nmse(fhat, fused.feature.detach())
    loss = (r1.local_head_weight * l_local['loss'] + r1.proxy_head_weight * l_proxy['loss']
            + r1.reconstruction_weight * l_rec)
    parts = {'loss_local': l_local['loss'].item(), 'loss_proxy': l_proxy['loss'].item(),
             'nmse': l_rec.item()}
    # The camera's auxiliary loss needs a camera: the RF-only baseline trains without it.
    if r1.camera_aux_weight > 0 and models['detector'].rvfn.use_camera:
        l_cam = camera_aux_loss(models['detector'], fused, tgt)
        loss = loss + r1.camera_aux_weight * l_cam
        parts['loss_camera'] = l_cam.item()
    return loss, parts


def camera_aux_loss(detector: torch.nn.Module, fused: Any, tgt: Any) -> torch.Tensor:
    """The camera auxiliary loss (``stage1.camera_aux_weight``) of one batch."""
    polar = getattr(detector.rvfn, 'polar', None)
    if fused.camera_logits is None or polar is None:
        raise ConfigError('stage1.camera_aux_weight', 'needs rvfn.layout polar with '
                          'rvfn.camera_class_head: true and a camera')
    return camera_class_loss(fused.camera_logits, tgt, polar.grid, polar.lift.sum(-1) > 0)


@torch.no_grad()
def encode_frames(detector: LocalDetector, encoder: SemanticEncoder, frames: DeviceFrames,
                  batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Device forward pass over all frames: (symbols (N, L, 2), fused features (N, F))."""
    detector.eval()
    encoder.eval()
    syms, feats = [], []
    for start in range(0, len(frames), batch_size):
        idx = list(range(start, min(start + batch_size, len(frames))))
        img, rfx, _ = frames.batch(idx)
        fused = detector.rvfn(img, rfx)
        syms.append(encoder(fused.feature).numpy())
        feats.append(fused.feature.numpy())
    return np.concatenate(syms), np.concatenate(feats)


def export_device(models: dict[str, torch.nn.Module], frames: DeviceFrames,
                  path: Path) -> Path:
    """Write the device's transmitted data for the frames (see :func:`data.save_export`)."""
    syms, feats = encode_frames(models['detector'], models['encoder'],  # type: ignore[arg-type]
                                frames)
    return save_export(path, frames.device_id, syms, feats, frames.frame_index, frames.time_s,
                       frames.pose)


@torch.no_grad()
def validate(models: dict[str, torch.nn.Module], frames: DeviceFrames, recipe: Recipe,
             criterion: torch.nn.Module, channel: WirelessChannel) -> dict[str, float]:
    """Losses and device-frame detection metrics on held-out frames (10 dB Rayleigh, 100 m)."""
    from disac_ros.core.evaluation.metrics import DetectionStats
    for m in models.values():
        m.eval()
    stats_local = DetectionStats(recipe.eval.match_gate_m, recipe.eval.fusion_config())
    stats_proxy = DetectionStats(recipe.eval.match_gate_m, recipe.eval.fusion_config())
    tot = {'val_loss_local': 0.0, 'val_loss_proxy': 0.0, 'val_nmse': 0.0}
    n_batches = 0
    gen = torch.Generator().manual_seed(recipe.seed + 99)
    for start in range(0, len(frames), 32):
        idx = list(range(start, min(start + 32, len(frames))))
        img, rfx, tgt = frames.batch(idx)
        fused, pred = models['detector'](img, rfx)
        x = models['encoder'](fused.feature)
        b = len(idx)
        snr, dist = torch.full((b,), 10.0), torch.full((b,), 100.0)
        y = channel(x, dist, snr, fading='rayleigh', generator=gen).y
        fhat = models['proxy_decoder'](y, snr, dist)
        ppred = proxy_detect(models, fhat, snr, dist)
        tot['val_loss_local'] += float(criterion(pred, tgt)['loss'])
        tot['val_loss_proxy'] += float(criterion(ppred, tgt)['loss'])
        tot['val_nmse'] += float(common.nmse(fhat, fused.feature))
        n_batches += 1
        stats_local.add_batch(pred, tgt, recipe.eval.score_threshold)
        stats_proxy.add_batch(ppred, tgt, recipe.eval.score_threshold)
    out = {k: v / max(n_batches, 1) for k, v in tot.items()}
    out['val_nmse_db'] = common.to_db(out.pop('val_nmse'))
    out.update({f'val_local_{k}': v for k, v in stats_local.summary().items()})
    out.update({f'val_proxy_{k}': v for k, v in stats_proxy.summary().items()})
    return out


def train_stage1(train: DisacDataset, device_id: str, out: str | Path, recipe: Recipe,
                 modalities: str = 'both', val: DisacDataset | None = None,
                 resume: bool = False, show_progress: bool = True,
                 steps: int | None = None) -> dict[str, Any]:
    """
    Train one device's stage-1 models on its own view of ``train`` and export its symbols.

    :param train: the training dataset; only ``train.device_view(device_id)`` is read.
    :param device_id: the device.
    :param out: model folder; results go to ``out/stage1/<modalities>/<device_id>``.
    :param recipe: sizes and budgets.
    :param modalities: 'both', 'rf' or 'camera' (the unimodal baselines).
    :param val: optional validation dataset (its view of the same device only).
    :param resume: continue from the saved checkpoint (same step numbering and batches).
    :param steps: override of ``recipe.stage1.steps`` (total steps).
    :return: summary with metrics, steps, wall time and paths.
    """
    common.set_threads(recipe.threads)
    r1 = recipe.stage1
    total = int(steps if steps is not None else r1.steps)
    folder = stage1_dir(out, modalities, device_id)
    ckpt_dir = folder / 'checkpoint'
    frames = DeviceFrames(train.device_view(device_id), modalities)
    val_frames = DeviceFrames(val.device_view(device_id), modalities) if val is not None else None
    torch.manual_seed(recipe.seed * 1000 + _device_key(device_id) % 1000)
    models = build_device_models(recipe, modalities)
    params = common.trainable(*models.values())
    opt = common.make_optimizer([{'params': params, 'lr': r1.lr}], r1.weight_decay)
    start = 0
    if resume and (ckpt_dir / 'config.json').is_file():
        start, _ = common.load_training_checkpoint(ckpt_dir, models, opt)
    if r1.freeze_codec:
        if start == 0:
            raise ConfigError('stage1.freeze_codec', f'{device_id}: fine-tunes a trained device '
                              f'(encoder and decoder kept), but {ckpt_dir} holds no checkpoint '
                              'to resume; train without it first, then --resume with it')
        # AdamW skips parameters without gradients (no update, no decay), so the optimizer and
        # its saved state keep listing them and checkpoints resume either way.
        for name in ('encoder', 'proxy_decoder'):
            models[name].requires_grad_(False)
    log = LossLog(folder, resume_from=start if resume else None)
    criterion = build_criterion(recipe.loss, recipe.head)
    channel = WirelessChannel(recipe.channel)
    key = _device_key(device_id)
    meta_base = {
        'stage': 'stage1', 'device_id': device_id, 'modalities': modalities,
        'recipe': recipe.to_dict(),
        'seeds': {'recipe_seed': recipe.seed, 'train_data_seeds': train.manifest.get('seeds'),
                  'val_data_seeds': val.manifest.get('seeds') if val is not None else None},
        'data': {'train': str(train.root.resolve()), 'train_frames': len(frames),
                 'val': str(val.root.resolve()) if val is not None else None},
    }
    metrics: dict[str, Any] = {}
    t0 = time.perf_counter()
    bar = progress(total, start, f'stage1 {modalities}/{device_id}', show_progress)
    step = start
    for step in range(start, total):
        for m in models.values():
            m.train()
        rng = common.step_rng(recipe.seed, 'stage1', step, key)
        idx = rng.choice(len(frames), size=r1.batch_size, replace=len(frames) < r1.batch_size)
        mirror = (rng.random(len(idx)) < r1.mirror_augment).tolist() \
            if r1.mirror_augment > 0 else None
        img, rfx, tgt = frames.batch(idx.tolist(), mirror)
        loss, parts = stage1_loss(models, img, rfx, tgt, rng, recipe, criterion, channel)
        common.set_lr(opt, step, r1.warmup_steps, total, r1.lr_schedule, r1.decay_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r1.grad_clip)
        opt.step()
        row = {'step': step, 'loss': loss.item(), 'loss_local': parts['loss_local'],
               'loss_proxy': parts['loss_proxy'], 'nmse_db': common.to_db(parts['nmse']),
               'lr': opt.param_groups[0]['lr'], 'elapsed_s': round(log.elapsed(), 2)}
        done = step + 1
        if val_frames is not None and (done % r1.eval_every == 0 or done == total):
            metrics = validate(models, val_frames, recipe, criterion, channel)
            row.update(metrics)
        log.write(row)
        bar.update(1)
        bar.set_postfix(loss=f'{loss.item():.3f}')
        if done % r1.checkpoint_every == 0 or done == total:
            common.save_training_checkpoint(ckpt_dir, models, opt, done,
                                            {**meta_base, 'metrics': metrics})
    bar.close()
    if start >= total:   # nothing left to train: the saved models and their metrics stand
        _, saved = common.load_training_checkpoint(ckpt_dir, models, None)
        metrics = dict(saved.get('metrics') or {})
    elif val_frames is not None and not metrics:
        metrics = validate(models, val_frames, recipe, criterion, channel)
    rows = log.read()
    first = [r['loss'] for r in rows[:max(1, len(rows) // 10)]]
    last = [r['loss'] for r in rows[-max(1, len(rows) // 10):]]
    summary = {'device_id': device_id, 'modalities': modalities, 'steps': total,
               'resumed_from': start, 'wall_s': round(time.perf_counter() - t0, 2),
               'loss_first': float(np.mean(first)) if first else None,
               'loss_last': float(np.mean(last)) if last else None, 'metrics': metrics}
    export_device(models, frames, folder / 'export_train.npz')
    if val_frames is not None:
        export_device(models, val_frames, folder / 'export_val.npz')
    common.write_json(folder / 'summary.json', summary)
    return summary


def export_stage1(train: DisacDataset, device_id: str, out: str | Path,
                  modalities: str = 'both', val: DisacDataset | None = None) -> dict[str, Any]:
    """
    Write a device's exports (``export_train.npz``, and ``export_val.npz`` with ``val``) from its
    saved stage-1 detector and encoder, without training: for a model folder whose exports are
    missing or were made from other frames (e.g. an exported model, which keeps none).

    :return: summary with the number of frames exported per split and the wall time.
    """
    folder = stage1_dir(out, modalities, device_id)
    if not (folder / 'checkpoint').is_dir():
        raise ConfigError('stage1', f'{folder}: no stage-1 checkpoint for {device_id}; train it '
                                    'first')
    t0 = time.perf_counter()
    models = load_device_models(out, modalities, device_id)
    frames = {'train': DeviceFrames(train.device_view(device_id), modalities)}
    if val is not None:
        frames['val'] = DeviceFrames(val.device_view(device_id), modalities)
    for split, fr in frames.items():
        export_device(models, fr, folder / f'export_{split}.npz')
    return {'device_id': device_id, 'modalities': modalities,
            'frames': {k: len(v) for k, v in frames.items()},
            'wall_s': round(time.perf_counter() - t0, 2)}


def is_device_agnostic(out: str | Path) -> bool:
    """True when the model folder holds one shared device network for every device id
    (``model.json``: ``device_agnostic``; see :mod:`disac_ros.core.training.generalist`)."""
    import json
    path = Path(out) / 'model.json'
    try:
        return bool(json.loads(path.read_text()).get('device_agnostic', False))
    except (OSError, ValueError, AttributeError):
        return False


def model_device(out: str | Path, device_id: str) -> str:
    """The model's device entry whose weights ``device_id`` runs: itself, or the shared one."""
    from disac_ros.core.training.federated import SHARED_DEVICE
    return SHARED_DEVICE if is_device_agnostic(out) else device_id


def load_device_models(out: str | Path, modalities: str, device_id: str) -> dict[str, Any]:
    """Load a device's stage-1 models (built from their saved configs); any device id of a
    device-agnostic model loads the shared network."""
    from disac_ros.core.models.checkpoint import load_checkpoint
    device_id = model_device(out, device_id)
    ckpt = load_checkpoint(stage1_dir(out, modalities, device_id) / 'checkpoint')
    for m in ckpt.models.values():
        m.eval()
    return ckpt.models
