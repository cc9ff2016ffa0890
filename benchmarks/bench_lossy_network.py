"""The fleet across a real lossy network: sensing side and aggregator in two network namespaces.

Namespace A holds the simulated world and the K devices (``disac_fleet`` with those nodes, on
localhost: SHM for images, nothing announced on the radio), the emulated radio link as the radio
gateway (its own ``disac_fleet``, on the subnet) and a recorder of the ground truth and
/diagnostics; namespace B holds the aggregator and a recorder of its tracks and /diagnostics.
``--layout flat`` puts every process of A on the subnet instead. They are joined only by
``test/netns_lab.py``'s radio: a user-space relay between two TAP interfaces that drops frames at
random (this kernel has no netem or nft) and ``tc tbf`` for a bandwidth cap. DDS crosses it over
UDP (``--radio-profile``, default ``config/fastdds_radio.xml``: UDP only, so nothing can take
shared memory across, and no datagram above 1400 B; discovery over the subnet, not localhost).
docs/radio.md has the measured table and what to set on a real radio.

Per condition (``LOSS`` percent, optionally ``@RATE`` such as ``0@1mbit`` or ``0@128kbit``):

1. A starts; once A's link publishes every device, B starts; ``discovery_s`` is how long B's probe
   then waits to see all K link publishers across the radio;
2. ``--seconds`` of steady state from the first tracks: track rate, and ``disac-score-tracks``
   metrics of that window (ground truth from A's bag, tracks from B's: one wall clock);
3. with ``--burst S``: once the last tracks message carries tracks (up to ``--burst-wait`` s
   more; ``tracks_at_burst`` says how many), S seconds of 100 % loss, then ``recovery_s`` = from
   the burst's end to the first tracks message with tracks in it (and ``recovery_any_s`` to any
   tracks message). Burst only while something is tracked: otherwise ``recovery_s`` measures
   when the scene next has a trackable object, not the recovery;
4. counters: frames forwarded / dropped by the radio, packets sent by the link (``{dev}.out``),
   received, refused and lost in transit (sequence gaps) at the aggregator, DDS-reported losses.

Prints a table and writes JSON with ``--json``. Needs root, iproute2 and /dev/net/tun; everything
it creates is removed at the end, also on failure or SIGTERM.

    sudo python benchmarks/bench_lossy_network.py [--conditions 0 10 30 50 0@1mbit] [--seconds 30]
        [--burst 2] [--num-devices 4] [--renderer genesis] [--json results/lossy_network.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))
sys.path.insert(0, str(REPO))

RATE_UNITS = {'kbit': 1e-3, 'mbit': 1.0}


def parse_condition(text: str) -> dict:
    """'30' -> 30 % loss; '0@1mbit' -> no loss, 1 Mbit/s cap; '10@128kbit'."""
    m = re.fullmatch(r'(\d+(?:\.\d+)?)(?:@(\d+(?:\.\d+)?)(kbit|mbit))?', text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f'condition {text!r}: expected LOSS_PERCENT[@RATE(kbit|mbit)], e.g. 30 or 0@1mbit')
    loss = float(m.group(1)) / 100.0
    if not 0.0 <= loss <= 1.0:
        raise argparse.ArgumentTypeError(f'condition {text!r}: loss must be 0-100 %')
    rate = float(m.group(2)) * RATE_UNITS[m.group(3)] if m.group(2) else 0.0
    return {'name': text, 'loss': loss, 'rate_mbit': rate}


# ---- the probe (runs inside a namespace) ----------------------------------------------------

def probe_main(argv: list[str]) -> int:
    """Wait for the K link publishers (print 'discovered'), then print one JSON line per tracks message."""
    p = argparse.ArgumentParser(prog='bench_lossy_network.py probe')
    p.add_argument('--devices', nargs='+', required=True)
    p.add_argument('--tracks', action='store_true', help='after discovery, report /aggregator/tracks')
    p.add_argument('--timeout', type=float, default=120.0)
    args = p.parse_args(argv)
    import rclpy
    from disac_interfaces.msg import TrackedObjectArray
    from disac_ros.nodes import conversions as cv
    from disac_ros.nodes.qos import reliable_qos
    rclpy.init()
    node = rclpy.create_node(f'lossy_probe_{os.getpid()}')
    t0 = time.time()
    topics = [f'/{d}/link/feature' for d in args.devices]
    if args.tracks:
        node.create_subscription(TrackedObjectArray, '/aggregator/tracks', lambda m: print(json.dumps(
            {'event': 'tracks', 't': time.time(), 'stamp': cv.msg_to_time(m.header.stamp), 'n': len(m.objects)}),
            flush=True), reliable_qos(100))
    discovered = False
    try:
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.05)
            if not discovered and all(node.count_publishers(t) > 0 for t in topics):
                discovered = True
                print(json.dumps({'event': 'discovered', 't': time.time(), 'discovery_s': time.time() - t0}), flush=True)
                if not args.tracks:
                    break
            if not discovered and time.time() - t0 > args.timeout:
                print(json.dumps({'event': 'timeout', 't': time.time()}), flush=True)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


class ProbeReader:
    """Reads a probe's JSON lines in a thread."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self.lock:
                self.events.append(ev)

    def of(self, kind: str) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e.get('event') == kind]

    def wait(self, pred: Any, timeout: float, alive: Any = None) -> bool:
        """Until ``pred()``; False on timeout, when the probe exits or when ``alive()`` is False."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            if self.proc.poll() is not None or (alive is not None and not alive()):
                time.sleep(0.2)
                return bool(pred())
            time.sleep(0.05)
        return bool(pred())


# ---- one condition ------------------------------------------------------------------------

def _diag_series(bag: Path) -> list[tuple[int, str, dict[str, float]]]:
    """(log time ns, status name, numeric values) of every recorded diagnostics status."""
    from disac_ros.core.bagfile import make_typestore, read_messages
    from ros_helpers import diagnostic_numbers
    store = make_typestore()
    out = []
    for m in read_messages(str(bag), ['/diagnostics']):
        msg = store.deserialize_cdr(m.data, m.msgtype)
        out.extend((m.timestamp_ns, st.name, diagnostic_numbers(st)) for st in msg.status)
    return sorted(out, key=lambda x: x[0])


def counter_delta(series: list, status_part: str, key_re: str, t0_ns: float, t1_ns: float) -> float:
    """How much the counters matching ``key_re`` of the statuses named ``*status_part*`` grew
    between the last report at or before ``t0_ns`` and the last at or before ``t1_ns``."""
    rx = re.compile(key_re)

    def at(t_ns: float) -> float:
        latest: dict[str, dict[str, float]] = {}
        for log, name, vals in series:
            if log > t_ns:
                break
            if status_part in name:
                latest[name] = vals
        return sum(v for vals in latest.values() for k, v in vals.items() if rx.fullmatch(k))
    return at(t1_ns) - at(t0_ns)


def run_condition(cond: dict, args: argparse.Namespace, work: Path, domain: int) -> dict:
    """One condition end to end; returns its measurements."""
    from netns_lab import NetnsLab
    from ros_helpers import Proc, fleet_subset_config, ros_env
    from disac_ros.core.fleet_config import write_fleet_key
    from disac_ros.tools.score_tracks import load_run, score_run
    tag = re.sub(r'\W', '', cond['name'])[:8]
    run_dir = work / f'cond_{tag}'
    shutil.rmtree(run_dir, ignore_errors=True)      # a --work-dir reused from an earlier run
    run_dir.mkdir(parents=True)
    key = write_fleet_key(run_dir / 'key')
    devices = [f'dev{i}' for i in range(args.num_devices)]
    fleet_b = fleet_subset_config(run_dir, ['aggregator'])
    radio_profile = str(REPO / 'config' / args.radio_profile)
    env_b = ros_env(domain, ROS_AUTOMATIC_DISCOVERY_RANGE='SUBNET', FASTDDS_DEFAULT_PROFILES_FILE=radio_profile)
    if args.layout == 'gateway':
        # Only the link (the radio gateway) is on the radio; the sensing nodes stay on localhost
        # (SHM for images), so their endpoints are never announced across the radio.
        fleet_a = fleet_subset_config(run_dir, ['world', 'device_node'])
        env_a = ros_env(domain)
        fleet_gw = fleet_subset_config(run_dir, ['link'])
        env_gw = ros_env(domain, ROS_AUTOMATIC_DISCOVERY_RANGE='SUBNET', FASTDDS_DEFAULT_PROFILES_FILE=radio_profile)
    else:   # flat: every process of A on the subnet (SHM inside A, UDP across)
        fleet_a = fleet_subset_config(run_dir, ['world', 'device_node', 'link'])
        env_a = ros_env(domain, ROS_AUTOMATIC_DISCOVERY_RANGE='SUBNET')
    py = sys.executable
    common = ['--num-devices', str(args.num_devices), '--log-level', 'warn']
    if args.model:
        common += ['-p', f'model_dir={args.model}']
    procs: list[Proc] = []
    probes: list[subprocess.Popen] = []
    result: dict[str, Any] = {'condition': cond['name'], 'loss': cond['loss'], 'rate_mbit': cond['rate_mbit']}
    with NetnsLab(loss=cond['loss'], seed=args.seed, rate_mbit=cond['rate_mbit'], work_dir=run_dir, tag=tag) as lab:
        def start(ns: str, name: str, cmd: list[str], env: dict) -> Proc:
            p = Proc(lab.command(ns, cmd), env, run_dir / f'{name}.log')
            procs.append(p)
            return p

        def probe(ns: str, env: dict, tracks: bool) -> ProbeReader:
            cmd = lab.command(ns, [py, str(Path(__file__).resolve()), 'probe', '--devices', *devices,
                                   '--timeout', str(args.start_timeout)] + (['--tracks'] if tracks else []))
            err = open(run_dir / f'probe_{len(probes)}.log', 'wb')  # noqa: SIM115 - closed with the process
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
            err.close()
            probes.append(p)
            return ProbeReader(p)
        def alive() -> bool:
            return all(p.proc.poll() is None for p in procs)
        try:
            start(lab.ns_a, 'fleet_a', [py, '-m', 'disac_ros.tools.fleet', '--config', str(fleet_a), *common,
                                        '-p', f'world.renderer={args.renderer}', '-p', f'world.rate_hz={args.rate_hz}',
                                        '-p', f'device_node.key_file={key}'], env_a)
            if args.layout == 'gateway':
                start(lab.ns_a, 'gateway_a', [py, '-m', 'disac_ros.tools.fleet', '--config', str(fleet_gw),
                                              *common], env_gw)
            start(lab.ns_a, 'recorder_a', [py, '-m', 'disac_ros.nodes.bag_recorder', '--ros-args', '-p',
                                           f'output:={run_dir / "bag_a"}', '-p',
                                           'topics:=[/world/ground_truth, /diagnostics]'], env_a)
            local = probe(lab.ns_a, env_a, tracks=False)
            if not local.wait(lambda: local.of('discovered') or local.of('timeout'), args.start_timeout, alive) \
                    or not local.of('discovered'):
                raise RuntimeError(f'{cond["name"]}: the sensing side did not come up (probe exit '
                                   f'{local.proc.poll()}, processes {[q.proc.poll() for q in procs]}; logs in {run_dir})')
            remote = probe(lab.ns_b, env_b, tracks=True)
            start(lab.ns_b, 'fleet_b', [py, '-m', 'disac_ros.tools.fleet', '--config', str(fleet_b), *common,
                                        '-p', f'aggregator.key_file={key}'], env_b)
            start(lab.ns_b, 'recorder_b', [py, '-m', 'disac_ros.nodes.bag_recorder', '--ros-args', '-p',
                                           f'output:={run_dir / "bag_b"}', '-p',
                                           'topics:=[/aggregator/tracks, /diagnostics]'], env_b)
            if not remote.wait(lambda: remote.of('discovered'), args.start_timeout, alive):
                raise RuntimeError(f'{cond["name"]}: B never discovered the link publishers across the radio')
            result['discovery_s'] = remote.of('discovered')[0]['discovery_s']
            if not remote.wait(lambda: any(e['n'] > 0 for e in remote.of('tracks')), args.start_timeout, alive):
                raise RuntimeError(f'{cond["name"]}: no tracks within {args.start_timeout} s (logs in {run_dir})')
            t_first = next(e['t'] for e in remote.of('tracks') if e['n'] > 0)
            result['first_tracks_after_discovery_s'] = t_first - remote.of('discovered')[0]['t']
            time.sleep(2.0)
            w0 = time.time()
            time.sleep(args.seconds)
            w1 = time.time()
            steady = [e for e in remote.of('tracks') if w0 <= e['t'] < w1]
            result['tracks_hz'] = len(steady) / (w1 - w0)
            gaps = [b['t'] - a['t'] for a, b in zip(steady, steady[1:])]
            result['max_gap_s'] = max(gaps) if gaps else math.nan
            if args.burst > 0:
                def tracked_now() -> int:      # tracks in the latest tracks message
                    return (remote.of('tracks') or [{'n': 0}])[-1]['n']
                remote.wait(lambda: tracked_now() > 0, args.burst_wait, alive)
                result['tracks_at_burst'] = tracked_now()
                lab.burst(args.burst)
                b_end = time.time() + args.burst
                time.sleep(args.burst + args.recovery_window)
                after = [e for e in remote.of('tracks') if e['t'] >= b_end]
                result['recovery_any_s'] = after[0]['t'] - b_end if after else math.nan
                full = next((e for e in after if e['n'] > 0), None)
                result['recovery_s'] = full['t'] - b_end if full else math.nan
            result['radio'] = lab.stats()
        finally:
            for p in probes:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGINT)
            for p in reversed(procs):          # B first, then A; recorders close their bags
                p.stop_group(signal.SIGINT, timeout=30)
            for p in probes:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
    crashed = [p.log.name for p in procs if p.proc.returncode not in (0, None)
               or 'Traceback' in p.output()]
    result['crashed'] = crashed
    # Score the steady window: ground truth (A) published in it against the tracks (B).
    gt, tracks = load_run([str(run_dir / 'bag_a'), str(run_dir / 'bag_b')], '/aggregator/tracks',
                          '/world/ground_truth')
    gt = [g for g in gt if w0 * 1e9 <= g[2] < w1 * 1e9]
    if gt:
        score = score_run(gt, tracks, warmup_s=0.0)
        for k in ('tracked_fraction', 'mota', 'idf1', 'accuracy', 'position_rmse_m', 'latency_p50_ms',
                  'latency_p95_ms', 'pipeline_latency_p50_ms', 'pipeline_latency_p95_ms'):
            result[k] = score.get(k, math.nan)
    # Counters over the same window (diagnostics come once a second: +-1 s at each end).
    # Each side's counters from its own recorder: reports that cross the lossy radio arrive late.
    sensing, aggregating = _diag_series(run_dir / 'bag_a'), _diag_series(run_dir / 'bag_b')
    window = (w0 * 1e9, w1 * 1e9)
    result['packets_sent'] = counter_delta(sensing, '/link', r'dev\d+\.out', *window)
    result['packets_received'] = counter_delta(aggregating, 'aggregator', r'dev\d+\.received', *window)
    result['packets_refused'] = counter_delta(aggregating, 'aggregator', r'dev\d+\.rejected', *window)
    result['packets_lost'] = counter_delta(aggregating, 'aggregator', r'dev\d+\.lost', *window)
    result['dds_lost'] = counter_delta(aggregating, 'aggregator', r'dds_lost', *window)
    result['logs'] = str(run_dir)
    return result


COLUMNS = (('condition', 's'), ('tracks_hz', '.2f'), ('tracked_fraction', '.3f'), ('mota', '.2f'),
           ('idf1', '.2f'), ('pipeline_latency_p50_ms', '.0f'), ('pipeline_latency_p95_ms', '.0f'),
           ('discovery_s', '.1f'), ('recovery_s', '.1f'), ('packets_sent', '.0f'), ('packets_received', '.0f'),
           ('packets_refused', '.0f'), ('packets_lost', '.0f'))


def print_table(rows: list[dict]) -> None:
    heads = [c for c, _ in COLUMNS]
    short = {'pipeline_latency_p50_ms': 'p50_ms', 'pipeline_latency_p95_ms': 'p95_ms', 'tracked_fraction': 'tracked',
             'packets_sent': 'sent', 'packets_received': 'received', 'packets_refused': 'refused',
             'packets_lost': 'lost', 'discovery_s': 'discovery_s', 'recovery_s': 'recovery_s'}
    print('| ' + ' | '.join(short.get(h, h) for h in heads) + ' |')
    print('|' + '---|' * len(heads))
    for r in rows:
        cells = []
        for c, fmt in COLUMNS:
            v = r.get(c, math.nan)
            cells.append(format(v, fmt) if not (isinstance(v, float) and math.isnan(v)) else '-')
        print('| ' + ' | '.join(cells) + ' |')


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == 'probe':
        return probe_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--conditions', nargs='+', type=parse_condition,
                   default=[parse_condition(c) for c in ('0', '10', '30', '50', '0@1mbit')],
                   help='LOSS_PERCENT[@RATE], e.g. 0 10 30 50 0@1mbit 0@128kbit (default: the first five)')
    p.add_argument('--seconds', type=float, default=30.0, help='steady-state window per condition')
    p.add_argument('--burst', type=float, default=2.0, help='seconds of 100 %% loss after the window (0: none)')
    p.add_argument('--recovery-window', type=float, default=8.0, help='seconds observed after a burst')
    p.add_argument('--burst-wait', type=float, default=20.0,
                   help='seconds the burst may wait for a tracks message with tracks in it')
    p.add_argument('--num-devices', type=int, default=4)
    p.add_argument('--rate-hz', type=float, default=5.0)
    p.add_argument('--renderer', choices=('genesis', 'none'), default='genesis')
    p.add_argument('--model', default='', help='model folder (default: the shipped models/default)')
    p.add_argument('--seed', type=int, default=1, help='seed of the radio\'s drops')
    p.add_argument('--layout', choices=('gateway', 'flat'), default='gateway',
                   help='gateway: only the link process is on the radio, the sensing nodes on localhost; '
                        'flat: every process of A on the subnet')
    p.add_argument('--radio-profile', default='fastdds_radio.xml',
                   help='FastDDS profile (in config/) of the processes on the radio')
    p.add_argument('--start-timeout', type=float, default=240.0)
    p.add_argument('--work-dir', default='', help='logs and bags (default: a new temporary folder)')
    p.add_argument('--json', default='', help='write the results here')
    args = p.parse_args(argv)
    from netns_lab import NetnsLab
    from ros_helpers import new_domain_id
    why = NetnsLab.available()
    if why:
        print(f'bench_lossy_network: {why}', file=sys.stderr)
        return 2
    work = Path(args.work_dir or tempfile.mkdtemp(prefix='disac_lossy_'))
    rows = []
    for cond in args.conditions:
        try:
            r = run_condition(cond, args, work, new_domain_id())
        except RuntimeError as exc:
            r = {'condition': cond['name'], 'error': str(exc)}
            print(f'{cond["name"]}: FAILED: {exc}', flush=True)
        else:
            print(f'{cond["name"]}: ' + ', '.join(f'{k} {v:.3g}' for k, v in r.items() if isinstance(v, float)),
                  flush=True)
        rows.append(r)
    print(f'\nK = {args.num_devices}, {args.rate_hz:g} Hz, renderer {args.renderer}, {args.seconds:g} s per '
          f'condition, {args.burst:g} s bursts; logs in {work}')
    print_table(rows)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({'args': {k: v for k, v in vars(args).items() if k != 'conditions'},
                                               'conditions': rows}, indent=2, default=str))
    return 0 if all('error' not in r and not r.get('crashed') for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
