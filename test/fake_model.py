"""A FAKE, UNTRAINED model folder for tests of the running system (not for accuracy figures).

``make_fake_model(folder)`` writes the layout that ``disac-train`` writes (model.json,
recipe.json, stage-1 device models, an MLP decoder, the per-device decoders, TRAM), with randomly
initialised weights,
through the real builders and the real ``save_checkpoint``. Inference code loads it exactly as it
loads a trained model; its detections are meaningless.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

DEVICES = ('dev0', 'dev1', 'dev2', 'dev3')


def make_fake_model(folder: Path, devices: Sequence[str] = DEVICES, seed: int = 0, llm: bool = False,
                    shipped: str = 'mlp') -> Path:
    """Write an untrained quick-recipe model folder (``llm``: also an LLM decoder on the tiny
    random test LLM; ``shipped``: the decoder kind model.json names); returns it."""
    from disac_ros.core.models.device_decoders import DeviceDecoders
    from disac_ros.core.models.checkpoint import save_checkpoint
    from disac_ros.core.training.decoder import build_decoder, decoder_dir
    from disac_ros.core.training.recipes import quick_recipe
    from disac_ros.core.training.stage1 import build_device_models, stage1_dir
    from disac_ros.core.training.stage2 import build_aggregator, stage2_dir
    folder = Path(folder)
    recipe = quick_recipe()
    torch.manual_seed(seed)
    meta = {'fake_untrained': True}
    proxies = []
    for dev in devices:
        models = build_device_models(recipe)
        proxies.append(models['proxy_decoder'])
        save_checkpoint(stage1_dir(folder, 'both', dev) / 'checkpoint', models, meta)
    save_checkpoint(decoder_dir(folder, 'both', 'mlp') / 'checkpoint', {'decoder': build_decoder(recipe, 'mlp')}, meta)
    save_checkpoint(decoder_dir(folder, 'both', 'device') / 'checkpoint',
                    {'decoder': DeviceDecoders.from_decoders(list(devices), proxies)}, meta)
    if llm:
        save_checkpoint(decoder_dir(folder, 'both', 'llm') / 'checkpoint', {'decoder': build_decoder(recipe, 'llm')},
                        meta)
    aggregator = build_aggregator(recipe, 'tram')
    with torch.no_grad():
        # An untrained grid head gives every class ~0.2, below any score threshold; a fixed "car"
        # bias makes the FAKE model report objects so the running graph has tracks to carry.
        aggregator.head.net[-1].bias[1] += 2.0
    save_checkpoint(stage2_dir(folder, 'both', 'tram') / 'checkpoint', {'aggregator': aggregator}, meta)
    (folder / 'recipe.json').write_text(json.dumps(recipe.to_dict(), indent=1))
    (folder / 'model.json').write_text(json.dumps({'format': 'disac_ros.model', 'format_version': 1,
                                                   'devices': list(devices), 'shipped_decoder': shipped,
                                                   'fake_untrained': True}, indent=1))
    return folder
