"""Checkpoint folders: round trip, LoRA-only LLM weights, strict and clear failures."""
import json

import pytest
from safetensors.torch import load_file
import torch

from disac_ros.core.models.checkpoint import (CheckpointError, load_checkpoint,
                                              save_checkpoint)
from disac_ros.core.models.config import (EncoderConfig, HeadConfig, LLMDecoderConfig,
                                          MLPDecoderConfig, RVFNConfig, TRAMConfig)
from disac_ros.core.models.llm_decoder import LLMDecoder
from disac_ros.core.models.llm_loader import load_causal_lm, write_tiny_llm
from disac_ros.core.models.rvfn import LocalDetector, RVFN
from disac_ros.core.models.semantic_codec import MLPDecoder, SemanticEncoder
from disac_ros.core.models.tram import TRAM

RV = RVFNConfig(vis_channels=(8, 16), rf_channels=(8,), vis_grid=(2, 2), rf_grid=(2, 2), dim=16,
                num_heads=2, num_cross_layers=1, feature_dim=12)
HEAD = HeadConfig(dim=16, num_heads=2, num_queries=3, num_layers=1)


@pytest.fixture(scope='module')
def tiny_llm_dir(tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp('tiny_llm'), seed=0)


def _models(seed=0):
    torch.manual_seed(seed)
    return {
        'rvfn': RVFN(RV),
        'local': LocalDetector(RV, HEAD),
        'encoder': SemanticEncoder(EncoderConfig(feature_dim=12, num_symbols=8, hidden=16)),
        'mlp_decoder': MLPDecoder(MLPDecoderConfig(num_symbols=8, feature_dim=12, hidden=16)),
        'tram': TRAM(TRAMConfig(feature_dim=12, dim=16, num_heads=2, num_layers=1,
                                tokens_per_device=2, head=HEAD)),
    }


def _outputs(models):
    g = torch.Generator().manual_seed(0)
    img, rf = torch.rand(1, 3, 32, 32, generator=g), torch.randn(1, 2, 8, 16, generator=g)
    feat = torch.randn(2, 12, generator=g)
    y = torch.randn(2, 8, 2, generator=g)
    k = 3
    with torch.no_grad():
        return [models['rvfn'](img, rf).feature, models['local'](img, rf)[1].logits,
                models['encoder'](feat), models['mlp_decoder'](y, torch.zeros(2), torch.ones(2)),
                models['tram'](torch.randn(1, k, 12, generator=g),
                               torch.ones(1, k, dtype=torch.bool), torch.zeros(1, k, 3),
                               torch.ones(1, k, 2) * 50).prediction.position]


def test_round_trip_rebuilds_models_from_config_with_identical_outputs(tmp_path):
    models = {k: m.eval() for k, m in _models(seed=0).items()}
    meta = {'seeds': {'torch': 0}, 'metrics': {'nmse_db': -7.5}}
    save_checkpoint(tmp_path / 'ckpt', models, meta)
    loaded = load_checkpoint(tmp_path / 'ckpt')
    assert set(loaded.models) == set(models)
    for a, b in zip(_outputs(models), _outputs({k: m.eval() for k, m in loaded.models.items()})):
        assert torch.equal(a, b)
    assert loaded.metadata['seeds'] == {'torch': 0}
    assert loaded.metadata['metrics']['nmse_db'] == -7.5
    assert loaded.metadata['versions']['torch'] == torch.__version__
    # Loading into existing (differently initialised) modules works too.
    fresh = _models(seed=1)
    load_checkpoint(tmp_path / 'ckpt', {'tram': fresh['tram']})
    assert torch.equal(fresh['tram'].feat_proj.weight, models['tram'].feat_proj.weight)


def test_llm_decoder_checkpoint_holds_only_trainable_weights(tmp_path, tiny_llm_dir):
    torch.manual_seed(0)
    cfg = LLMDecoderConfig(llm=str(tiny_llm_dir), num_symbols=8, symbols_per_token=4,
                           feature_dim=12, cond_hidden=8, lora_r=2)
    llm = load_causal_lm(tiny_llm_dir)
    dec = LLMDecoder(cfg, llm=llm).eval()
    with torch.no_grad():    # LoRA B starts at zero: make the adapters matter for the test
        for name, p in dec.named_parameters():
            if 'lora_B' in name:
                p.normal_(0, 0.1)
    save_checkpoint(tmp_path / 'ckpt', {'decoder': dec})
    keys = set(load_file(str(tmp_path / 'ckpt' / 'decoder.safetensors')))
    assert keys == {n for n, p in dec.named_parameters() if p.requires_grad}
    assert not any('base_layer' in k or 'embed_tokens' in k for k in keys)
    y = torch.randn(2, 8, 2)
    with torch.no_grad():
        ref = dec(y, torch.zeros(2), torch.ones(2))
        loaded = load_checkpoint(tmp_path / 'ckpt').models['decoder'].eval()
        assert torch.equal(ref, loaded(y, torch.zeros(2), torch.ones(2)))
    # A different backbone architecture is refused.
    other = write_tiny_llm(tmp_path / 'other', hidden_size=32)
    with pytest.raises(CheckpointError, match='backbone mismatch.*hidden_size'):
        load_checkpoint(tmp_path / 'ckpt',
                        {'decoder': LLMDecoder(cfg, llm=load_causal_lm(other))})


def _saved(tmp_path):
    models = _models()
    return save_checkpoint(tmp_path / 'ckpt', {'tram': models['tram'],
                                               'encoder': models['encoder']}), models


def test_corrupt_weights_file_is_reported_by_name(tmp_path):
    folder, _ = _saved(tmp_path)
    path = folder / 'tram.safetensors'
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r'tram\.safetensors: sha256 mismatch'):
        load_checkpoint(folder)


def test_truncated_weights_with_matching_hash_are_reported_as_invalid(tmp_path):
    folder, _ = _saved(tmp_path)
    path = folder / 'tram.safetensors'
    path.write_bytes(path.read_bytes()[:100])
    conf = json.loads((folder / 'config.json').read_text())
    import hashlib
    conf['models']['tram']['sha256'] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / 'config.json').write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match=r'tram\.safetensors: not a valid safetensors'):
        load_checkpoint(folder)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        load_checkpoint(tmp_path / 'nope')
    folder, _ = _saved(tmp_path)
    (folder / 'encoder.safetensors').unlink()
    with pytest.raises(CheckpointError, match=r'encoder\.safetensors: weights file missing'):
        load_checkpoint(folder)
    (folder / 'config.json').write_text('{not json')
    with pytest.raises(CheckpointError, match=r'config\.json: not valid JSON'):
        load_checkpoint(folder)
    (folder / 'config.json').unlink()
    with pytest.raises(CheckpointError, match=r'config\.json: missing'):
        load_checkpoint(folder)


def test_mismatched_model_config_or_state_is_refused(tmp_path):
    folder, _ = _saved(tmp_path)
    other = TRAM(TRAMConfig(feature_dim=12, dim=16, num_heads=2, num_layers=2,
                            tokens_per_device=2, head=HEAD))
    with pytest.raises(CheckpointError, match=r'models\.tram\.config\.num_layers: checkpoint '
                                              r'has 1, model has 2'):
        load_checkpoint(folder, {'tram': other})
    with pytest.raises(CheckpointError, match='is a TRAM, not a SemanticEncoder'):
        load_checkpoint(folder, {'tram': SemanticEncoder()})
    with pytest.raises(CheckpointError, match="no model named 'rvfn'"):
        load_checkpoint(folder, {'rvfn': RVFN(RV)})
    # A weights file whose keys do not match the architecture (here: the encoder's weights
    # filed under the TRAM entry) fails strictly, naming the file.
    conf = json.loads((folder / 'config.json').read_text())
    conf['models']['tram']['weights'] = 'encoder.safetensors'
    conf['models']['tram']['sha256'] = conf['models']['encoder']['sha256']
    (folder / 'config.json').write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match=r'encoder\.safetensors: state does not match TRAM'):
        load_checkpoint(folder)


def test_a_checkpoint_from_before_cell_context_loads_only_into_a_model_without_it(tmp_path):
    # head.cell_context was added after checkpoints were written (models/default, resume states):
    # an old config without the field means cell_context = 0, nothing else.
    def grid_tram(context):
        return TRAM(TRAMConfig(feature_dim=12, dim=16, num_heads=2, num_layers=1,
                               detect_in_device_frame=True,
                               head=HeadConfig(dim=16, num_heads=2, kind='grid', polar_grid=(2, 2),
                                               cell_context=context)))
    folder = save_checkpoint(tmp_path / 'old', {'tram': grid_tram(0)})
    conf = json.loads((folder / 'config.json').read_text())
    del conf['models']['tram']['config']['head']['cell_context']
    (folder / 'config.json').write_text(json.dumps(conf))
    assert load_checkpoint(folder).models['tram'].config.head.cell_context == 0
    load_checkpoint(folder, {'tram': grid_tram(0)})
    with pytest.raises(CheckpointError, match=r'head\.cell_context: present in only one'):
        load_checkpoint(folder, {'tram': grid_tram(1)})


def test_save_is_atomic_and_validates_names(tmp_path):
    folder, models = _saved(tmp_path)
    with pytest.raises(Exception, match='models.bad name'):
        save_checkpoint(folder, {'bad name': models['tram']})
    # The failed save left the previous checkpoint intact and no temporary folders behind.
    assert load_checkpoint(folder).models.keys() == {'tram', 'encoder'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt']
