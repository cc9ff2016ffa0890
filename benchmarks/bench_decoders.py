#!/usr/bin/env python3
"""Forward latency and trainable parameters of the LLM-DiSAC models on this machine.

Times (median of ``--repeats`` runs after ``--warmup`` runs, ``torch.set_num_threads(--threads)``,
``torch.inference_mode``):

* every model is built from the default training recipe (``config/train_default.yaml``, the
  shipped configuration: polar RVFN, L = 256 symbols, 512-value features), untrained weights;
* RVFN, one frame: image (1, 3, 128, 128) + RF (1, 2, 32, 128);
* semantic encoder, MLP decoder, the per-device decoders, LLM decoder (with and without channel
  tokens), batch of 4
  packets; the LLM decoder uses the real SmolLM2-135M (bf16) unless ``--tiny-llm`` or the
  package is missing;
* TRAM and the mean-pool baseline, one frame of K = 4 devices.

Usage::

    . scripts/env.sh && python benchmarks/bench_decoders.py [--json out.json] [--tiny-llm]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import statistics
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a source checkout

import torch  # noqa: E402

from dataclasses import replace  # noqa: E402

from disac_ros.core.models.channel import WirelessChannel  # noqa: E402
from disac_ros.core.models.device_decoders import DeviceDecoders  # noqa: E402
from disac_ros.core.models.llm_decoder import LLMDecoder  # noqa: E402
from disac_ros.core.training.stage1 import build_device_models  # noqa: E402
from disac_ros.core.models.llm_loader import (LLMLoadError, load_causal_lm,  # noqa: E402
                                              write_tiny_llm)
from disac_ros.core.models.rvfn import RVFN  # noqa: E402
from disac_ros.core.models.semantic_codec import (count_trainable, MLPDecoder,  # noqa: E402
                                                  SemanticEncoder)
from disac_ros.core.models.tram import TRAM  # noqa: E402
from disac_ros.core.training.recipes import load_recipe  # noqa: E402


def time_ms(fn: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
    """Median and min wall time of fn() in milliseconds."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {'median_ms': statistics.median(times), 'min_ms': min(times)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table (and JSON when asked)."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--repeats', type=int, default=20)
    ap.add_argument('--tiny-llm', action='store_true', help='use a tiny random Llama')
    ap.add_argument('--json', type=Path, help='also write the results here')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, object]] = {}

    def record(name: str, module: torch.nn.Module, fn: Callable[[], object], note: str) -> None:
        module.eval()
        r: dict[str, object] = dict(time_ms(fn, args.warmup, args.repeats))
        r['trainable_params'] = count_trainable(module)
        r['input'] = note
        results[name] = r

    rec = load_recipe('default')
    f, n_sym = rec.rvfn.feature_dim, rec.encoder.num_symbols
    rvfn = RVFN(rec.rvfn)
    img, rf = torch.rand(1, 3, 128, 128, generator=g), torch.randn(1, 2, 32, 128, generator=g)
    record('rvfn', rvfn, lambda: rvfn(img, rf), '1 frame, 128x128 image, 2x32x128 RF')

    enc = SemanticEncoder(rec.encoder)
    feat = torch.randn(4, f, generator=g)
    record('encoder', enc, lambda: enc(feat), f'4 packets, F={f} -> L={n_sym}')
    with torch.no_grad():
        ch = WirelessChannel()(enc(feat), torch.tensor([30.0, 100.0, 200.0, 400.0]),
                               generator=g)
    y, snr, dist = ch.y, ch.snr_db, ch.distance_m

    mlp = MLPDecoder(rec.mlp_decoder)
    record('mlp_decoder', mlp, lambda: mlp(y, snr, dist), f'4 packets, L={n_sym}')

    # The shipped kind: each device's stage-1 decoder, one packet each.
    dev_decs = DeviceDecoders.from_decoders(
        ['dev0', 'dev1', 'dev2', 'dev3'],
        [build_device_models(rec)['proxy_decoder'] for _ in range(4)])
    slot = torch.arange(4)
    record('device_decoders', dev_decs, lambda: dev_decs(y, snr, dist, slot),
           f'4 packets, one per device, L={n_sym}')

    llm_name = 'smollm2'
    tmp = None
    if not args.tiny_llm:
        try:
            llm = load_causal_lm('smollm2')
        except LLMLoadError as err:
            print(f'real SmolLM2 unavailable ({err}); using a tiny random Llama', file=sys.stderr)
            args.tiny_llm = True
    if args.tiny_llm:
        tmp = tempfile.TemporaryDirectory()
        llm_name = str(write_tiny_llm(Path(tmp.name) / 'tiny'))
        llm = load_causal_lm(llm_name)
    for name, use_tokens in (('llm_decoder', True), ('llm_decoder_no_channel_tokens', False)):
        dec = LLMDecoder(replace(rec.llm_decoder, llm=llm_name, use_channel_tokens=use_tokens),
                         llm=llm)
        record(name, dec, lambda: dec(y, snr, dist),
               f'4 packets, L={n_sym}, backbone {llm_name} bf16 (load {llm.load_seconds:.2f} s)')
        del dec
        llm = load_causal_lm(llm_name)   # fresh backbone: LoRA was injected into the last one

    k = 4
    feats = torch.randn(1, k, f, generator=g)
    present = torch.ones(1, k, dtype=torch.bool)
    pose = torch.randn(1, k, 3, generator=g) * 20
    link = torch.stack([torch.rand(1, k, generator=g) * 20,
                        torch.rand(1, k, generator=g) * 300 + 20], -1)
    for name, agg in (('tram', 'tram'), ('tram_mean_pool', 'mean_pool')):
        model = TRAM(replace(rec.tram, aggregator=agg,
                             detect_in_device_frame=agg == 'tram'))
        record(name, model, lambda: model(feats, present, pose, link), f'1 frame, K={k}')

    print(f'threads={args.threads} warmup={args.warmup} repeats={args.repeats} '
          f'torch={torch.__version__}')
    print(f'{"model":32s} {"median ms":>10s} {"min ms":>8s} {"trainable":>11s}  input')
    for name, r in results.items():
        print(f'{name:32s} {r["median_ms"]:10.2f} {r["min_ms"]:8.2f} '
              f'{r["trainable_params"]:11,d}  {r["input"]}')
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
