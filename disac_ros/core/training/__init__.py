"""Two-stage distributed training of LLM-DiSAC (ROS-free).

Layout of a model folder written by ``disac-train`` (``OUT``)::

    recipe.json                        the recipe every stage used
    model.json                         devices, variants, shipped decoder, per-stage summaries
    stage1/<modalities>/<device>/      one device (modalities: both | rf | camera)
        checkpoint/                    detector, encoder, proxy decoder/head + optimizer state
        train_log.{csv,jsonl}          loss log
        export_{train,val}.npz         what the device transmits: symbols, feature targets,
                                       frame index, stamps, pose (the only stage-1 output that
                                       leaves the device)
    decoders/<modalities>/<kind>/      receiver decoders (mlp | llm | llm_no_channel_tokens)
    stage2/<modalities>_<aggregator>/  aggregators (tram | mean_pool)

Modules: :mod:`.recipes` (budgets and sizes), :mod:`.data` (torch datasets, exports),
:mod:`.stage1`, :mod:`.decoder`, :mod:`.stage2`, :mod:`.common` (seeding, channel draws,
resumable checkpoints), :mod:`.logging` (loss logs, progress bars).
"""
