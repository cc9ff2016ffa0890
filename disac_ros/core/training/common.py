"""Shared training plumbing: seeding, channel draws, optimisers, resumable trainer state.

Determinism: every step draws its randomness from ``np.random.default_rng([seed, tag, step])``
(and a torch.Generator seeded from it), so a run resumed at step ``s`` sees exactly the batches
and channel draws an uninterrupted run would have seen, without saving RNG states.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
import hashlib
import json
import math
import os
from pathlib import Path
import tempfile
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from disac_ros.core.errors import ConfigError
from disac_ros.core.models.channel import WirelessChannel
from disac_ros.core.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from disac_ros.core.training.recipes import ChannelRange

TRAINER_STATE = 'trainer_state.pt'
TRAINER_STATE_INFO = 'trainer_state.json'
_TAGS = {'stage1': 1, 'decoder': 2, 'stage2': 3, 'eval': 4, 'export': 5, 'decoder_refit': 6}


def set_threads(n: int) -> None:
    """Limit torch's intra-op threads (the machine is shared)."""
    torch.set_num_threads(max(1, int(n)))


def torch_device(name: str) -> torch.device:
    """A torch device from a CLI/recipe name, with a clear error when it is not available."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError('torch_device', f"{name!r} is not a torch device (use 'cpu' or "
                          f"'cuda'): {err}") from err
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('torch_device', f"{name!r}: this machine has no CUDA device "
                          f"(torch {torch.__version__}); use 'cpu'")
    if dev.type not in ('cpu', 'cuda'):
        raise ConfigError('torch_device', f"{name!r}: only 'cpu' and 'cuda' are supported")
    return dev


def device_name(dev: torch.device) -> str:
    """'cpu' or 'cuda (<GPU name>)' for logs and checkpoint metadata."""
    if dev.type == 'cuda':
        return f'cuda ({torch.cuda.get_device_name(dev)})'
    return 'cpu'


def optimizer_to(optimizer: torch.optim.Optimizer, dev: torch.device) -> None:
    """Move an optimizer's state tensors (e.g. Adam moments) to ``dev``."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.to(dev)


def step_rng(seed: int, tag: str, step: int, extra: int = 0) -> np.random.Generator:
    """The numpy Generator of one training step (see module doc)."""
    return np.random.default_rng([int(seed), _TAGS.get(tag, 0), int(step), int(extra)])


def torch_gen(rng: np.random.Generator) -> torch.Generator:
    """A torch.Generator seeded from a numpy Generator."""
    g = torch.Generator()
    g.manual_seed(int(rng.integers(0, 2 ** 62)))
    return g


@dataclass
class ChannelDraw:
    """Per-packet channel conditions of a batch."""

    snr_db: torch.Tensor        # (B,)
    distance_m: torch.Tensor    # (B,)
    rayleigh: torch.Tensor      # (B,) bool


def draw_conditions(rng: np.random.Generator, n: int, rng_cfg: ChannelRange) -> ChannelDraw:
    """SNR uniform in dB, distance log-uniform, fading Bernoulli(rayleigh_fraction)."""
    snr = rng.uniform(rng_cfg.snr_db[0], rng_cfg.snr_db[1], size=n)
    lo, hi = rng_cfg.distance_m
    dist = np.exp(rng.uniform(math.log(lo), math.log(hi), size=n))
    ray = rng.random(n) < rng_cfg.rayleigh_fraction
    return ChannelDraw(torch.as_tensor(snr, dtype=torch.float32),
                       torch.as_tensor(dist, dtype=torch.float32), torch.as_tensor(ray))


def send(channel: WirelessChannel, x: torch.Tensor, cond: ChannelDraw,
         gen: torch.Generator | None) -> torch.Tensor:
    """Send (B, L, 2) symbols through the channel with per-packet fading types; return y."""
    y = torch.empty_like(x)
    for fading, mask in (('awgn', ~cond.rayleigh), ('rayleigh', cond.rayleigh)):
        idx = torch.nonzero(mask).flatten()
        if idx.numel() == 0:
            continue
        out = channel(x[idx], cond.distance_m[idx], cond.snr_db[idx], fading=fading,
                      generator=gen)
        y = y.index_copy(0, idx, out.y)
    return y


def nmse(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum |e - t|^2 / sum |t|^2 over the batch (a scalar tensor)."""
    return (estimate - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def to_db(x: float) -> float:
    """10 log10(x), -inf-safe."""
    return 10.0 * math.log10(max(float(x), 1e-30))


def make_optimizer(groups: Iterable[Mapping[str, Any]],
                   weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over parameter groups ({'params', 'lr'})."""
    return torch.optim.AdamW([dict(g) for g in groups], weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, step: int, warmup: int, total: int = 0,
           schedule: str = 'constant', decay_steps: int = 0) -> None:
    """Linear warm-up to each group's 'base_lr', then one of:

    * ``'constant'``;
    * ``'cosine'``: a cosine decay to 5 % at step ``total``;
    * ``'wsd'`` (warm-up, stable, decay): constant, then over the last ``decay_steps`` steps a
      linear decay to 2 % at step ``total``. Steps before the decay do not depend on ``total``,
      so a run can be continued with ``--resume --steps`` and still end with its decay.
    """
    scale = min(1.0, (step + 1) / max(1, warmup))
    if schedule == 'cosine' and total > warmup and step >= warmup:
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        scale = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))
    elif schedule == 'wsd' and decay_steps > 0 and step >= max(warmup, total - decay_steps):
        t = min(1.0, (step - (total - decay_steps) + 1) / decay_steps)
        scale = 1.0 - 0.98 * t
    for g in optimizer.param_groups:
        g.setdefault('base_lr', g['lr'])
        g['lr'] = g['base_lr'] * scale


def trainable(*modules: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters of several modules, de-duplicated, in order."""
    seen: set[int] = set()
    out = []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    h.update(path.read_bytes())
    return h.hexdigest()


def save_training_checkpoint(folder: str | Path, models: Mapping[str, nn.Module],
                             optimizer: torch.optim.Optimizer | None, step: int,
                             metadata: Mapping[str, Any]) -> Path:
    """Models (strict checkpoint format) + optimizer state and step for resuming."""
    folder = save_checkpoint(folder, models, {**metadata, 'step': int(step)})
    if optimizer is not None:
        path = folder / TRAINER_STATE
        torch.save({'optimizer': optimizer.state_dict(), 'step': int(step)}, path)
        (folder / TRAINER_STATE_INFO).write_text(json.dumps(
            {'step': int(step), 'sha256': _sha256(path)}, indent=1))
    return folder


def load_training_checkpoint(folder: str | Path, models: Mapping[str, nn.Module],
                             optimizer: torch.optim.Optimizer | None) -> tuple[int, dict]:
    """Load models and optimizer state saved by :func:`save_training_checkpoint`.

    :return: (step to continue from, metadata). Raises CheckpointError naming the bad file.
    """
    folder = Path(folder)
    ckpt = load_checkpoint(folder, models)
    step = int(ckpt.metadata.get('step', 0))
    if optimizer is not None:
        info_path = folder / TRAINER_STATE_INFO
        path = folder / TRAINER_STATE
        if not info_path.is_file() or not path.is_file():
            raise CheckpointError(f'{path}: optimizer state missing; cannot resume')
        try:
            info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f'{info_path}: not valid JSON ({err})') from err
        if _sha256(path) != info.get('sha256'):
            raise CheckpointError(f'{path}: sha256 mismatch (corrupt or modified file)')
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
            optimizer.load_state_dict(state['optimizer'])
        except Exception as err:  # noqa: BLE001 - any failure here is a corrupt state file
            raise CheckpointError(f'{path}: cannot load optimizer state: {err}') from err
        if int(state.get('step', -1)) != step:
            raise CheckpointError(f'{path}: step {state.get("step")} != metadata step {step}')
    return step, ckpt.metadata


def resolve_llm_source(source: str) -> str:
    """'tiny' -> a deterministic tiny random Llama folder in the disac cache; else unchanged."""
    if source != 'tiny':
        return source
    from disac_ros.core.models.llm_loader import cache_root, write_tiny_llm
    folder = cache_root() / 'llm' / 'tiny-llama-seed0'
    if not (folder / 'config.json').is_file():
        write_tiny_llm(folder, seed=0)
    return str(folder)


def write_json(path: str | Path, data: Any, sort_keys: bool = True) -> None:
    """Write JSON atomically (a temp file of this process + rename), so jobs running at once
    on one model folder never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(json.dumps(data, indent=1, sort_keys=sort_keys, default=_json_default))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def folder_lock(folder: str | Path, name: str = '.disac.lock') -> Iterator[None]:
    """Exclusive lock (flock) on a file in ``folder``: serialises read-modify-write of shared
    files such as model.json between training jobs that run at once (one per device)."""
    import fcntl
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f'not JSON-serialisable: {type(o).__name__}')
