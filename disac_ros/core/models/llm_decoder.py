"""LLM-based semantic decoder: frozen causal LM + LoRA reading channel symbols as token embeddings.

Token sequence fed to the backbone as ``inputs_embeds`` (no tokenizer, no LM head)::

    [snr token, distance token,  sym_1, ..., sym_T]          (T = L / symbols_per_token)

* symbol tokens: the (AGC-scaled) received samples are cut into T groups of
  ``symbols_per_token`` complex symbols (2 * spt reals) plus the packet's log rx level, and
  mapped by a learned ``Linear(2 spt + 1, H)`` plus a learned position embedding;
* channel-condition tokens (``use_channel_tokens``): one small MLP per scalar, 1 -> cond_hidden
  -> H, on snr_db / 10 and log10(d / 100 m). They come first, so that in the causal backbone
  every symbol token can attend to them. Off = the ``llm_no_channel_tokens`` ablation;
* the backbone (e.g. SmolLM2-135M, H = 576) is frozen; LoRA (peft) rank r on the attention
  projections is trainable; the forward runs under bf16 autocast on CPU;
* readout ``pooled``: [mean of the symbol-token hidden states, last hidden state] ->
  Linear(2H, F). Mean pooling of a shared input projection throws away which token carried
  what, so almost everything must pass through the last token's H values; readout ``tokens``
  keeps every symbol token: Linear(H, w) per token, concatenated (T w) -> Linear(T w, F), with
  about the same number of trainable parameters for w = 64.

Initial scales of the new embeddings match the RMS of the backbone's own token embeddings, so
the pretrained layers see inputs of a familiar size.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from disac_ros.core.errors import ConfigError
from disac_ros.core.models.config import LLMDecoderConfig
from disac_ros.core.models.llm_loader import load_causal_lm, LoadedLLM
from disac_ros.core.models.semantic_codec import receiver_inputs, side_info_features


class _ScalarEmbedding(nn.Module):
    """One scalar -> one token embedding (the channel-condition tokens)."""

    def __init__(self, hidden: int, width: int, target_rms: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, hidden)
        self.fc2 = nn.Linear(hidden, width)
        # Output RMS ~ target_rms for inputs of order 1 (GELU output variance ~ 0.4 of input).
        nn.init.normal_(self.fc2.weight, std=target_rms / math.sqrt(0.4 * hidden))
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1) -> (B, width)."""
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class LLMDecoder(nn.Module):
    """Received symbols + (SNR, distance) -> feature estimate, through a frozen LLM with LoRA."""

    def __init__(self, config: LLMDecoderConfig | None = None,
                 llm: LoadedLLM | None = None) -> None:
        """
        Build the decoder.

        :param config: sizes and options; ``config.llm`` names the backbone source.
        :param llm: an already loaded backbone (must match ``config.llm``); loaded when None.
        """
        super().__init__()
        from peft import inject_adapter_in_model, LoraConfig
        self.config = config or LLMDecoderConfig()
        c = self.config
        if llm is None:
            llm = load_causal_lm(c.llm, dtype=c.backbone_dtype)
        self.backbone_info = llm.fingerprint()
        backbone = llm.model.base_model          # decoder stack without the LM head
        if any('lora_' in name for name, _ in backbone.named_parameters()):
            raise ValueError(f'llm: the backbone {llm.source!r} already carries LoRA adapters '
                             f'(used by another LLMDecoder); load a fresh one per decoder')
        for p in backbone.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=0.0, bias='none',
                          target_modules=list(c.lora_target_modules))
        try:
            backbone = inject_adapter_in_model(lora, backbone)
        except ValueError as err:
            raise ConfigError('llm_decoder.lora_target_modules',
                              f'{list(c.lora_target_modules)} not found in {c.llm}: {err}') \
                from err
        # Adapters train in fp32 even when the frozen weights are bf16.
        for name, p in backbone.named_parameters():
            if 'lora_' in name:
                p.data = p.data.float()
                p.requires_grad_(True)
        self.backbone = backbone
        self.backbone.eval()
        hidden = llm.hidden_size
        emb = backbone.get_input_embeddings().weight.detach().float()
        emb_rms = float(emb.pow(2).mean().sqrt())
        self.register_buffer('embed_rms', torch.tensor(emb_rms), persistent=False)
        self.num_tokens = c.num_symbols // c.symbols_per_token
        in_dim = 2 * c.symbols_per_token + 1
        self.in_proj = nn.Linear(in_dim, hidden)
        nn.init.normal_(self.in_proj.weight, std=emb_rms / math.sqrt(in_dim))
        nn.init.zeros_(self.in_proj.bias)
        self.pos = nn.Parameter(torch.randn(self.num_tokens, hidden) * 0.5 * emb_rms)
        self.cond: nn.ModuleList | None = None
        if c.use_channel_tokens:
            self.cond = nn.ModuleList([_ScalarEmbedding(c.cond_hidden, hidden, emb_rms)
                                       for _ in range(2)])
        self.token_readout: nn.Linear | None = None
        if c.readout == 'tokens':
            self.token_readout = nn.Linear(hidden, c.readout_width)
            self.readout = nn.Linear(self.num_tokens * c.readout_width, c.feature_dim)
        else:
            self.readout = nn.Linear(2 * hidden, c.feature_dim)

    def train(self, mode: bool = True) -> 'LLMDecoder':
        """Set train mode on the new layers; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def is_frozen_state(self, key: str) -> bool:
        """True for state-dict keys of the frozen backbone (not saved in checkpoints)."""
        return key.startswith('backbone.') and 'lora_' not in key

    def forward(self, y: torch.Tensor, snr_db: torch.Tensor,
                distance_m: torch.Tensor) -> torch.Tensor:
        """(B, L, 2) received samples + (B,) SNR dB and distance m -> (B, F) feature estimate."""
        c = self.config
        if y.dim() != 3 or y.shape[1:] != (c.num_symbols, 2):
            raise ValueError(f'y must have shape (B, {c.num_symbols}, 2), got {tuple(y.shape)}')
        batch = y.shape[0]
        ys, level = receiver_inputs(y, c.input_scaling)
        groups = ys.reshape(batch, self.num_tokens, 2 * c.symbols_per_token)
        level_col = level.unsqueeze(1).expand(batch, self.num_tokens, 1)
        tokens = self.in_proj(torch.cat((groups, level_col), dim=-1)) + self.pos
        if self.cond is not None:
            side = side_info_features(snr_db, distance_m).to(y.device)
            cond = torch.stack([emb(side[:, i:i + 1]) for i, emb in enumerate(self.cond)], 1)
            tokens = torch.cat((cond, tokens), dim=1)
        dtype = next(self.backbone.parameters()).dtype
        use_autocast = c.autocast_bf16 or dtype == torch.bfloat16
        with torch.autocast(device_type=y.device.type, dtype=torch.bfloat16,
                            enabled=use_autocast):
            out = self.backbone(inputs_embeds=tokens.to(dtype), use_cache=False)
        states = out.last_hidden_state.float()
        symbol_states = states[:, -self.num_tokens:]
        if self.token_readout is not None:
            return self.readout(self.token_readout(symbol_states).flatten(1))
        return self.readout(torch.cat((symbol_states.mean(dim=1), states[:, -1]), dim=-1))
