"""Export the shipped subset of a trained model folder (what the running system loads).

``disac-train all`` leaves a large folder: every device's stage-1 models *with* the stage-1
proxies and optimizer state, the device exports (symbols of every training frame), all decoders,
the baselines' models and the loss logs. The running system (:mod:`disac_ros.core.inference`)
needs only::

    model.json, recipe.json
    stage1/<modalities>/<device>/checkpoint   'detector' + 'encoder' (no proxies)
    decoders/<modalities>/<shipped>/checkpoint      (for 'device': one decoder per device)
    stage2/<modalities>_<aggregator>/checkpoint
    stage2/<modalities>_<aggregator>/calibration.json   (if ``disac-train calibrate`` made one)

:func:`export_model` copies exactly that (weights byte for byte, so the sha256 recorded in each
``config.json`` still matches; a stage-1 ``config.json`` is rewritten to list only the kept
models), verifies every copied checkpoint with the strict loader, writes a ``MODEL_CARD.md``
and swaps the result into place atomically.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
import shutil
import tempfile
from typing import Any, Mapping, Sequence

from disac_ros.core.errors import ConfigError, DisacError
from disac_ros.core.models.checkpoint import (CONFIG_FILE, METADATA_FILE, CheckpointError,
                                              load_checkpoint, read_checkpoint_config)
from disac_ros.core.training.calibration import calibration_path, load_calibration
from disac_ros.core.training.decoder import decoder_dir
from disac_ros.core.training.stage1 import stage1_dir
from disac_ros.core.training.stage2 import stage2_dir

SHIPPED_DEVICE_MODELS = ('detector', 'encoder')
MODEL_CARD = 'MODEL_CARD.md'
DEFAULT_CARD_SECTIONS = ('Number of devices', 'Decoder comparison', 'Per class', 'Comparisons',
                         'Generalisation')
_MODEL_JSON_KEYS = ('format', 'format_version', 'devices', 'device_agnostic', 'shipped_decoder',
                    'recipe', 'decoder_val_nmse_db', 'timing_s', 'data', 'wall_s',
                    'calibration', 'sensors')


class ExportError(DisacError):
    """The source model folder lacks something the shipped system needs; names the path."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f'{path}: missing; not a disac-train model folder') from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f'{path}: unreadable ({exc})') from None


def copy_checkpoint(src: Path, dst: Path, keep: Sequence[str] | None = None) -> list[str]:
    """
    Copy a checkpoint folder without trainer state; ``keep`` limits the models copied.

    Weights are copied byte for byte; ``config.json`` lists only the kept models, so the
    strict loader's sha256/key checks apply unchanged. Returns the kept model names.
    """
    try:
        conf = read_checkpoint_config(src)
    except CheckpointError as err:
        raise ExportError(str(err)) from None
    models: dict[str, Any] = conf['models']
    names = list(models) if keep is None else list(keep)
    missing = [n for n in names if n not in models]
    if missing:
        raise ExportError(f'{src / CONFIG_FILE}: no model(s) {missing}; has {sorted(models)}')
    dst.mkdir(parents=True, exist_ok=False)
    for name in names:
        shutil.copy2(src / models[name]['weights'], dst / models[name]['weights'])
    if (src / METADATA_FILE).is_file():
        shutil.copy2(src / METADATA_FILE, dst / METADATA_FILE)
    (dst / CONFIG_FILE).write_text(json.dumps({**conf, 'models': {n: models[n] for n in names}},
                                              indent=1))
    return names


def _verify(folder: Path) -> None:
    """Strict load of a copied checkpoint (an LLM decoder: weights' sha256 and keys only)."""
    conf = read_checkpoint_config(folder)
    if any(e.get('type') == 'LLMDecoder' for e in conf['models'].values()):
        # Building an LLM decoder needs its backbone; the copy itself is checked by hash.
        for entry in conf['models'].values():
            digest = hashlib.sha256((folder / entry['weights']).read_bytes()).hexdigest()
            if digest != entry['sha256']:
                raise CheckpointError(f'{folder / entry["weights"]}: sha256 mismatch')
        return
    load_checkpoint(folder)


def metrics_sections(markdown: str, titles: Sequence[str] = DEFAULT_CARD_SECTIONS) -> str:
    """The ``## `` sections of a disac-eval ``metrics.md`` whose title starts with one of
    ``titles`` (the full SNR/distance sweeps are too long for a card)."""
    out: list[str] = []
    keep = False
    for line in markdown.splitlines():
        if line.startswith('## '):
            keep = any(line[3:].startswith(t) for t in titles)
        if keep:
            out.append(line)
    return '\n'.join(out)


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob('*') if p.is_file())


def _seeds(stage1_ckpt: Path) -> dict[str, Any]:
    meta = stage1_ckpt / METADATA_FILE
    if not meta.is_file():
        return {}
    return dict(json.loads(meta.read_text()).get('seeds', {}))


def model_card(model: Mapping[str, Any], recipe: Mapping[str, Any], seeds: Mapping[str, Any],
               source: Path, size_bytes: int, command: str | None = None,
               metrics_md: str | None = None, notes: str | None = None,
               calibration: Mapping[str, Any] | None = None) -> str:
    """Markdown model card of an exported folder (``calibration``: the TRAM's calibration.json)."""
    timing = model.get('timing_s') or {}
    decoders = model.get('decoders') or {}
    refit = int((decoders.get('both/device') or {}).get('refit_steps') or 0)
    lines = [
        f'# DiSAC model `{model.get("recipe", recipe.get("name", "?"))}`', '',
        f'Exported {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")} '
        f'from `{source}` by `disac-train export`; {size_bytes / 1e6:.2f} MB.', '',
        '## Contents', '',
        ('* devices: any id, any number: ONE shared stage-1 RVFN + semantic encoder for every '
         'vehicle and roadside unit (`stage1/both/shared/checkpoint`, trained federated with '
         'Flower FedAvg), TRAM with relative geometry (no per-id parameter, no absolute map)'
         if model.get('device_agnostic') else
         f'* devices: {", ".join(model.get("devices", []))} (stage-1 RVFN + semantic encoder '
         'each, `stage1/both/<device>/checkpoint`)'),
        f'* shipped decoder: `{model.get("shipped_decoder", "mlp")}` '
        f'(`decoders/both/{model.get("shipped_decoder", "mlp")}/checkpoint`'
        + ('; each device\'s stage-1 decoder, trained with its encoder on its own data'
           + (f', then refit {refit} steps to its device\'s current features, encoder fixed)'
              if refit else ')')
           if model.get('shipped_decoder') == 'device' else ')'),
        '* aggregator: TRAM (`stage2/both_tram/checkpoint`)'
        + (f'; class weights {[round(w, 3) for w in calibration["class_weights"]]} and '
           f'thresholds {calibration.get("class_thresholds")} (car, truck, pedestrian, cyclist) '
           f'fitted on the validation split by `disac-train calibrate` '
           f'(`stage2/both_tram/calibration.json`; validation accuracy '
           f'{calibration.get("accuracy_before", float("nan")):.4f} -> '
           f'{calibration.get("accuracy_after", float("nan")):.4f})' if calibration else ''),
        '* no trainer/optimizer state, device exports, logs or baseline models', '',
        '## Training', '',
    ]
    if command:
        lines += ['```', command, '```', '']
    scene_seeds = seeds.get('train_scene_seeds')
    if scene_seeds:
        lines.append(f'* training scenes: {len(scene_seeds)} family seeds '
                     f'{min(scene_seeds)}–{max(scene_seeds)}')
    lines += [f'* train data seeds: {seeds.get("train_data_seeds", "the scene seeds")}',
              f'* val data seeds: {seeds.get("val_data_seeds")}',
              f'* recipe seed: {seeds.get("recipe_seed", recipe.get("seed"))}']
    for sec in ('stage1', 'decoder', 'stage2'):
        if isinstance(recipe.get(sec), dict):
            r = recipe[sec]
            # A device-agnostic stage 1 is federated: it runs rounds, not stage1.steps.
            keys = (('rounds', 'clients_per_round', 'local_steps', 'batch_size', 'lr')
                    if sec == 'stage1' and model.get('device_agnostic')
                    else ('steps', 'batch_size', 'lr'))
            lines.append(f'* {sec}: ' + ', '.join(f'{k}={r[k]}' for k in keys if k in r))
    rv = recipe.get('rvfn', {})
    if rv and rv.get('layout') == 'polar':
        enc = recipe.get('encoder', {})
        lines.append(f'* rvfn: polar layout, grid {rv.get("polar_grid")} (angle x range cells, '
                     f'{rv.get("max_range_m")} m), {rv.get("cell_dim")} values per cell = '
                     f'feature_dim {rv.get("feature_dim")}, dim={rv.get("dim")}; '
                     f'{enc.get("num_symbols")} channel symbols per packet')
    elif rv:
        lines.append(f'* rvfn: dim={rv.get("dim")}, rf_grid={rv.get("rf_grid")}, vis_grid='
                     f'{rv.get("vis_grid")}, coord_channels={rv.get("coord_channels", False)}, '
                     f'feature_dim={rv.get("feature_dim")}')
    if timing:
        lines.append(f'* training wall time: {timing.get("total", "?")} s in all '
                     '(2-core CPU; includes the baselines)')
    lines += ['', 'Full recipe: `recipe.json`.', '']
    if metrics_md:
        # Nest the eval report's sections under this card's heading.
        quoted = [('#' + ln) if ln.startswith('#') else ln
                  for ln in metrics_md.strip().splitlines()]
        lines += ['## Measured (disac-eval)', '', *quoted, '']
    if notes:
        lines += ['## Known weaknesses', '', notes.strip(), '']
    return '\n'.join(lines)


def export_model(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                 modalities: str = 'both', aggregator: str = 'tram', command: str | None = None,
                 metrics_md: str | None = None, notes: str | None = None) -> dict[str, Any]:
    """
    Copy what inference needs from model folder ``src`` into ``dst`` (replaced atomically).

    :param metrics_md: markdown (e.g. tables of a disac-eval ``metrics.md``) for the card.
    :param notes: "known weaknesses" text for the card.
    :return: {'path', 'bytes', 'devices', 'shipped_decoder'}.
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve() or dst.resolve() in src.resolve().parents:
        raise ConfigError('to', f'{dst}: must not be the source folder or contain it')
    if dst.exists() and any(dst.iterdir()) and not (dst / 'model.json').is_file():
        raise ConfigError('to', f'{dst}: exists and is not a model folder; refusing to replace')
    model = _read_json(src / 'model.json')
    recipe = _read_json(src / 'recipe.json')
    devices = model.get('devices')
    if not isinstance(devices, list) or not devices:
        raise ExportError(f'{src / "model.json"}: "devices" must be a non-empty list')
    shipped = str(model.get('shipped_decoder', 'mlp'))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dst.name + '.tmp-', dir=dst.parent))
    try:
        for dev in devices:
            copy_checkpoint(stage1_dir(src, modalities, dev) / 'checkpoint',
                            stage1_dir(tmp, modalities, dev) / 'checkpoint',
                            SHIPPED_DEVICE_MODELS)
        copy_checkpoint(decoder_dir(src, modalities, shipped) / 'checkpoint',
                        decoder_dir(tmp, modalities, shipped) / 'checkpoint')
        copy_checkpoint(stage2_dir(src, modalities, aggregator) / 'checkpoint',
                        stage2_dir(tmp, modalities, aggregator) / 'checkpoint')
        calibration = calibration_path(stage2_dir(src, modalities, aggregator))
        if calibration.is_file():
            load_calibration(calibration.parent)            # a corrupt file is not shipped
            shutil.copy2(calibration, calibration_path(stage2_dir(tmp, modalities, aggregator)))
        for ckpt in tmp.rglob(CONFIG_FILE):
            try:
                _verify(ckpt.parent)
            except CheckpointError as err:
                raise ExportError(f'exported copy fails its integrity check: {err}') from None
        slim = {k: model[k] for k in _MODEL_JSON_KEYS if k in model}
        slim['variants'] = [modalities]
        for key, sub in (('stage1', f'{modalities}/'), ('decoders', f'{modalities}/{shipped}'),
                         ('stage2', f'{modalities}_{aggregator}')):
            if isinstance(model.get(key), dict):
                slim[key] = {k: v for k, v in model[key].items() if k.startswith(sub)}
        slim['exported_from'] = str(src.resolve())
        (tmp / 'model.json').write_text(json.dumps(slim, indent=1))
        (tmp / 'recipe.json').write_text(json.dumps(recipe, indent=1))
        size = _folder_bytes(tmp)
        seeds = _seeds(stage1_dir(src, modalities, devices[0]) / 'checkpoint')
        cal = calibration_path(stage2_dir(tmp, modalities, aggregator))
        (tmp / MODEL_CARD).write_text(model_card(slim, recipe, seeds, src, size, command,
                                                 metrics_md, notes,
                                                 _read_json(cal) if cal.is_file() else None))
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {'path': str(dst), 'bytes': _folder_bytes(dst), 'devices': list(devices),
            'shipped_decoder': shipped}
