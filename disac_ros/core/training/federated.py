"""Federated stage 1 with Flower: one shared device network, trained where the data lives.

Every sensing device (a vehicle or a roadside unit, in any scene) is one Flower client
(:class:`DeviceClient`, a ``flwr.client.NumPyClient``). It holds only its *own* frames (one
:class:`~disac_ros.core.training.data.DeviceFrames` built from ``dataset.device_view(id)``), and
in each round it receives the current shared weights, trains them for ``local_steps`` steps on
its own data and returns the new weights and its number of frames. Only weights cross the
Flower boundary (serialised ``Parameters``, the bytes a real vehicle would upload); raw images
and radar cubes never do. The aggregation center runs Flower's :class:`FedAvg` strategy
(``configure_fit`` picks the round's clients, ``aggregate_fit`` averages their weights by frame
count).

The round loop here drives the strategy in process, sequentially and with a seeded client
sampler, so a run is deterministic and resumes exactly from any saved round (each round's
client choice and every client's batches and channel draws derive from ``(seed, round,
client)``). The same :class:`DeviceClient` runs across real machines with Flower's own
transport (``flwr.compat.client.app.start_client(server_address=..., client=DeviceClient(...)
.to_client())`` against ``flwr.server.start_server(strategy=FedAvg(...))``).

Models per client: the stage-1 set of :func:`~disac_ros.core.training.stage1.build_device_models`
(RVFN + grid head, semantic encoder, proxy decoder through the simulated channel); the trained
proxy decoder becomes the receiver's one shared decoder.
"""
from __future__ import annotations

from pathlib import Path
import time
from typing import Any, Callable, Sequence
import zlib

import numpy as np
import torch

from disac_ros.core.errors import ConfigError
from disac_ros.core.models.channel import WirelessChannel
from disac_ros.core.models.losses import build_criterion
from disac_ros.core.training import common
from disac_ros.core.training.data import DeviceFrames
from disac_ros.core.training.logging import LossLog, progress
from disac_ros.core.training.recipes import Recipe

SHARED_DEVICE = 'shared'     # the model folder's one device entry of a device-agnostic model


def client_key(name: str) -> int:
    """Stable 31-bit integer of a client name (seeds its batches)."""
    return zlib.crc32(name.encode('utf-8')) & 0x7FFFFFFF


def model_state(models: dict[str, torch.nn.Module]) -> list[np.ndarray]:
    """Every floating-point tensor of the models' state dicts, in a fixed order (the weights)."""
    out = []
    for name in sorted(models):
        for key, t in models[name].state_dict().items():
            if t.is_floating_point():
                out.append(t.detach().cpu().numpy().copy())
    return out


def load_model_state(models: dict[str, torch.nn.Module], weights: Sequence[np.ndarray]) -> None:
    """Inverse of :func:`model_state` (shapes must match; ValueError names the tensor)."""
    it = iter(weights)
    for name in sorted(models):
        sd = models[name].state_dict()
        new = {}
        for key, t in sd.items():
            if t.is_floating_point():
                try:
                    arr = next(it)
                except StopIteration:
                    raise ValueError(f'weights: too few tensors (ran out at {name}.{key})') from None
                if tuple(arr.shape) != tuple(t.shape):
                    raise ValueError(f'weights: {name}.{key} has shape {tuple(arr.shape)}, '
                                     f'expected {tuple(t.shape)}')
                new[key] = torch.from_numpy(np.asarray(arr, dtype=np.float32).copy())
            else:
                new[key] = t
        models[name].load_state_dict(new)
    if next(it, None) is not None:
        raise ValueError('weights: more tensors than the models have')


def _flwr() -> Any:
    try:
        import flwr  # noqa: F401
    except ImportError as err:   # pragma: no cover - flwr is in requirements-ml.txt
        raise ConfigError('stage1.federated', 'needs Flower: pip install flwr (see '
                          'requirements-ml.txt)') from err
    return flwr


def _numpy_client_base() -> type:
    return _flwr().client.NumPyClient


class DeviceClient(_numpy_client_base()):  # type: ignore[misc]
    """One device's Flower client: its own frames, the shared architecture (see module doc)."""

    def __init__(self, name: str, frames: DeviceFrames, recipe: Recipe) -> None:
        self.name = name
        self.frames = frames
        self.recipe = recipe
        self.key = client_key(name)

    def _models(self) -> dict[str, torch.nn.Module]:
        from disac_ros.core.training.stage1 import build_device_models
        return build_device_models(self.recipe, self.frames.modalities)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """Weights of a freshly initialised model (the server seeds its own instead)."""
        return model_state(self._models())

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]
            ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Train the received weights for ``config['local_steps']`` steps on this device's own
        frames at ``config['lr']``; return the new weights, the frame count and mean losses."""
        r1 = self.recipe.stage1
        rnd = int(config['round'])
        steps = int(config['local_steps'])
        lr = float(config['lr'])
        models = self._models()
        load_model_state(models, parameters)
        params = common.trainable(*models.values())
        opt = common.make_optimizer([{'params': params, 'lr': lr}], r1.weight_decay)
        from disac_ros.core.training.stage1 import stage1_loss
        criterion = build_criterion(self.recipe.loss, self.recipe.head)
        channel = WirelessChannel(self.recipe.channel)
        sums = {'loss': 0.0, 'loss_local': 0.0, 'nmse': 0.0}
        for m in models.values():
            m.train()
        for s in range(steps):
            rng = common.step_rng(self.recipe.seed, 'stage1', rnd * 10_000 + s, self.key)
            n = len(self.frames)
            idx = rng.choice(n, size=r1.batch_size, replace=n < r1.batch_size)
            mirror = (rng.random(len(idx)) < r1.mirror_augment).tolist() \
                if r1.mirror_augment > 0 else None
            img, rfx, tgt = self.frames.batch(idx.tolist(), mirror)
            loss, parts = stage1_loss(models, img, rfx, tgt, rng, self.recipe, criterion, channel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, r1.grad_clip)
            opt.step()
            sums['loss'] += loss.item()
            sums['loss_local'] += parts['loss_local']
            sums['nmse'] += parts['nmse']
        metrics = {k: v / max(steps, 1) for k, v in sums.items()}
        return model_state(models), len(self.frames), metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]
                 ) -> tuple[float, int, dict[str, Any]]:
        """Local-head loss of the received weights on this device's own frames."""
        from disac_ros.core.training.stage1 import validate
        models = self._models()
        load_model_state(models, parameters)
        m = validate(models, self.frames, self.recipe,
                     build_criterion(self.recipe.loss, self.recipe.head),
                     WirelessChannel(self.recipe.channel))
        return float(m['val_loss_local']), len(self.frames), {
            k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


class _InProcessProxy(_flwr().server.client_proxy.ClientProxy):  # type: ignore[misc]
    """A Flower ClientProxy that calls a client in this process through Flower's own Client
    interface (parameters serialised to bytes and back, as over the network)."""

    def __init__(self, client: DeviceClient) -> None:
        super().__init__(client.name)
        self._client = client.to_client()

    def get_properties(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
        return self._client.get_properties(ins)

    def get_parameters(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
        return self._client.get_parameters(ins)

    def fit(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
        return self._client.fit(ins)

    def evaluate(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
        return self._client.evaluate(ins)

    def reconnect(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
        fl = _flwr()
        return fl.common.DisconnectRes(reason='in-process')


class _SeededClientManager(_flwr().server.SimpleClientManager):  # type: ignore[misc]
    """Flower's client manager with a per-round seeded sampler (reproducible rounds)."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(0)

    def sample(self, num_clients: int, min_num_clients: int | None = None,
               criterion: Any = None) -> list[Any]:
        cids = sorted(self.clients)
        pick = self.rng.choice(len(cids), size=min(num_clients, len(cids)), replace=False)
        return [self.clients[cids[i]] for i in sorted(pick.tolist())]


def _weighted_metrics(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Frame-weighted mean of the clients' numeric fit metrics (Flower's aggregation hook)."""
    total = sum(n for n, _ in results) or 1
    keys = {k for _, m in results for k, v in m.items() if isinstance(v, (int, float))}
    return {k: sum(n * float(m.get(k, 0.0)) for n, m in results) / total for k in sorted(keys)}


def round_lr(recipe: Recipe, rnd: int, rounds: int) -> float:
    """The LR clients use in round ``rnd``: the stage-1 schedule over rounds (warm-up, then
    the recipe's 'constant' / 'cosine' / 'wsd' over rounds)."""
    r1 = recipe.stage1
    per = max(1, r1.local_steps)
    warm = max(1, r1.warmup_steps // per)
    decay = max(1, r1.decay_steps // per) if r1.decay_steps else 0

    # The cycle holding rnd (one cycle unless stage1.restart_rounds): its own warm-up and decay.
    bounds = [0, *(r for r in r1.restart_rounds if r < rounds), rounds]
    lo, hi = next((a, b) for a, b in zip(bounds, bounds[1:]) if rnd < b or b == rounds)

    class _Opt:
        param_groups = [{'lr': r1.lr}]
    common.set_lr(_Opt, rnd - lo, warm, hi - lo, r1.lr_schedule, decay)  # type: ignore[arg-type]
    return float(_Opt.param_groups[0]['lr'])


def train_federated(clients: Sequence[DeviceClient], folder: str | Path, recipe: Recipe,
                    rounds: int, validate_fn: Callable[[dict[str, torch.nn.Module]],
                                                       dict[str, float]] | None = None,
                    resume: bool = False, show_progress: bool = True,
                    meta: dict[str, Any] | None = None,
                    initial: dict[str, torch.nn.Module] | None = None) -> dict[str, Any]:
    """
    Run ``rounds`` FedAvg rounds over ``clients`` and save the shared models in
    ``folder/checkpoint`` (a training checkpoint whose step is the number of rounds done).

    :param validate_fn: called with the global models every ``stage1.eval_every`` rounds (and
        at the end); its metrics go to the log and the checkpoint.
    :param initial: start from these models' weights instead of a seeded initialisation (a
        site adaptation; a saved checkpoint in ``folder`` still wins with ``resume``).
    :return: summary (rounds, clients, wall time, last metrics).
    """
    from disac_ros.core.training.stage1 import build_device_models
    fl = _flwr()
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    if not clients:
        raise ConfigError('stage1.federated', 'no clients (no device has training frames)')
    r1 = recipe.stage1
    folder = Path(folder)
    ckpt_dir = folder / 'checkpoint'
    torch.manual_seed(recipe.seed * 1000 + 7)
    models = build_device_models(recipe, clients[0].frames.modalities)
    if initial is not None:
        load_model_state(models, model_state(initial))
    start = 0
    if resume and (ckpt_dir / 'config.json').is_file():
        start, _ = common.load_training_checkpoint(ckpt_dir, models, None)
    per_round = min(r1.clients_per_round, len(clients))
    strategy = fl.server.strategy.FedAvg(
        fraction_fit=per_round / len(clients), min_fit_clients=per_round,
        min_available_clients=len(clients), fraction_evaluate=0.0, min_evaluate_clients=0,
        accept_failures=False, fit_metrics_aggregation_fn=_weighted_metrics)
    manager = _SeededClientManager()
    for c in clients:
        manager.register(_InProcessProxy(c))
    parameters = ndarrays_to_parameters(model_state(models))
    log = LossLog(folder, resume_from=start if resume else None)
    metrics: dict[str, Any] = {}
    t0 = time.perf_counter()
    bar = progress(rounds, start, f'stage1 federated ({len(clients)} devices)', show_progress)
    for rnd in range(start, rounds):
        manager.rng = np.random.default_rng([recipe.seed, 71, rnd])
        lr = round_lr(recipe, rnd, rounds)
        strategy.on_fit_config_fn = (lambda _r, rnd=rnd, lr=lr: {
            'round': rnd, 'local_steps': r1.local_steps, 'lr': lr})
        instructions = strategy.configure_fit(rnd + 1, parameters, manager)
        results = [(proxy, proxy.fit(ins, None, None)) for proxy, ins in instructions]
        parameters, _ = strategy.aggregate_fit(rnd + 1, results, [])
        if parameters is None:
            raise ConfigError('stage1.federated', f'round {rnd + 1}: aggregation failed')
        done = rnd + 1
        res = [r for _, r in results]
        row = {'step': rnd, 'round': done, 'lr': lr, 'clients': len(res),
               'loss': float(np.average([r.metrics['loss'] for r in res],
                                        weights=[r.num_examples for r in res])),
               'nmse_db': common.to_db(float(np.mean([r.metrics['nmse'] for r in res]))),
               'elapsed_s': round(log.elapsed(), 2)}
        save = done % r1.checkpoint_every == 0 or done == rounds
        evaluate = validate_fn is not None and (done % r1.eval_every == 0 or done == rounds)
        if save or evaluate:
            load_model_state(models, parameters_to_ndarrays(parameters))
        if evaluate:
            assert validate_fn is not None
            metrics = validate_fn(models)
            row.update(metrics)
        log.write(row)
        bar.update(1)
        bar.set_postfix(loss=f'{row["loss"]:.3f}')
        if save:
            common.save_training_checkpoint(ckpt_dir, models, None, done,
                                            {**(meta or {}), 'metrics': metrics,
                                             'federated': {'rounds': done,
                                                           'clients': len(clients),
                                                           'clients_per_round': per_round,
                                                           'local_steps': r1.local_steps,
                                                           'strategy': 'flwr FedAvg',
                                                           'flwr': fl.__version__}})
    bar.close()
    if start >= rounds:
        _, saved = common.load_training_checkpoint(ckpt_dir, models, None)
        metrics = dict(saved.get('metrics') or {})
    else:
        load_model_state(models, parameters_to_ndarrays(parameters))
    return {'models': models, 'rounds': rounds, 'resumed_from': start,
            'clients': len(clients), 'clients_per_round': per_round,
            'local_steps': r1.local_steps, 'wall_s': round(time.perf_counter() - t0, 2),
            'metrics': metrics}
