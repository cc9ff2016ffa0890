"""Checkpoint folders: model configs, weights and metadata, loaded strictly.

Layout of a checkpoint folder::

    config.json          {"format": "disac_ros.checkpoint", "format_version": 1,
                          "models": {name: {"type", "config", "weights", "sha256",
                                            ["backbone"]}}}
    <name>.safetensors   one per model: its state dict (for an LLM decoder only the trainable
                         part: LoRA adapters and the new layers, never the frozen backbone)
    metadata.json        seeds, metrics, library versions, creation time, user fields

Writes go to a temporary sibling folder that is renamed into place, so a crash never leaves a
half-written checkpoint under the final name. Loading is strict: every file is checked against
its sha256, every key and shape must match, configs must match the model they are loaded into,
and an LLM decoder's backbone must be the one it was trained on. Any problem raises
:class:`CheckpointError` naming the file and what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
import datetime
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
import platform
import re
import shutil
import tempfile
from typing import Any, Callable, Mapping

import torch
from torch import nn

from disac_ros.core.errors import ConfigError, DisacError
from disac_ros.core.models import config as cfgs

FORMAT = 'disac_ros.checkpoint'
FORMAT_VERSION = 1
CONFIG_FILE = 'config.json'
METADATA_FILE = 'metadata.json'
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_\-]*$')


class CheckpointError(DisacError):
    """A checkpoint is missing, corrupt or does not match the model; the message names the file."""


# ---------------------------------------------------------------- model registry

def _local_detector(d: Mapping[str, Any]) -> nn.Module:
    from disac_ros.core.models.rvfn import LocalDetector
    return LocalDetector(cfgs.RVFNConfig.from_dict(d['rvfn'], 'rvfn.'),
                         cfgs.HeadConfig.from_dict(d['head'], 'head.'))


def _builders() -> dict[str, Callable[[Mapping[str, Any], Any], nn.Module]]:
    # Imports are local so that loading e.g. a TRAM checkpoint never imports transformers.
    def rvfn(d: Mapping[str, Any], _llm: Any) -> nn.Module:
        from disac_ros.core.models.rvfn import RVFN
        return RVFN(cfgs.RVFNConfig.from_dict(d))

    def encoder(d: Mapping[str, Any], _llm: Any) -> nn.Module:
        from disac_ros.core.models.semantic_codec import SemanticEncoder
        return SemanticEncoder(cfgs.EncoderConfig.from_dict(d))

    def mlp(d: Mapping[str, Any], _llm: Any) -> nn.Module:
        from disac_ros.core.models.semantic_codec import MLPDecoder
        return MLPDecoder(cfgs.MLPDecoderConfig.from_dict(d))

    def device_decs(d: Mapping[str, Any], _llm: Any) -> nn.Module:
        from disac_ros.core.models.device_decoders import DeviceDecoders, DeviceDecodersConfig
        return DeviceDecoders(DeviceDecodersConfig.from_dict(d))

    def llm_dec(d: Mapping[str, Any], llm: Any) -> nn.Module:
        from disac_ros.core.models.llm_decoder import LLMDecoder
        return LLMDecoder(cfgs.LLMDecoderConfig.from_dict(d), llm=llm)

    def tram(d: Mapping[str, Any], _llm: Any) -> nn.Module:
        from disac_ros.core.models.tram import TRAM
        return TRAM(cfgs.TRAMConfig.from_dict(d))

    def head(d: Mapping[str, Any], _llm: Any) -> nn.Module:
        from disac_ros.core.models.heads import build_head
        return build_head(cfgs.HeadConfig.from_dict(d))

    return {'RVFN': rvfn, 'LocalDetector': lambda d, _l: _local_detector(d),
            'SemanticEncoder': encoder, 'MLPDecoder': mlp, 'DeviceDecoders': device_decs,
            'LLMDecoder': llm_dec, 'TRAM': tram,
            'SetPredictionHead': head, 'GridHead': head}


def model_config_dict(module: nn.Module) -> dict[str, Any]:
    """The JSON config of a registry model (its ``config`` attribute)."""
    conf = getattr(module, 'config', None)
    if isinstance(conf, tuple):      # LocalDetector: (RVFNConfig, HeadConfig)
        return {'rvfn': conf[0].to_dict(), 'head': conf[1].to_dict()}
    if conf is None or not hasattr(conf, 'to_dict'):
        raise CheckpointError(f'{type(module).__name__} has no config; cannot checkpoint it')
    return conf.to_dict()


def build_model(type_name: str, config: Mapping[str, Any], llm: Any = None) -> nn.Module:
    """Instantiate a registry model from its type name and JSON config."""
    builders = _builders()
    if type_name not in builders:
        raise CheckpointError(f'unknown model type {type_name!r}; known: {sorted(builders)}')
    return builders[type_name](config, llm)


# ---------------------------------------------------------------- helpers

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _is_frozen(module: nn.Module, key: str) -> bool:
    fn = getattr(module, 'is_frozen_state', None)
    return bool(fn(key)) if fn is not None else False


def checkpoint_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without frozen parts (e.g. the LLM backbone), as contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()
            if not _is_frozen(module, k)}


def _versions() -> dict[str, str]:
    out = {'python': platform.python_version(), 'torch': torch.__version__}
    for dist in ('numpy', 'transformers', 'peft', 'safetensors', 'disac_ros'):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = 'not installed'
    return out


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f'{path}: missing')
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f'{path}: not valid JSON ({err})') from err


# Config fields added after checkpoints were written, with the value that reproduces the old
# behaviour: a checkpoint without the field matches a model that has it at this value.
_FIELDS_ADDED_LATER: dict[str, Any] = {'cell_context': 0}


def _diff_config(saved: Any, current: Any, where: str) -> str | None:
    """First differing dotted field between two JSON configs, described; None when equal."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            if (key not in saved and key in _FIELDS_ADDED_LATER
                    and current[key] == _FIELDS_ADDED_LATER[key]):
                continue
            if key not in saved or key not in current:
                return f'{where}.{key}: present in only one of checkpoint / model'
            d = _diff_config(saved[key], current[key], f'{where}.{key}')
            if d:
                return d
        return None
    if saved != current:
        return f'{where}: checkpoint has {saved!r}, model has {current!r}'
    return None


# ---------------------------------------------------------------- save / load

def save_checkpoint(folder: str | Path, models: Mapping[str, nn.Module],
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """
    Write a checkpoint folder (replacing an existing one atomically).

    :param folder: destination folder.
    :param models: name -> registry model (RVFN, LocalDetector, SemanticEncoder, MLPDecoder,
        LLMDecoder, TRAM, SetPredictionHead). Names become file names ([A-Za-z0-9_-]).
    :param metadata: JSON-serialisable extras, e.g. {'seeds': {...}, 'metrics': {...}}.
    :return: the folder path.
    """
    from safetensors.torch import save_file
    folder = Path(folder)
    if not models:
        raise ConfigError('models', 'nothing to save')
    registry = _builders()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + '.tmp-', dir=folder.parent))
    try:
        entries: dict[str, Any] = {}
        for name, module in models.items():
            if not _NAME_RE.match(name):
                raise ConfigError(f'models.{name}', 'names must match [A-Za-z0-9][A-Za-z0-9_-]*')
            type_name = type(module).__name__
            if type_name not in registry:
                raise ConfigError(f'models.{name}', f'unsupported model type {type_name}')
            weights = f'{name}.safetensors'
            save_file(checkpoint_state(module), str(tmp / weights), metadata={'format': 'pt'})
            entry = {'type': type_name, 'config': model_config_dict(module),
                     'weights': weights, 'sha256': _sha256(tmp / weights)}
            if hasattr(module, 'backbone_info'):
                entry['backbone'] = module.backbone_info
            entries[name] = entry
        meta = dict(metadata or {})
        meta.setdefault('created_utc', datetime.datetime.now(datetime.timezone.utc).isoformat())
        meta['versions'] = _versions()
        try:
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        except TypeError as err:
            raise ConfigError('metadata', f'must be JSON-serialisable: {err}') from err
        # config.json last: a folder without it is never mistaken for a complete checkpoint.
        (tmp / CONFIG_FILE).write_text(json.dumps(
            {'format': FORMAT, 'format_version': FORMAT_VERSION, 'models': entries}, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    models: dict[str, nn.Module]
    metadata: dict[str, Any]
    folder: Path


def read_checkpoint_config(folder: str | Path) -> dict[str, Any]:
    """Parse and check ``config.json`` of a checkpoint folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f'{folder}: checkpoint folder does not exist')
    path = folder / CONFIG_FILE
    conf = _read_json(path)
    if not isinstance(conf, dict) or conf.get('format') != FORMAT:
        raise CheckpointError(f'{path}: not a disac_ros checkpoint (format != {FORMAT!r})')
    if conf.get('format_version') != FORMAT_VERSION:
        raise CheckpointError(f'{path}: format_version {conf.get("format_version")!r} is not '
                              f'supported (expected {FORMAT_VERSION})')
    if not isinstance(conf.get('models'), dict) or not conf['models']:
        raise CheckpointError(f'{path}: "models" is missing or empty')
    return conf


def _load_state(path: Path, sha: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not path.is_file():
        raise CheckpointError(f'{path}: weights file missing')
    actual = _sha256(path)
    if actual != sha:
        raise CheckpointError(f'{path}: sha256 mismatch (corrupt or modified file): expected '
                              f'{sha[:12]}..., got {actual[:12]}...')
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f'{path}: not a valid safetensors file: {err}') from err


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a (frozen-part-free) state dict; any missing/unexpected key or shape names itself."""
    expected = {k: v for k, v in module.state_dict().items() if not _is_frozen(module, k)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f'{source}: state does not match {type(module).__name__}: '
                              f'missing keys {missing[:5]}{"..." if len(missing) > 5 else ""}, '
                              f'unexpected keys {unexpected[:5]}'
                              f'{"..." if len(unexpected) > 5 else ""}')
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f'{source}: {key}: checkpoint shape {tuple(value.shape)} != '
                                  f'model shape {tuple(expected[key].shape)}')
    result = module.load_state_dict(dict(state), strict=False)
    leftover = [k for k in result.missing_keys if not _is_frozen(module, k)]
    if leftover or result.unexpected_keys:   # defensive: the checks above should catch these
        bad = leftover or result.unexpected_keys
        raise CheckpointError(f'{source}: could not load keys {bad}')


def load_checkpoint(folder: str | Path, models: Mapping[str, nn.Module] | None = None,
                    llm: Any = None) -> Checkpoint:
    """
    Load a checkpoint folder strictly.

    :param folder: a folder written by :func:`save_checkpoint`.
    :param models: name -> existing module to load into (its config must equal the saved one);
        None builds every saved model from its saved config.
    :param llm: a LoadedLLM to reuse for LLM decoders built from config (else loaded by source).
    :return: Checkpoint with the loaded models and the metadata.
    """
    folder = Path(folder)
    conf = read_checkpoint_config(folder)
    cpath = folder / CONFIG_FILE
    saved: dict[str, Any] = conf['models']
    metadata = _read_json(folder / METADATA_FILE)
    names = list(saved) if models is None else list(models)
    out: dict[str, nn.Module] = {}
    for name in names:
        if name not in saved:
            raise CheckpointError(f'{cpath}: no model named {name!r}; has {sorted(saved)}')
        entry = saved[name]
        for key in ('type', 'config', 'weights', 'sha256'):
            if key not in entry:
                raise CheckpointError(f'{cpath}: models.{name}.{key} is missing')
        if models is None:
            try:
                module = build_model(entry['type'], entry['config'], llm)
            except ConfigError as err:
                raise CheckpointError(f'{cpath}: models.{name}.config: {err}') from err
        else:
            module = models[name]
            if type(module).__name__ != entry['type']:
                raise CheckpointError(f'{cpath}: models.{name} is a {entry["type"]}, '
                                      f'not a {type(module).__name__}')
            diff = _diff_config(entry['config'], model_config_dict(module),
                                f'models.{name}.config')
            if diff:
                raise CheckpointError(f'{cpath}: config mismatch: {diff}')
        if 'backbone' in entry and getattr(module, 'backbone_info', None) is not None:
            diff = _diff_config(entry['backbone'], module.backbone_info,
                                f'models.{name}.backbone')
            if diff:
                raise CheckpointError(f'{cpath}: LLM backbone mismatch: {diff}')
        wpath = folder / entry['weights']
        load_state_strict(module, _load_state(wpath, entry['sha256']), str(wpath))
        out[name] = module
    return Checkpoint(models=out, metadata=metadata, folder=folder)
