"""Semantic decoders: MLP baseline and the LLM decoder (on a tiny random Llama)."""
import pytest
import torch

from disac_ros.core.errors import ConfigError
from disac_ros.core.models.channel import WirelessChannel
from disac_ros.core.models.config import EncoderConfig, LLMDecoderConfig, MLPDecoderConfig
from disac_ros.core.models.llm_decoder import LLMDecoder
from disac_ros.core.models.llm_loader import load_causal_lm, write_tiny_llm
from disac_ros.core.models.semantic_codec import (count_trainable, MLPDecoder, receiver_inputs,
                                                  SemanticEncoder, side_info_features)

L = 16


@pytest.fixture(scope='module')
def tiny_llm_dir(tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp('tiny_llm'), seed=0)


def _tiny_cfg(folder, **kw):
    base = dict(llm=str(folder), num_symbols=L, symbols_per_token=4, feature_dim=12,
                cond_hidden=8, lora_r=4, lora_alpha=8)
    return LLMDecoderConfig(**{**base, **kw})


def _packets(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    enc = SemanticEncoder(EncoderConfig(feature_dim=12, num_symbols=L, hidden=0))
    x = enc(torch.randn(batch, 12, generator=g))
    out = WirelessChannel()(x, torch.linspace(30, 300, batch), generator=g)
    return out.y, out.snr_db, out.distance_m


def test_receiver_agc_normalises_rms_and_keeps_the_level():
    y = torch.randn(5, 32, 2) * torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0]).view(5, 1, 1)
    ys, level = receiver_inputs(y, 'agc')
    assert torch.allclose(ys.pow(2).sum(-1).mean(-1), torch.ones(5), atol=1e-4)
    assert bool((level[1:] > level[:-1]).all())
    raw, zero = receiver_inputs(y, 'none')
    assert torch.equal(raw, y) and not zero.any()
    feats = side_info_features(torch.tensor([10.0]), torch.tensor([100.0]))
    assert torch.allclose(feats, torch.tensor([[1.0, 0.0]]))


def test_mlp_decoder_shapes_side_info_and_gradients():
    torch.manual_seed(0)
    dec = MLPDecoder(MLPDecoderConfig(num_symbols=L, feature_dim=12, hidden=32, num_layers=2))
    y, snr, dist = _packets()
    out = dec(y, snr, dist)
    assert out.shape == (3, 12)
    # The side information is an input: changing the reported SNR changes the estimate.
    assert not torch.allclose(out, dec(y, snr + 10.0, dist))
    out.sum().backward()
    assert all(p.grad is not None for p in dec.parameters())
    blind = MLPDecoder(MLPDecoderConfig(num_symbols=L, feature_dim=12, hidden=32,
                                        use_side_info=False))
    assert torch.equal(blind(y, snr, dist), blind(y, snr + 10.0, dist))
    with pytest.raises(ValueError, match='y must have shape'):
        dec(y[:, :8], snr, dist)


def test_llm_decoder_trains_only_lora_and_new_layers(tiny_llm_dir):
    torch.manual_seed(0)
    dec = LLMDecoder(_tiny_cfg(tiny_llm_dir))
    trainable = {n for n, p in dec.named_parameters() if p.requires_grad}
    frozen = {n for n, p in dec.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith('backbone.') and 'lora_' not in n for n in frozen)
    assert any('lora_A' in n for n in trainable) and any('lora_B' in n for n in trainable)
    assert {'pos', 'in_proj.weight', 'readout.weight', 'cond.0.fc1.weight'} <= trainable
    # LoRA sits on q, k, v and o of every layer of the 2-layer model.
    assert sum('lora_A' in n for n in trainable) == 4 * 2
    y, snr, dist = _packets()
    dec.train()
    assert not dec.backbone.training          # frozen backbone stays in eval mode
    out = dec(y, snr, dist)
    assert out.shape == (3, 12) and out.dtype == torch.float32
    out.pow(2).sum().backward()
    assert all(p.grad is not None for n, p in dec.named_parameters() if p.requires_grad)
    assert all(p.grad is None for n, p in dec.named_parameters() if not p.requires_grad)


def test_llm_decoder_uses_channel_tokens_and_ablation_drops_them(tiny_llm_dir):
    torch.manual_seed(0)
    llm = load_causal_lm(tiny_llm_dir)
    with_tokens = LLMDecoder(_tiny_cfg(tiny_llm_dir), llm=llm).eval()
    y, snr, dist = _packets()
    base = with_tokens(y, snr, dist)
    assert not torch.allclose(base, with_tokens(y, snr + 10.0, dist))
    assert not torch.allclose(base, with_tokens(y, snr, dist * 3.0))
    no_tokens = LLMDecoder(_tiny_cfg(tiny_llm_dir, use_channel_tokens=False),
                           llm=load_causal_lm(tiny_llm_dir)).eval()
    assert no_tokens.cond is None
    assert count_trainable(no_tokens) < count_trainable(with_tokens)
    assert torch.equal(no_tokens(y, snr, dist), no_tokens(y, snr + 10.0, dist * 3.0))


def test_llm_decoder_in_fp32_without_autocast_matches_shapes(tiny_llm_dir):
    torch.manual_seed(0)
    dec = LLMDecoder(_tiny_cfg(tiny_llm_dir, backbone_dtype='float32', autocast_bf16=False))
    assert next(dec.backbone.parameters()).dtype == torch.float32
    y, snr, dist = _packets()
    assert dec(y, snr, dist).shape == (3, 12)


def test_llm_decoder_token_readout_keeps_every_symbol_token(tiny_llm_dir):
    torch.manual_seed(0)
    pooled = LLMDecoder(_tiny_cfg(tiny_llm_dir), llm=load_causal_lm(tiny_llm_dir))
    tokens = LLMDecoder(_tiny_cfg(tiny_llm_dir, readout='tokens', readout_width=5),
                        llm=load_causal_lm(tiny_llm_dir))
    assert pooled.token_readout is None
    assert tokens.readout.in_features == (L // 4) * 5     # T tokens x readout_width
    y, snr, dist = _packets()
    out = tokens(y, snr, dist)
    assert out.shape == (3, 12)
    out.pow(2).sum().backward()
    assert tokens.token_readout.weight.grad is not None
    # Only the first token's input changes: the token readout still sees it directly.
    y2 = y.clone()
    y2[:, :4] += 0.5
    assert not torch.allclose(tokens(y2, snr, dist), tokens(y, snr, dist))
    with pytest.raises(ConfigError, match='llm_decoder.readout'):
        LLMDecoderConfig(readout='attention')


def test_llm_decoder_errors_name_the_field(tiny_llm_dir):
    llm = load_causal_lm(tiny_llm_dir)
    LLMDecoder(_tiny_cfg(tiny_llm_dir), llm=llm)
    with pytest.raises(ValueError, match='already carries LoRA'):
        LLMDecoder(_tiny_cfg(tiny_llm_dir), llm=llm)
    with pytest.raises(ConfigError, match='lora_target_modules'):
        LLMDecoder(_tiny_cfg(tiny_llm_dir, lora_target_modules=('c_attn',)))
    with pytest.raises(ConfigError, match='llm_decoder.symbols_per_token'):
        LLMDecoderConfig(num_symbols=64, symbols_per_token=7)


def test_mlp_baseline_width_matches_the_default_llm_decoder_parameter_count():
    # Default LLM decoder on SmolLM2-135M (H = 576, 30 layers, q/o 576x576, k/v 576x192):
    h, layers, r, spt, feat, cond = 576, 30, 8, 8, 256, 64
    lora = layers * r * ((h + h) + (h + 192) + (h + 192) + (h + h))
    new = ((2 * spt + 1) * h + h) + 8 * h + 2 * ((1 * cond + cond) + (cond * h + h)) \
        + (2 * h * feat + feat)
    llm_trainable = lora + new
    assert lora == 921_600
    mlp = count_trainable(MLPDecoder(MLPDecoderConfig()))
    assert abs(mlp - llm_trainable) / llm_trainable < 0.02, (mlp, llm_trainable)


def test_encoder_channel_mlp_decoder_pipeline_learns_end_to_end():
    """Gradients flow from the decoder back through the channel into the encoder."""
    torch.manual_seed(0)
    enc = SemanticEncoder(EncoderConfig(feature_dim=12, num_symbols=L, hidden=32))
    dec = MLPDecoder(MLPDecoderConfig(num_symbols=L, feature_dim=12, hidden=64, num_layers=2))
    chan = WirelessChannel()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        s = torch.randn(64, 12, generator=g)
        out = chan(enc(s), torch.rand(64, generator=g) * 200 + 20,
                   snr_db=torch.rand(64, generator=g) * 10 + 10, generator=g)
        loss = (dec(out.y, out.snr_db, out.distance_m) - s).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert enc.net[0].weight.grad.abs().sum() > 0
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
