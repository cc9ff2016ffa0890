"""Receiver decoder training (aggregator side) on the devices' exported (symbols, feature) pairs.

One decoder is shared by all devices of a modality variant. Every step draws a batch of packets
from every device's export, fresh channel conditions (SNR uniform in the recipe's range, distance
log-uniform, AWGN or Rayleigh) and fresh noise; the loss is the NMSE of the decoded feature
against the feature the device encoded. Kinds:

* ``mlp``: :class:`MLPDecoder` (non-LLM baseline);
* ``llm``: :class:`LLMDecoder` (frozen causal LM + LoRA, channel-condition tokens);
* ``llm_no_channel_tokens``: the same without the SNR / distance tokens;
* ``device``: not trained here: :class:`DeviceDecoders` collects every device's stage-1 decoder
  (trained end to end with that device's encoder on its task loss) and routes each packet to
  its sender's decoder.

A run stops at ``steps`` or at ``max_seconds`` of wall clock, whichever comes first, so decoders
can be compared at equal steps or equal wall-clock. Validation NMSE (dB) per SNR and fading is
stored in the checkpoint metadata; :func:`choose_shipped` picks the decoder the system ships
(the recipe's ``decoder.shipped``: a kind, or ``nmse`` for the lowest validation NMSE).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
import time
from typing import Any, Sequence

import numpy as np
import torch

from disac_ros.core.errors import ConfigError
from disac_ros.core.models.channel import WirelessChannel
from disac_ros.core.models.checkpoint import load_checkpoint
from disac_ros.core.training import common
from disac_ros.core.training.data import load_export
from disac_ros.core.training.logging import LossLog, progress
from disac_ros.core.training.recipes import DECODER_KINDS, Recipe

KINDS = DECODER_KINDS
TRAINED_KINDS = tuple(k for k in KINDS if k != 'device')
VAL_SNR_DB = (-5.0, 0.0, 10.0, 20.0)


def decoder_dir(out: str | Path, modalities: str, kind: str) -> Path:
    """Folder of one trained decoder."""
    return Path(out) / 'decoders' / modalities / kind


def load_exports(out: str | Path, modalities: str, split: str = 'train') -> dict[str, dict]:
    """device id -> export of every device trained in stage 1 for this variant; for a
    device-agnostic model ('shared' network, exports per scene) '<scene>/<device>' -> export of
    every device of every scene."""
    root = Path(out) / 'stage1' / modalities
    devs = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    out_: dict[str, dict] = {}
    shared = root / 'shared' / 'exports' / split
    if shared.is_dir():
        for path in sorted(shared.glob('*/*.npz')):
            out_[f'{path.parent.name}/{path.stem}'] = load_export(path)
    for dev in devs:
        path = root / dev / f'export_{split}.npz'
        if path.is_file():
            out_[dev] = load_export(path)
    if not out_ and split == 'train':
        raise ConfigError('stage1', f'{root}: no device exports; run `disac-train stage1` first')
    return out_


def load_llm_for(recipe: Recipe, kind: str) -> Any:
    """Load a fresh backbone for an LLM decoder kind (each decoder needs its own copy)."""
    from disac_ros.core.models.llm_loader import load_causal_lm
    return load_causal_lm(common.resolve_llm_source(recipe.llm),
                          dtype=recipe.llm_decoder.backbone_dtype)


def build_decoder(recipe: Recipe, kind: str, llm: Any = None) -> torch.nn.Module:
    """A fresh decoder of ``kind`` sized by the recipe."""
    if kind == 'mlp':
        from disac_ros.core.models.semantic_codec import MLPDecoder
        return MLPDecoder(recipe.mlp_decoder)
    if kind in ('llm', 'llm_no_channel_tokens'):
        from disac_ros.core.models.llm_decoder import LLMDecoder
        cfg = replace(recipe.llm_decoder, llm=common.resolve_llm_source(recipe.llm),
                      use_channel_tokens=(kind == 'llm'))
        return LLMDecoder(cfg, llm=llm if llm is not None else load_llm_for(recipe, kind))
    raise ConfigError('decoder.kind', f'must be one of {TRAINED_KINDS}, got {kind!r}')


@torch.no_grad()
def decode(decoder: torch.nn.Module, y: torch.Tensor, snr: torch.Tensor, dist: torch.Tensor,
           batch_size: int = 256, slot: torch.Tensor | None = None) -> torch.Tensor:
    """Decode in chunks (the LLM decoder is memory-hungry). ``slot``: (N,) model device slot
    of each packet, needed by the per-device decoders (:func:`device_slots`), ignored by the
    shared ones."""
    from disac_ros.core.models.device_decoders import run_decoder
    decoder.eval()
    dev = next(decoder.parameters()).device
    outs = [run_decoder(decoder, y[i:i + batch_size].to(dev), snr[i:i + batch_size].to(dev),
                        dist[i:i + batch_size].to(dev),
                        None if slot is None else slot[i:i + batch_size]).float().cpu()
            for i in range(0, y.shape[0], batch_size)]
    return torch.cat(outs) if outs else y.new_zeros(0)


def device_slots(decoder: torch.nn.Module, device_ids: Sequence[str],
                 frames: int) -> torch.Tensor | None:
    """Slots of the packets of ``frames`` frames x ``device_ids`` (frame-major, the layout of
    ``symbols.reshape(frames * K, ...)``) for :func:`decode`; None for a shared decoder."""
    from disac_ros.core.models.device_decoders import decoder_slots
    slots = decoder_slots(decoder, device_ids)
    return None if slots is None else slots.repeat(frames)


@torch.no_grad()
def validate_decoder(decoder: torch.nn.Module, symbols: np.ndarray, features: np.ndarray,
                     recipe: Recipe, seed: int,
                     slot: torch.Tensor | None = None) -> dict[str, float]:
    """NMSE (dB) per fading and SNR at the nominal distance, fixed noise seed."""
    channel = WirelessChannel(recipe.channel)
    x = torch.from_numpy(symbols)
    f = torch.from_numpy(features)
    dist = torch.full((x.shape[0],), recipe.eval.nominal_distance_m)
    out: dict[str, float] = {}
    for fading in ('awgn', 'rayleigh'):
        for snr_db in VAL_SNR_DB:
            gen = torch.Generator().manual_seed(seed)
            snr = torch.full((x.shape[0],), snr_db)
            y = channel(x, dist, snr, fading=fading, generator=gen).y
            fhat = decode(decoder, y, snr, dist, 64, slot)
            out[f'{fading}_{snr_db:g}dB'] = common.to_db(float(common.nmse(fhat, f)))
    out['mean'] = float(np.mean(list(out.values())))
    return out


def _channel_nmse(decoder: torch.nn.Module, symbols: torch.Tensor, features: torch.Tensor,
                  batch: int, channel: WirelessChannel, recipe: Recipe, rng: np.random.Generator,
                  dev: torch.device = torch.device('cpu')) -> torch.Tensor:
    """One training batch: ``batch`` packets drawn from ``symbols``, sent over fresh channel
    conditions from the recipe's range, decoded; the NMSE against their features."""
    idx = torch.as_tensor(rng.integers(0, len(symbols), size=batch))
    cond = common.draw_conditions(rng, batch, recipe.train_channel)
    y = common.send(channel, symbols[idx], cond, common.torch_gen(rng))
    fhat = decoder(y.to(dev), cond.snr_db.to(dev), cond.distance_m.to(dev)).float()
    return common.nmse(fhat, features[idx].to(dev))


def _device_val_packets(val: dict[str, dict], ids: Sequence[str], recipe: Recipe
                        ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """The per-device decoders' validation packets: ``decoder.val_packets`` drawn from every
    device's export (in model slot order) -> (symbols, features, model slot of each)."""
    parts = [(val[d], i) for i, d in enumerate(ids) if d in val]
    vx = np.concatenate([e['symbols'] for e, _ in parts])
    vf = np.concatenate([e['feature'] for e, _ in parts])
    vs = np.concatenate([np.full(len(e['symbols']), i) for e, i in parts])
    vsel = np.sort(np.random.default_rng(recipe.seed).permutation(len(vx))
                   [:recipe.decoder.val_packets])
    return vx[vsel], vf[vsel], torch.as_tensor(vs[vsel], dtype=torch.long)


def _stack(exports: dict[str, dict]) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([e['symbols'] for e in exports.values()]),
            np.concatenate([e['feature'] for e in exports.values()]))


def train_decoder(out: str | Path, recipe: Recipe, kind: str = 'mlp',
                  modalities: str = 'both', resume: bool = False, show_progress: bool = True,
                  steps: int | None = None, max_seconds: float | None = None,
                  batch_size: int | None = None, torch_device: str = 'cpu',
                  devices: Sequence[str] | None = None) -> dict[str, Any]:
    """
    Train one decoder on the stage-1 exports of every device of a variant (``device``: collect
    the devices' stage-1 decoders instead, see :func:`collect_device_decoders`).

    :param steps: total steps (default: recipe.decoder.steps, or llm_steps for LLM kinds).
    :param max_seconds: wall-clock budget of this call (0 = none; default from the recipe).
    :param batch_size: packets per step (default: the recipe's batch_size / llm_batch_size).
    :param torch_device: where the decoder runs ('cpu', 'cuda', 'cuda:1'); the channel is
        always simulated on the CPU with the same seeded noise, so runs on different
        devices see the same packets.
    :param devices: the model's device ids in slot order (``device`` kind only; default: the
        devices with stage-1 results, sorted).
    :return: summary (steps done, wall time, validation NMSE per condition).
    """
    common.set_threads(recipe.threads)
    if kind == 'device':
        return collect_device_decoders(out, recipe, modalities, devices)
    if kind not in KINDS:
        raise ConfigError('decoder.kind', f'must be one of {KINDS}, got {kind!r}')
    dev = common.torch_device(torch_device)
    rd = recipe.decoder
    is_llm = kind != 'mlp'
    total = int(steps if steps is not None else (rd.llm_steps if is_llm else rd.steps))
    budget = float(max_seconds if max_seconds is not None
                   else (rd.llm_max_seconds if is_llm else rd.max_seconds))
    batch = int(batch_size or (rd.llm_batch_size if is_llm else rd.batch_size))
    train = load_exports(out, modalities, 'train')
    val = load_exports(out, modalities, 'val') or train
    xs, fs = _stack(train)
    vx, vf = _stack(val)
    vsel = np.random.default_rng(recipe.seed).permutation(len(vx))[:rd.val_packets]
    vx, vf = vx[np.sort(vsel)], vf[np.sort(vsel)]
    folder = decoder_dir(out, modalities, kind)
    ckpt_dir = folder / 'checkpoint'
    torch.manual_seed(recipe.seed + 7)
    dec = build_decoder(recipe, kind).to(dev)
    lora = [p for n, p in dec.named_parameters() if p.requires_grad and 'lora_' in n]
    lora_ids = {id(p) for p in lora}
    other = [p for p in common.trainable(dec) if id(p) not in lora_ids]
    groups = [{'params': other, 'lr': rd.lr}] + ([{'params': lora, 'lr': rd.lora_lr}]
                                                 if lora else [])
    opt = common.make_optimizer(groups, 0.01)
    start = 0
    if resume and (ckpt_dir / 'config.json').is_file():
        start, _ = common.load_training_checkpoint(ckpt_dir, {'decoder': dec}, opt)
    log = LossLog(folder, resume_from=start if resume else None)
    channel = WirelessChannel(recipe.channel)
    params = common.trainable(dec)
    meta = {'stage': 'decoder', 'kind': kind, 'modalities': modalities,
            'recipe': recipe.to_dict(), 'devices': sorted(train),
            'seeds': {'recipe_seed': recipe.seed}, 'train_packets': int(len(xs)),
            'val_packets': int(len(vx)), 'batch_size': batch,
            'torch_device': common.device_name(dev),
            'budget': {'steps': total, 'max_seconds': budget}}
    t0 = time.perf_counter()
    bar = progress(total, start, f'decoder {modalities}/{kind}', show_progress)
    done = start
    x_all = torch.from_numpy(xs)
    f_all = torch.from_numpy(fs)
    for step in range(start, total):
        if budget > 0 and time.perf_counter() - t0 >= budget:
            break
        dec.train()
        rng = common.step_rng(recipe.seed, 'decoder', step, KINDS.index(kind))
        loss = _channel_nmse(dec, x_all, f_all, batch, channel, recipe, rng, dev)
        common.set_lr(opt, step, rd.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, rd.grad_clip)
        opt.step()
        done = step + 1
        loss_value = loss.item()
        log.write({'step': step, 'loss': loss_value, 'nmse_db': common.to_db(loss_value),
                   'elapsed_s': round(log.elapsed(), 2)})
        bar.update(1)
        bar.set_postfix(nmse_db=f'{common.to_db(loss_value):.2f}')
    bar.close()
    wall = time.perf_counter() - t0
    if done == start and start > 0:
        common.load_training_checkpoint(ckpt_dir, {'decoder': dec}, None)
    val_nmse = validate_decoder(dec, vx, vf, recipe, recipe.eval.seed)
    # Checkpoints are always written from the CPU so any machine can load and resume them.
    dec.cpu()
    common.optimizer_to(opt, torch.device('cpu'))
    summary = {'kind': kind, 'modalities': modalities, 'steps_done': done,
               'resumed_from': start, 'wall_s': round(wall, 2), 'batch_size': batch,
               'torch_device': common.device_name(dev),
               'trainable_params': sum(p.numel() for p in params),
               'val_nmse_db': val_nmse}
    common.save_training_checkpoint(ckpt_dir, {'decoder': dec}, opt, done,
                                    {**meta, 'metrics': summary})
    common.write_json(folder / 'summary.json', summary)
    return summary


def collect_device_decoders(out: str | Path, recipe: Recipe, modalities: str = 'both',
                            devices: Sequence[str] | None = None) -> dict[str, Any]:
    """
    Gather every device's stage-1 decoder into one :class:`DeviceDecoders` (``decoders/<variant>/
    device``) and validate it like a trained decoder (NMSE per SNR and fading, each device's
    validation packets decoded by its own decoder).

    Nothing is trained: each decoder was trained in stage 1 with its device's encoder, on that
    device's data only. Only weights move to the aggregator.
    """
    from disac_ros.core.models.device_decoders import DeviceDecoders
    from disac_ros.core.training.stage1 import load_device_models, stage1_dir
    t0 = time.perf_counter()
    # Validation packets (the training exports only where no validation split was exported).
    val = load_exports(out, modalities, 'val') or load_exports(out, modalities, 'train')
    ids = list(devices) if devices else sorted(val)
    missing = [d for d in ids if not (stage1_dir(out, modalities, d) / 'checkpoint').is_dir()]
    if missing:
        raise ConfigError('stage1', f'{Path(out) / "stage1" / modalities}: no stage-1 models for '
                                    f'{missing}; run `disac-train stage1` for them first')
    decs = []
    for d in ids:
        models = load_device_models(out, modalities, d)
        if 'proxy_decoder' not in models:
            raise ConfigError('stage1', f'{stage1_dir(out, modalities, d)}: the checkpoint has no '
                                        'proxy_decoder (an exported model folder keeps none)')
        decs.append(models['proxy_decoder'])
    dec = DeviceDecoders.from_decoders(ids, decs)
    vx, vf, vs = _device_val_packets(val, ids, recipe)
    val_nmse = validate_decoder(dec, vx, vf, recipe, recipe.eval.seed, vs)
    folder = decoder_dir(out, modalities, 'device')
    summary = {'kind': 'device', 'modalities': modalities, 'steps_done': 0, 'resumed_from': 0,
               'wall_s': round(time.perf_counter() - t0, 2), 'batch_size': 0,
               'torch_device': 'cpu', 'devices': ids,
               'trainable_params': sum(p.numel() for p in dec.parameters()),
               'val_nmse_db': val_nmse,
               'source': 'stage-1 decoder of each device (trained with its encoder)'}
    from disac_ros.core.models.checkpoint import save_checkpoint
    save_checkpoint(folder / 'checkpoint', {'decoder': dec},
                    {'stage': 'decoder', 'kind': 'device', 'modalities': modalities,
                     'recipe': recipe.to_dict(), 'devices': ids,
                     'seeds': {'recipe_seed': recipe.seed}, 'metrics': summary})
    common.write_json(folder / 'summary.json', summary)
    return summary


def refit_device_decoders(out: str | Path, recipe: Recipe, modalities: str = 'both',
                          steps: int = 0, show_progress: bool = True) -> dict[str, Any]:
    """
    Refit every collected per-device decoder (``decoders/<variant>/device``) to its device's
    current features, encoder fixed: each device's decoder on that device's own training
    export only, NMSE over the recipe's channel range.

    Why: perception-only stage-1 rounds (``stage1.freeze_codec``) move the fused feature while
    the encoder and decoder stay as they were, so decoded NMSE rises round after round even at
    high SNR. The transmitted symbols do not change here, so every other receiver decoder and
    every stored export stays valid; the aggregators trained on this decoder's output should be
    fine-tuned afterwards.

    :param steps: steps per device (batch ``decoder.batch_size``, LR ``decoder.lr`` with a cosine
        decay); 0 only re-validates.
    :return: the decoder summary, with ``refit_steps`` and the NMSE before the refit.
    """
    from disac_ros.core.models.checkpoint import save_checkpoint
    if steps < 0:
        raise ConfigError('decoder.refit_steps', f'must be >= 0, got {steps}')
    folder = decoder_dir(out, modalities, 'device')
    if not (folder / 'checkpoint').is_dir():
        raise ConfigError('decoder', f'{folder}: no collected per-device decoders; run '
                                     '`disac-train decoder --kind device` first')
    loaded = load_checkpoint(folder / 'checkpoint')
    dec = loaded.models['decoder']
    ids = list(dec.config.devices)
    train = load_exports(out, modalities, 'train')
    missing = [d for d in ids if d not in train]
    if missing:
        raise ConfigError('stage1', f'{Path(out) / "stage1" / modalities}: no training export '
                                    f'for {missing}; run `disac-train stage1` for them first')
    val = load_exports(out, modalities, 'val') or train
    vx, vf, vs = _device_val_packets(val, ids, recipe)
    before = validate_decoder(dec, vx, vf, recipe, recipe.eval.seed, vs)
    rd = recipe.decoder
    channel = WirelessChannel(recipe.channel)
    t0 = time.perf_counter()
    bar = progress(steps * len(ids), 0, f'refit decoders {modalities}/device', show_progress)
    for i, dev_id in enumerate(ids):
        x_all = torch.from_numpy(train[dev_id]['symbols'])
        f_all = torch.from_numpy(train[dev_id]['feature'])
        sub = dec.decoders[i]
        params = common.trainable(sub)
        opt = common.make_optimizer([{'params': params, 'lr': rd.lr}], 0.01)
        for step in range(steps):
            sub.train()
            rng = common.step_rng(recipe.seed, 'decoder_refit', step, i)
            loss = _channel_nmse(sub, x_all, f_all, rd.batch_size, channel, recipe, rng)
            common.set_lr(opt, step, rd.warmup_steps, steps, 'cosine')
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, rd.grad_clip)
            opt.step()
            bar.update(1)
            bar.set_postfix(device=dev_id, nmse_db=f'{common.to_db(loss.item()):.2f}')
    bar.close()
    dec.eval()
    after = validate_decoder(dec, vx, vf, recipe, recipe.eval.seed, vs)
    old = dict(loaded.metadata.get('metrics') or {})
    summary = {**old, 'kind': 'device', 'modalities': modalities, 'devices': ids,
               'refit_steps': int(old.get('refit_steps', 0)) + steps,
               'refit_wall_s': round(time.perf_counter() - t0, 2),
               'val_nmse_db_before_refit': before, 'val_nmse_db': after,
               'source': 'stage-1 decoder of each device (trained with its encoder), refit on '
                         "its device's own features with the encoder fixed"}
    save_checkpoint(folder / 'checkpoint', {'decoder': dec},
                    {**loaded.metadata, 'recipe': recipe.to_dict(), 'metrics': summary})
    common.write_json(folder / 'summary.json', summary)
    return summary


def load_decoder(out: str | Path, modalities: str, kind: str, recipe: Recipe | None = None,
                 llm: Any = None) -> torch.nn.Module:
    """Load a trained decoder (LLM kinds load their backbone from the recipe's source)."""
    folder = decoder_dir(out, modalities, kind) / 'checkpoint'
    if kind not in ('mlp', 'device') and llm is None and recipe is not None:
        llm = load_llm_for(recipe, kind)
    dec = load_checkpoint(folder, llm=llm).models['decoder']
    dec.eval()
    return dec


def choose_shipped(out: str | Path, modalities: str = 'both',
                   rule: str = 'nmse') -> tuple[str, dict[str, float]]:
    """
    The decoder kind the system ships, and every available kind's mean validation NMSE.

    :param rule: a kind (shipped once it exists; until then the NMSE rule applies) or 'nmse':
        the lowest mean validation NMSE. NMSE is not the task: a decoder that reproduces the
        feature less exactly may still carry the objects better (see the recipe's reasons).
    """
    import json
    scores: dict[str, float] = {}
    for kind in KINDS:
        path = decoder_dir(out, modalities, kind) / 'summary.json'
        if path.is_file():
            scores[kind] = float(json.loads(path.read_text())['val_nmse_db']['mean'])
    if not scores:
        raise ConfigError('decoder', f'{out}: no trained decoder; run `disac-train decoder`')
    if rule in scores:
        return rule, scores
    return min(scores, key=scores.__getitem__), scores
