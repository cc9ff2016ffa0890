"""Separate processes vs one composed process: CPU, latency and track rate of the same fleet.

Runs the fleet of ``config/fleet.yaml`` (simulated world, K devices, link, aggregator; the shipped
model unless ``--model``) through ``disac_fleet``, once per layout and run, side by side:

* ``separate``: one process per node (what ``ros2 launch`` does by default);
* ``composed``: world, devices, link and aggregator in one process (``--use-composition``).

For ``--seconds`` after the first tracks it measures the CPU time of every fleet process (user +
system, from /proc via psutil, divided by the wall time: 1.0 = one core busy), the resident memory
summed over the processes, the rate of /aggregator/tracks and the latency sensor stamp -> tracks
received by an independent subscriber (p50 / p95). Prints a table of medians over ``--runs`` runs
and the composed / separate ratios, and writes them as JSON with ``--json``.

    python benchmarks/bench_composition.py [--num-devices 4] [--seconds 30] [--runs 1] [--renderer genesis]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import signal
import statistics
import sys
import tempfile
import time

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_once(layout: str, args: argparse.Namespace, domain: int) -> dict:
    """One fleet run; returns its measurements."""
    from disac_interfaces.msg import TrackedObjectArray
    from ros_helpers import Observer, Proc, ros_env
    from disac_ros.nodes import conversions as cv
    from disac_ros.nodes.qos import reliable_qos
    obs = Observer(domain, name=f'bench_{layout}')
    obs.subscribe('/aggregator/tracks', TrackedObjectArray, reliable_qos(100))
    cmd = [sys.executable, '-m', 'disac_ros.tools.fleet', '--num-devices', str(args.num_devices),
           '-p', f'world.renderer={args.renderer}', '-p', f'world.rate_hz={args.rate_hz}', '--log-level', 'warn']
    if args.model:
        cmd += ['-p', f'model_dir={args.model}']
    if layout == 'composed':
        cmd.append('--use-composition')
    fleet = Proc(cmd, ros_env(domain), Path(tempfile.gettempdir()) / f'bench_composition_{layout}.log')
    proc = fleet.proc
    try:
        t_start = time.monotonic()
        if not obs.wait_until(lambda: len(obs.messages('/aggregator/tracks')) > 0 or proc.poll() is not None,
                              args.start_timeout):
            raise RuntimeError(f'{layout}: no tracks within {args.start_timeout} s (log: {fleet.log})')
        first_tracks_s = time.monotonic() - t_start
        time.sleep(2.0)                          # past the first-call warm-up of every node
        procs = _tree(proc.pid)
        for p in procs:
            p.cpu_percent(None)
        cpu0, t0 = _cpu_s(procs), time.monotonic()
        obs.clear()
        time.sleep(args.seconds)
        cpu1, t1 = _cpu_s(procs), time.monotonic()
        rss = sum(p.memory_info().rss for p in procs if p.is_running()) / 2 ** 20
        got = obs.messages('/aggregator/tracks')
        # Latency: receive wall time - sensor stamp (stamps are wall-offset at the first step).
        wall_minus_mono = time.time() - time.monotonic()
        lat = sorted((r + wall_minus_mono - cv.msg_to_time(m.header.stamp)) * 1e3 for r, m in got)
    finally:
        fleet.stop_group(signal.SIGINT)
        obs.close()
    return {'layout': layout, 'processes': len(procs), 'cpu_cores': (cpu1 - cpu0) / (t1 - t0),
            'rss_mb': rss, 'tracks_hz': len(got) / (t1 - t0),
            'latency_p50_ms': lat[len(lat) // 2] if lat else float('nan'),
            'latency_p95_ms': lat[int(0.95 * (len(lat) - 1))] if lat else float('nan'),
            'first_tracks_s': first_tracks_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--num-devices', type=int, default=4)
    p.add_argument('--seconds', type=float, default=30.0, help='measured time per run (after first tracks)')
    p.add_argument('--runs', type=int, default=1, help='runs per layout (medians are reported)')
    p.add_argument('--rate-hz', type=float, default=5.0)
    p.add_argument('--renderer', choices=('genesis', 'none'), default='genesis')
    p.add_argument('--model', default='', help='model folder (default: the shipped models/default)')
    p.add_argument('--start-timeout', type=float, default=300.0)
    p.add_argument('--layouts', nargs='+', default=['separate', 'composed'], choices=('separate', 'composed'))
    p.add_argument('--json', default='', help='write the results here')
    args = p.parse_args()
    from ros_helpers import new_domain_id
    results: dict[str, list[dict]] = {layout: [] for layout in args.layouts}
    for k in range(args.runs):
        for layout in args.layouts:                   # alternate, so drift hits both alike
            r = run_once(layout, args, new_domain_id())
            print(f'run {k + 1} {layout}: ' + ', '.join(f'{key} {v:.3g}' for key, v in r.items()
                                                       if isinstance(v, float)), flush=True)
            results[layout].append(r)
    keys = ('processes', 'cpu_cores', 'rss_mb', 'tracks_hz', 'latency_p50_ms', 'latency_p95_ms', 'first_tracks_s')
    med = {lay: {k: statistics.median(r[k] for r in rs) for k in keys} for lay, rs in results.items()}
    print(f'\nK = {args.num_devices}, {args.rate_hz:g} Hz, renderer {args.renderer}, {args.seconds:g} s x '
          f'{args.runs} run(s), medians')
    print(f'{"":18}' + ''.join(f'{lay:>12}' for lay in args.layouts) + ('   ratio' if len(args.layouts) == 2 else ''))
    for k in keys:
        vals = [med[lay][k] for lay in args.layouts]
        ratio = f'{vals[1] / vals[0]:8.2f}' if len(vals) == 2 and vals[0] else ''
        print(f'{k:18}' + ''.join(f'{v:12.3g}' for v in vals) + ratio)
    if args.json:
        Path(args.json).write_text(json.dumps({'args': vars(args), 'runs': results, 'median': med}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
