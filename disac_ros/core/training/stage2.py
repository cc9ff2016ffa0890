"""Stage 2: train the aggregator (TRAM, or the mean-pool baseline) on transmitted features only.

Inputs are the devices' stage-1 exports (symbols + pose per frame) and the world-frame ground
truth of each frame (aggregator-side label information; no image or RF member is ever read, see
:class:`~disac_ros.core.training.data.AggregatorLabels`). Every step:

1. draws a batch of frames and, per device, fresh channel conditions and noise;
2. decodes each device's received symbols with the trained (frozen) receiver decoder;
3. drops each device with probability ``device_dropout`` (at least one kept), so absent-device
   masking is learned and K may vary at run time;
4. asks TRAM for the objects sensed by the *present* devices, in the world frame (set loss).

Output folder ``OUT/stage2/<modalities>_<aggregator>/`` (``..._<decoder kind>/`` for an aggregator
trained on a decoder other than the variant's own, for the decoder comparison): ``checkpoint/``
(the aggregator model, config, seeds, metrics, optimizer state), ``train_log.{csv,jsonl}``,
``summary.json``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from disac_ros.core.dataset import DisacDataset
from disac_ros.core.errors import ConfigError
from disac_ros.core.models.channel import WirelessChannel
from disac_ros.core.models.losses import build_criterion
from disac_ros.core.models.tram import TRAM
from disac_ros.core.training import common
from disac_ros.core.training.data import AggregatorLabels, collate_targets
from disac_ros.core.training.decoder import load_decoder, load_exports
from disac_ros.core.training.logging import LossLog, progress
from disac_ros.core.training.recipes import Recipe, Stage2Recipe


def stage2_dir(out: str | Path, modalities: str, aggregator: str, decoder_kind: str = '') -> Path:
    """Folder of one trained aggregator: ``<modalities>_<aggregator>`` for the variant's own
    decoder (the shipped one), ``..._<decoder_kind>`` for one trained on another decoder's
    output (the decoder comparison)."""
    return Path(out) / 'stage2' / (f'{modalities}_{aggregator}'
                                   + (f'_{decoder_kind}' if decoder_kind else ''))


@dataclass
class FleetExports:
    """Exports of the K devices, aligned by frame (rows = dataset frames)."""

    device_ids: list[str]
    slots: list[int]                 # device-id slot of each device (index in the dataset)
    symbols: torch.Tensor            # (N, K, L, 2)
    feature: torch.Tensor            # (N, K, F)
    pose: torch.Tensor               # (N, K, 3) x, y, yaw

    @staticmethod
    def from_exports(exports: dict[str, dict], dataset_device_ids: Sequence[str],
                     num_frames: int) -> 'FleetExports':
        """Align exports (each covering every frame of the split) to dataset order."""
        ids = [d for d in dataset_device_ids if d in exports]
        if not ids:
            raise ConfigError('stage1', 'no device exports match the dataset devices')
        for d in ids:
            frames = exports[d]['frame']
            if len(frames) != num_frames or not np.array_equal(frames, np.arange(num_frames)):
                raise ConfigError('stage1', f'export of {d} covers {len(frames)} frames, '
                                            f'the labels have {num_frames}: wrong split?')
        sym = np.stack([exports[d]['symbols'] for d in ids], axis=1)
        feat = np.stack([exports[d]['feature'] for d in ids], axis=1)
        pose4 = np.stack([exports[d]['pose'] for d in ids], axis=1)
        pose = np.stack((pose4[..., 0], pose4[..., 1], pose4[..., 3]), axis=-1)
        return FleetExports(ids, [list(dataset_device_ids).index(d) for d in ids],
                            torch.from_numpy(sym), torch.from_numpy(feat),
                            torch.from_numpy(pose.astype(np.float32)))


def build_aggregator(recipe: Recipe, aggregator: str) -> TRAM:
    """A fresh TRAM (or mean-pool) sized by the recipe."""
    # The mean-pool baseline keeps its one world-frame head (device-frame decoding is TRAM's).
    return TRAM(replace(recipe.tram, aggregator=aggregator,
                        detect_in_device_frame=(recipe.tram.detect_in_device_frame
                                                and aggregator == 'tram')))


def train_stage2(labels_ds: DisacDataset, out: str | Path, recipe: Recipe,
                 modalities: str = 'both', aggregator: str = 'tram',
                 decoder_kind: str = 'mlp', val: DisacDataset | None = None,
                 resume: bool = False, show_progress: bool = True,
                 steps: int | None = None, own_folder: bool = False,
                 torch_device: str = 'cpu', fresh_optimizer: bool = False) -> dict[str, Any]:
    """
    Train the aggregator of a variant on decoded features (see module doc).

    :param labels_ds: the training split, used for its world-frame labels only.
    :param decoder_kind: which trained decoder turns received symbols into features.
    :param own_folder: write to ``stage2_dir(..., decoder_kind)`` (an aggregator for a decoder
        other than the variant's own) instead of the variant's folder.
    :param torch_device: where the decoder and the aggregator run ('cpu', 'cuda'); the channel,
        the labels and the assignment stay on the CPU, so a run draws the same batches anywhere.
    :param fresh_optimizer: with ``resume``, take the weights and step count from the saved
        checkpoint but start a new optimizer (for a checkpoint that keeps no optimizer state,
        e.g. an exported model, or after its inputs changed, e.g. a refit decoder).
    :return: summary (steps, wall time, loss at start/end, validation metrics).
    """
    common.set_threads(recipe.threads)
    dev = common.torch_device(torch_device)
    r2 = recipe.stage2
    total = int(steps if steps is not None else r2.steps)
    labels = AggregatorLabels(labels_ds)
    fleet = FleetExports.from_exports(load_exports(out, modalities, 'train'),
                                      labels_ds.device_ids, len(labels))
    val_data = None
    if val is not None:
        vexp = load_exports(out, modalities, 'val')
        if vexp:
            vl = AggregatorLabels(val)
            val_data = (vl, FleetExports.from_exports(vexp, val.device_ids, len(vl)))
    decoder = load_decoder(out, modalities, decoder_kind, recipe).to(dev)
    for p in decoder.parameters():
        p.requires_grad_(False)
    folder = stage2_dir(out, modalities, aggregator, decoder_kind if own_folder else '')
    ckpt_dir = folder / 'checkpoint'
    torch.manual_seed(recipe.seed + 11)
    model = build_aggregator(recipe, aggregator).to(dev)
    params = common.trainable(model)
    opt = common.make_optimizer([{'params': params, 'lr': r2.lr}], r2.weight_decay)
    start = 0
    if resume and (ckpt_dir / 'config.json').is_file():
        start, _ = common.load_training_checkpoint(ckpt_dir, {'aggregator': model},
                                                    None if fresh_optimizer else opt)
    log = LossLog(folder, resume_from=start if resume else None)
    criterion = build_criterion(recipe.loss, recipe.tram.head).to(dev)
    channel = WirelessChannel(recipe.channel)
    meta = {'stage': 'stage2', 'modalities': modalities, 'aggregator': aggregator,
            'decoder': decoder_kind, 'devices': fleet.device_ids, 'recipe': recipe.to_dict(),
            'seeds': {'recipe_seed': recipe.seed,
                      'train_data_seeds': labels_ds.manifest.get('seeds')},
            'inputs': 'device exports (symbols, pose) + world-frame labels; no raw sensor data',
            'torch_device': common.device_name(dev)}
    metrics: dict[str, Any] = {}
    t0 = time.perf_counter()
    bar = progress(total, start, f'stage2 {modalities}/{aggregator}', show_progress)
    for step in range(start, total):
        model.train()
        rng = common.step_rng(recipe.seed, 'stage2', step)
        loss_d = train_step(model, opt, params, criterion, labels, fleet, decoder, channel,
                            recipe, modalities, rng, step, total)
        loss = loss_d['loss']
        done = step + 1
        row = {'step': step, 'loss': loss.item(), 'loss_class': loss_d['loss_class'].item(),
               'loss_position': loss_d['loss_position'].item(),
               'elapsed_s': round(log.elapsed(), 2)}
        if val_data is not None and (done % r2.eval_every == 0 or done == total):
            metrics = validate_stage2(model, decoder, val_data[0], val_data[1], recipe,
                                      modalities)
            row.update({f'val_{key}': v for key, v in metrics.items()})
        log.write(row)
        bar.update(1)
        bar.set_postfix(loss=f'{loss.item():.3f}')
        if done % r2.checkpoint_every == 0 or done == total:
            common.save_training_checkpoint(ckpt_dir, {'aggregator': model}, opt, done,
                                            {**meta, 'metrics': metrics})
    bar.close()
    if start >= total:   # nothing left to train: the saved model and its metrics stand
        _, saved = common.load_training_checkpoint(ckpt_dir, {'aggregator': model}, None)
        metrics = dict(saved.get('metrics') or {})
    rows = log.read()
    n10 = max(1, len(rows) // 10)
    summary = {'modalities': modalities, 'aggregator': aggregator, 'decoder': decoder_kind,
               'steps': total, 'resumed_from': start, 'torch_device': common.device_name(dev),
               'fresh_optimizer': bool(fresh_optimizer and start > 0),
               'wall_s': round(time.perf_counter() - t0, 2),
               'loss_first': float(np.mean([r['loss'] for r in rows[:n10]])) if rows else None,
               'loss_last': float(np.mean([r['loss'] for r in rows[-n10:]])) if rows else None,
               'metrics': metrics}
    common.write_json(folder / 'summary.json', summary)
    return summary


def train_step(model: TRAM, opt: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter],
               criterion: torch.nn.Module, labels: AggregatorLabels, fleet: FleetExports,
               decoder: torch.nn.Module, channel: WirelessChannel, recipe: Recipe,
               modalities: str, rng: np.random.Generator, step: int, total: int
               ) -> dict[str, torch.Tensor]:
    """One aggregator step (module doc, 1-4) on frames of one fleet, all randomness from
    ``rng``; the model runs where its parameters are, the criterion on the CPU."""
    r2 = recipe.stage2
    dev = next(model.parameters()).device
    b, k = r2.batch_size, len(fleet.device_ids)
    idx = rng.choice(len(labels), size=b, replace=len(labels) < b)
    present = rng.random((b, k)) >= r2.device_dropout
    none = ~present.any(axis=1)
    present[none, rng.integers(0, k, size=int(none.sum()))] = True
    feats, link = decode_fleet(fleet, torch.as_tensor(idx), decoder, channel, recipe, rng)
    on = [[fleet.slots[j] for j in range(k) if present[n, j]] for n in range(b)]
    targets = collate_targets([labels.objects(int(i), on[n], modalities)
                               for n, i in enumerate(idx)])
    sensed = None
    if r2.assign_to == 'sensing':
        sensed = torch.zeros(b, targets.classes.shape[1], k, dtype=torch.bool)
        for n, i in enumerate(idx):
            f = labels.sensed_by(int(i), on[n], fleet.slots, modalities)
            sensed[n, :len(f)] = torch.from_numpy(f)
    present_t = torch.as_tensor(present)
    pose = fleet.pose[idx]
    slots = torch.as_tensor(fleet.slots, dtype=torch.long, device=dev).expand(b, k)
    with fused_cells(model, pruned_cells(model, r2, rng)):
        out_ = model(feats.to(dev), present_t.to(dev), pose.to(dev), link.to(dev), slots)
    # Pose and presence stay on the CPU for the criterion: its cell assignment runs there.
    loss_d = criterion(out_.prediction, targets, pose=pose, present=present_t, sensed=sensed)
    common.set_lr(opt, step, r2.warmup_steps, total, r2.lr_schedule, r2.decay_steps)
    opt.zero_grad(set_to_none=True)
    loss_d['loss'].backward()
    torch.nn.utils.clip_grad_norm_(params, r2.grad_clip)
    opt.step()
    return loss_d


def pruned_cells(model: TRAM, r2: Stage2Recipe, rng: np.random.Generator) -> int:
    """Cells per device this step fuses (``Stage2Recipe.pruned_step_fraction``); 0 = all.
    Draws from ``rng`` only when pruning is on, so recipes without it replay unchanged."""
    if r2.pruned_step_fraction <= 0.0 or model.grid is None:
        return 0
    cells = model.grid.num_cells
    if rng.random() >= r2.pruned_step_fraction or r2.pruned_min_cells >= cells:
        return 0
    return int(rng.integers(r2.pruned_min_cells, cells))


@contextlib.contextmanager
def fused_cells(model: TRAM, cells: int) -> Iterator[None]:
    """Run the block with ``model.max_cells_per_device = cells`` (0 = unchanged), then restore."""
    if cells <= 0:
        yield
        return
    before = model.max_cells_per_device
    model.max_cells_per_device = cells
    try:
        yield
    finally:
        model.max_cells_per_device = before


def decode_fleet(fleet: FleetExports, idx: torch.Tensor, decoder: torch.nn.Module,
                 channel: WirelessChannel, recipe: Recipe,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Send every device's symbols of frames ``idx`` over fresh random links and decode them.

    :return: (decoded features (B, K, F), link (B, K, 2) = (snr_db, distance_m)).
    """
    from disac_ros.core.training.decoder import decode, device_slots
    b, k = idx.shape[0], len(fleet.device_ids)
    x = fleet.symbols[idx].reshape(b * k, *fleet.symbols.shape[2:])
    cond = common.draw_conditions(rng, b * k, recipe.train_channel)
    y = common.send(channel, x, cond, common.torch_gen(rng))
    fhat = decode(decoder, y, cond.snr_db, cond.distance_m,
                  slot=device_slots(decoder, fleet.device_ids, b))
    link = torch.stack((cond.snr_db, cond.distance_m), dim=-1)
    return fhat.view(b, k, -1), link.view(b, k, 2)


@torch.no_grad()
def validate_stage2(model: TRAM, decoder: torch.nn.Module, labels: AggregatorLabels,
                    fleet: FleetExports, recipe: Recipe, modalities: str) -> dict[str, float]:
    """World-frame detection metrics, all devices present, 10 dB Rayleigh at 100 m."""
    from disac_ros.core.evaluation.metrics import DetectionStats
    model.eval()
    stats = DetectionStats(recipe.eval.match_gate_m, recipe.eval.fusion_config())
    score_fleet(model, decoder, labels, fleet, recipe, modalities, stats,
                torch.Generator().manual_seed(recipe.eval.seed))
    s = stats.summary()
    return {key: s[key] for key in ('accuracy', 'precision', 'recall', 'position_rmse_m')}


@torch.no_grad()
def score_fleet(model: TRAM, decoder: torch.nn.Module, labels: AggregatorLabels,
                fleet: FleetExports, recipe: Recipe, modalities: str, stats: Any,
                gen: torch.Generator) -> None:
    """Add every frame of a fleet to ``stats`` (a DetectionStats): all devices present,
    10 dB Rayleigh at the nominal distance, noise from ``gen``."""
    from disac_ros.core.training.decoder import decode, device_slots
    dev = next(model.parameters()).device
    channel = WirelessChannel(recipe.channel)
    k = len(fleet.device_ids)
    slots = torch.as_tensor(fleet.slots, dtype=torch.long, device=dev)
    for start in range(0, len(labels), 32):
        idx = torch.arange(start, min(start + 32, len(labels)))
        b = len(idx)
        x = fleet.symbols[idx].reshape(b * k, *fleet.symbols.shape[2:])
        snr = torch.full((b * k,), 10.0)
        dist = torch.full((b * k,), recipe.eval.nominal_distance_m)
        y = channel(x, dist, snr, fading='rayleigh', generator=gen).y
        fhat = decode(decoder, y, snr, dist,
                      slot=device_slots(decoder, fleet.device_ids, b)).view(b, k, -1)
        link = torch.stack((snr, dist), -1).view(b, k, 2)
        pred = model(fhat.to(dev), torch.ones(b, k, dtype=torch.bool, device=dev),
                     fleet.pose[idx].to(dev), link.to(dev), slots.expand(b, k)).prediction
        targets = collate_targets([labels.objects(int(i), fleet.slots, modalities)
                                   for i in idx])
        stats.add_batch(pred, targets, recipe.eval.score_threshold)


def load_aggregator(out: str | Path, modalities: str, aggregator: str,
                    decoder_kind: str = '') -> TRAM:
    """Load a trained aggregator (``decoder_kind``: see :func:`stage2_dir`)."""
    from disac_ros.core.models.checkpoint import load_checkpoint
    model = load_checkpoint(stage2_dir(out, modalities, aggregator, decoder_kind) / 'checkpoint'
                            ).models['aggregator']
    model.eval()
    return model  # type: ignore[return-value]
