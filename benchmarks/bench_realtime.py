"""Real-time harness in the spirit of ros2_benchmark: replay a bag into the unmodified graph at fixed rates.

The graph under test is the fleet's receiving chain as users run it (``disac_fleet`` with the
device nodes, the emulated link and the aggregator of ``config/fleet.yaml``; the shipped model
unless ``--model``), black box: nothing in it is changed or instrumented. The harness is the data
loader and the monitor, in its own process:

* **Data loader.** The bag's sensor frames (every device's camera image, camera info and RF
  frame, and /tf, grouped by their common stamp) are loaded into memory once. A segment publishes
  them at exactly the target rate on an absolute schedule (frame i at t0 + i / rate; the bag is
  cycled when it is shorter), each frame stamped with its publish time, so latency is sensor stamp
  -> tracks on one clock and nothing in the graph sees a stale stamp. Camera and RF stamps are
  written into the recorded CDR bytes (no re-serialisation of the 180 KB per device-frame).
* **Monitor.** /aggregator/tracks (reliable): a published frame is *delivered* when a tracks
  message carries its stamp; otherwise it is *missed* (dropped by a device that was still busy,
  refused as late, or never fused).

Per layout (``separate``: one process per node; ``composed``: one container process, like
``use_composition:=true``) and per rate it reports, as ros2_benchmark does: MEAN_FRAME_RATE
(delivered frames per second of the segment), NUM_MISSED_FRAMES (and their share), latency
p50 / p95 / max, jitter (|interval between outputs - 1 / rate|: mean and max) and CPU per node
(user + system time / wall time from /proc; 1.0 = one core) plus the harness's own. ``--peak``
then searches the highest rate with fewer than 5 % missed frames. Everything runs ``--runs``
times, layouts alternating; the table shows medians.

Without ``--bag`` it first records one with ``scripts/make_sample_bag.sh`` (K devices, 10 Hz
simulation steps; the simulator may run slower than real time while recording, the stamps stay
1/10 s apart).

    python benchmarks/bench_realtime.py [--bag DIR] [--rates 5 10 20] [--peak] [--runs 3]
        [--layouts separate composed] [--seconds 15] [--num-devices 4] [--json results/realtime.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))

MISSED_LIMIT = 0.05            # ros2_benchmark's "peak": the highest rate with < 5 % dropped frames
SENSOR_RE = re.compile(r'^/(?P<dev>[^/]+)/(?P<kind>camera/image_raw|camera/camera_info|rf/frame)$')


# ---- the bag's frames (pure: tested without ROS) ---------------------------------------------

def cdr_header_stamp_ns(data: bytes) -> int:
    """The header stamp of a CDR message whose first field is a std_msgs/Header."""
    if len(data) < 12 or data[1] not in (0, 1):
        raise ValueError('not a CDR message with a header')
    sec, nsec = struct.unpack_from('<iI' if data[1] == 1 else '>iI', data, 4)
    return sec * 1_000_000_000 + nsec


def with_header_stamp(data: bytes, stamp_ns: int) -> bytes:
    """``data`` (CDR, header first) with its header stamp replaced."""
    out = bytearray(data)
    struct.pack_into('<iI' if data[1] == 1 else '>iI', out, 4, stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)
    return bytes(out)


class Frame:
    """One instant of the bag: raw CDR per sensor topic and the /tf messages of that stamp."""

    def __init__(self, stamp_ns: int) -> None:
        self.stamp_ns = stamp_ns
        self.sensors: dict[str, bytes] = {}
        self.tf: list[Any] = []        # deserialised TFMessage (their stamps are rewritten per publish)


def group_frames(messages: list[tuple[str, bytes]], devices: list[str]) -> list[Frame]:
    """Sensor messages grouped by header stamp; only complete frames (every device's image and RF)."""
    frames: dict[int, Frame] = {}
    for topic, data in messages:
        if not SENSOR_RE.match(topic):
            continue
        stamp = cdr_header_stamp_ns(data)
        frames.setdefault(stamp, Frame(stamp)).sensors[topic] = data
    need = [f'/{d}/{k}' for d in devices for k in ('camera/image_raw', 'rf/frame')]
    return [frames[s] for s in sorted(frames) if all(t in frames[s].sensors for t in need)]


def bag_devices(topics: list[str]) -> list[str]:
    """Device ids with a camera image topic in the bag, in natural order (dev2 before dev10)."""
    devs = {m['dev'] for t in topics if (m := SENSOR_RE.match(t)) and m['kind'] == 'camera/image_raw'}
    return sorted(devs, key=lambda d: [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', d)])


# ---- scoring one segment (pure) -----------------------------------------------------------

def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def score_segment(published: list[tuple[int, float]], outputs: list[tuple[float, int]], rate_hz: float,
                  duration_s: float) -> dict[str, float]:
    """ros2_benchmark-style numbers of one segment.

    ``published``: (stamp ns, publish time s) of every frame sent; ``outputs``: (receive time s,
    stamp ns) of every tracks message. A frame is delivered when a tracks message has its stamp.
    """
    sent = {stamp: t for stamp, t in published}
    first: dict[int, float] = {}
    for t, stamp in outputs:
        if stamp in sent and stamp not in first:
            first[stamp] = t
    delivered = sorted(first.values())
    latency = [(first[s] - s / 1e9) * 1e3 for s in first]
    period = 1.0 / rate_hz
    jitter = [abs((b - a) - period) * 1e3 for a, b in zip(delivered, delivered[1:])]
    missed = len(sent) - len(first)
    return {'rate_hz': rate_hz, 'frames_sent': float(len(sent)), 'MEAN_FRAME_RATE': len(first) / duration_s,
            'NUM_MISSED_FRAMES': float(missed), 'missed_share': missed / len(sent) if sent else math.nan,
            'latency_p50_ms': _pct(latency, 0.5), 'latency_p95_ms': _pct(latency, 0.95),
            'latency_max_ms': max(latency) if latency else math.nan,
            'jitter_mean_ms': statistics.fmean(jitter) if jitter else math.nan,
            'jitter_max_ms': max(jitter) if jitter else math.nan}


# ---- CPU per node -------------------------------------------------------------------------

def node_label(cmdline: list[str]) -> str:
    """'dev0/device_node', 'link', 'aggregator', 'container' ... from a node process's argv."""
    name = next((a.split(':=', 1)[1] for a in cmdline if a.startswith('__node:=')), '')
    ns = next((a.split(':=', 1)[1] for a in cmdline if a.startswith('__ns:=')), '/').strip('/')
    if not name:
        joined = ' '.join(cmdline)
        name = 'container' if 'container' in joined else Path(cmdline[-1]).name if cmdline else '?'
    return f'{ns}/{name}' if ns else name


class CpuMeter:
    """CPU seconds per labelled process of a process tree (and of this process) between marks."""

    def __init__(self, root_pid: int) -> None:
        import psutil
        self._psutil = psutil
        self.root = psutil.Process(root_pid)
        self.me = psutil.Process(os.getpid())

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.root.children(recursive=True):
            try:
                label, t = node_label(p.cmdline()), p.cpu_times()
            except self._psutil.Error:
                continue
            out[label] = out.get(label, 0.0) + t.user + t.system
        t = self.me.cpu_times()
        out['(harness)'] = t.user + t.system
        return out


# ---- the graph and the harness node -------------------------------------------------------

class Harness:
    """Data loader + monitor: one rclpy node (a ``ros_helpers.Observer``: own context, spun by a thread)."""

    def __init__(self, domain: int, frames: list[Frame], tf_static: list[bytes], devices: list[str]) -> None:
        from disac_interfaces.msg import RfFrame, TrackedObjectArray
        from ros_helpers import Observer
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage
        from disac_ros.nodes.qos import latched_qos, reliable_qos, sensor_qos
        self.observer = Observer(domain, name='realtime_harness')
        self.node = self.observer.node
        self.frames, self.devices = frames, devices
        types = {'camera/image_raw': Image, 'camera/camera_info': CameraInfo, 'rf/frame': RfFrame}
        topics = sorted({t for f in frames for t in f.sensors})
        self.pubs = {t: self.node.create_publisher(types[SENSOR_RE.match(t)['kind']], t, sensor_qos(5))
                     for t in topics}
        self.tf_pub = self.node.create_publisher(TFMessage, '/tf', reliable_qos(100))
        self._static_pub = self.node.create_publisher(TFMessage, '/tf_static', latched_qos(1))
        for data in tf_static:
            self._static_pub.publish(data)
        self.lock = threading.Lock()
        self.outputs: list[tuple[float, int]] = []     # (wall receive time, stamp ns): one clock with the stamps
        self.node.create_subscription(TrackedObjectArray, '/aggregator/tracks', self._on_tracks, reliable_qos(100))
        self._next = 0

    def _on_tracks(self, msg: Any) -> None:
        t = time.time()
        with self.lock:
            self.outputs.append((t, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec))

    def matched(self) -> bool:
        """Every sensor topic has a subscriber and /aggregator/tracks a publisher."""
        return (all(p.get_subscription_count() > 0 for t, p in self.pubs.items() if not t.endswith('camera_info'))
                and self.node.count_publishers('/aggregator/tracks') > 0)

    def publish_frame(self, stamp_ns: int) -> None:
        """The next frame of the bag (cycled), stamped ``stamp_ns``: /tf first, so the pose is there."""
        frame = self.frames[self._next % len(self.frames)]
        self._next += 1
        sec, nsec = divmod(stamp_ns, 1_000_000_000)
        for tf in frame.tf:
            for tr in tf.transforms:
                tr.header.stamp.sec, tr.header.stamp.nanosec = sec, nsec
            self.tf_pub.publish(tf)
        for topic, data in frame.sensors.items():
            self.pubs[topic].publish(with_header_stamp(data, stamp_ns))

    def play(self, rate_hz: float, seconds: float) -> tuple[list[tuple[int, float]], float]:
        """Publish at ``rate_hz`` for ``seconds`` on an absolute schedule; (stamp, time) per frame, duration."""
        n = max(1, int(round(rate_hz * seconds)))
        t0 = time.time() + 0.05
        published = []
        for i in range(n):
            due = t0 + i / rate_hz
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            stamp = int(now * 1e9)
            self.publish_frame(stamp)
            published.append((stamp, now))
        return published, n / rate_hz

    def outputs_since(self, t: float) -> list[tuple[float, int]]:
        with self.lock:
            return [o for o in self.outputs if o[0] >= t]

    def close(self) -> None:
        self.observer.close()


def load_bag(bag: Path, num_devices: int) -> tuple[list[Frame], list[bytes], list[str]]:
    """The bag's complete frames, its /tf_static messages and its device ids (the first K)."""
    from rclpy.serialization import deserialize_message
    from tf2_msgs.msg import TFMessage
    from disac_ros.core.bagfile import bag_info, read_messages
    topics = [t.topic for t in bag_info(str(bag)).topics]
    devices = bag_devices(topics)
    if len(devices) < num_devices:
        raise SystemExit(f'bench_realtime: {bag} has {len(devices)} devices ({devices}); --num-devices is '
                         f'{num_devices}. Record a bag with NUM_DEVICES={num_devices} scripts/make_sample_bag.sh')
    devices = devices[:num_devices]
    wanted = [t for t in topics if (m := SENSOR_RE.match(t)) and m['dev'] in devices] + ['/tf', '/tf_static']
    sensors, tfs, static = [], {}, []
    for m in read_messages(str(bag), [t for t in wanted if t in topics]):
        if m.topic == '/tf_static':
            static.append(bytes(m.data))
        elif m.topic == '/tf':
            msg = deserialize_message(bytes(m.data), TFMessage)
            if msg.transforms:
                st = msg.transforms[0].header.stamp
                tfs.setdefault(st.sec * 1_000_000_000 + st.nanosec, []).append(msg)
        else:
            sensors.append((m.topic, bytes(m.data)))
    frames = group_frames(sensors, devices)
    for f in frames:
        f.tf = tfs.get(f.stamp_ns, [])
    if not frames:
        raise SystemExit(f'bench_realtime: {bag} has no frame with every device\'s image and RF frame')
    return frames, static, devices


def record_bag(out: Path, num_devices: int, seconds: float) -> None:
    """A bag from the simulator (10 Hz steps) with scripts/make_sample_bag.sh."""
    env = dict(os.environ, NUM_DEVICES=str(num_devices), RATE_HZ='10', DURATION_S=str(seconds))
    print(f'recording {out} ({num_devices} devices, {seconds:g} s at 10 Hz) ...', flush=True)
    log = out.parent / 'record_bag.log'
    with open(log, 'wb') as f:
        done = subprocess.run(['bash', str(REPO / 'scripts' / 'make_sample_bag.sh'), str(out)], env=env,
                              stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f'bench_realtime: recording the bag failed (exit {done.returncode}); see {log}')


def run_layout(layout: str, rates: list[float], args: argparse.Namespace, frames: list[Frame],
               static: list[bytes], devices: list[str], work: Path) -> list[dict]:
    """Start the graph in one layout, play every rate (and the peak search); a row per rate."""
    from ros_helpers import Proc, fleet_subset_config, new_domain_id, ros_env
    domain = new_domain_id()
    config = fleet_subset_config(work, ['device_node', 'link', 'aggregator'])
    cmd = [sys.executable, '-m', 'disac_ros.tools.fleet', '--config', str(config),
           '--num-devices', str(len(devices)), '--log-level', 'warn']
    if args.model:
        cmd += ['-p', f'model_dir={args.model}']
    if layout == 'composed':
        cmd.append('--use-composition')
    fleet = Proc(cmd, ros_env(domain), work / f'fleet_{layout}.log')
    harness = Harness(domain, frames, static, devices)
    rows: list[dict] = []
    try:
        deadline = time.monotonic() + args.start_timeout
        while not harness.matched():
            if fleet.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'{layout}: the graph did not come up (log: {fleet.log})')
            time.sleep(0.2)
        # Warm-up: until tracks flow (models loaded, first calls done), then a little more.
        t_warm = time.time()
        while not harness.outputs_since(t_warm):
            if fleet.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'{layout}: no tracks during warm-up (log: {fleet.log})')
            harness.play(rates[0], 1.0)
        harness.play(rates[0], args.warmup)
        meter = CpuMeter(fleet.proc.pid)

        def segment(rate: float, seconds: float) -> dict:
            time.sleep(args.drain)                        # the previous segment's frames are through
            cpu0, w0 = meter.sample(), time.time()
            published, duration = harness.play(rate, seconds)
            time.sleep(args.drain)
            cpu1, w1 = meter.sample(), time.time()
            row = score_segment(published, harness.outputs_since(w0), rate, duration)
            row['cpu_cores'] = {k: (cpu1[k] - cpu0.get(k, 0.0)) / (w1 - w0) for k in cpu1}
            row['layout'] = layout
            print(f'  {layout} {rate:5.1f} Hz: rate {row["MEAN_FRAME_RATE"]:.2f}, missed '
                  f'{row["NUM_MISSED_FRAMES"]:.0f}/{row["frames_sent"]:.0f}, p50 {row["latency_p50_ms"]:.0f} ms, '
                  f'p95 {row["latency_p95_ms"]:.0f} ms', flush=True)
            return row
        for rate in rates:
            rows.append(segment(rate, args.seconds))
        if args.peak:
            tried = {r['rate_hz']: r for r in rows}
            ok = [r for r, row in tried.items() if row['missed_share'] < MISSED_LIMIT]
            lo = max(ok) if ok else min(rates) / 2
            hi = min([r for r, row in tried.items() if r > lo and row['missed_share'] >= MISSED_LIMIT],
                     default=2 * max(rates))
            if lo not in tried:
                tried[lo] = segment(lo, args.seconds)
            for _ in range(args.peak_steps):             # bisection between a passing and a failing rate
                mid = round((lo + hi) / 2, 1)
                if mid in (lo, hi):
                    break
                tried[mid] = segment(mid, args.seconds)
                lo, hi = (mid, hi) if tried[mid]['missed_share'] < MISSED_LIMIT else (lo, mid)
            rows.append(dict(tried[lo], peak=True))
    finally:
        harness.close()
        fleet.stop_group(signal.SIGINT)
    if 'Traceback' in fleet.output():
        raise RuntimeError(f'{layout}: a node raised (log: {fleet.log})')
    return rows


NUMBERS = ('MEAN_FRAME_RATE', 'NUM_MISSED_FRAMES', 'missed_share', 'latency_p50_ms', 'latency_p95_ms',
           'latency_max_ms', 'jitter_mean_ms', 'jitter_max_ms')


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """Rows of several runs of one layout, matched by position (same rates), as medians."""
    out = []
    for rows in zip(*runs):
        med: dict[str, Any] = {'layout': rows[0]['layout'], 'rate_hz': statistics.median(r['rate_hz'] for r in rows),
                               'peak': bool(rows[0].get('peak')), 'runs': len(rows)}
        for k in NUMBERS:
            vals = [r[k] for r in rows if not math.isnan(r[k])]
            med[k] = statistics.median(vals) if vals else math.nan
        labels = sorted({k for r in rows for k in r['cpu_cores']})
        med['cpu_cores'] = {k: statistics.median(r['cpu_cores'].get(k, 0.0) for r in rows) for k in labels}
        out.append(med)
    return out


def print_table(rows: list[dict]) -> None:
    print('| layout | target Hz | MEAN_FRAME_RATE | NUM_MISSED_FRAMES | latency p50 / p95 / max ms | '
          'jitter mean / max ms | CPU cores (graph / harness) |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        graph = sum(v for k, v in r['cpu_cores'].items() if k != '(harness)')
        target = f'{r["rate_hz"]:g}' + (' (peak)' if r.get('peak') else '')
        print(f'| {r["layout"]} | {target} | {r["MEAN_FRAME_RATE"]:.2f} | {r["NUM_MISSED_FRAMES"]:.0f} '
              f'({100 * r["missed_share"]:.0f} %) | {r["latency_p50_ms"]:.0f} / {r["latency_p95_ms"]:.0f} / '
              f'{r["latency_max_ms"]:.0f} | {r["jitter_mean_ms"]:.0f} / {r["jitter_max_ms"]:.0f} | '
              f'{graph:.2f} / {r["cpu_cores"].get("(harness)", 0.0):.2f} |')
    print('\nCPU cores per node (medians):')
    for r in rows:
        parts = ', '.join(f'{k} {v:.2f}' for k, v in sorted(r['cpu_cores'].items()))
        print(f'  {r["layout"]} {r["rate_hz"]:g} Hz: {parts}')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--bag', default='', help='bag with every device\'s camera, RF and /tf (default: record one)')
    p.add_argument('--record-seconds', type=float, default=20.0, help='length of the recorded bag (sim seconds)')
    p.add_argument('--rates', nargs='+', type=float, default=[5.0, 10.0, 20.0], help='fixed rates (Hz)')
    p.add_argument('--peak', action='store_true', help='also search the highest rate with < 5 %% missed frames')
    p.add_argument('--peak-steps', type=int, default=3, help='bisection steps of the peak search')
    p.add_argument('--layouts', nargs='+', default=['separate', 'composed'], choices=('separate', 'composed'))
    p.add_argument('--runs', type=int, default=3, help='runs per layout (the table shows medians)')
    p.add_argument('--seconds', type=float, default=15.0, help='length of one rate\'s segment')
    p.add_argument('--warmup', type=float, default=3.0, help='seconds played before the first segment')
    p.add_argument('--drain', type=float, default=1.5, help='pause around segments (s)')
    p.add_argument('--num-devices', type=int, default=4)
    p.add_argument('--model', default='', help='model folder (default: the shipped models/default)')
    p.add_argument('--start-timeout', type=float, default=180.0)
    p.add_argument('--work-dir', default='', help='logs (and the recorded bag); default: a new temporary folder')
    p.add_argument('--json', default='', help='write every run and the medians here')
    args = p.parse_args(argv)
    if any(r <= 0 for r in args.rates) or args.runs < 1 or args.seconds <= 0:
        p.error('--rates, --runs and --seconds must be positive')
    work = Path(args.work_dir or tempfile.mkdtemp(prefix='bench_realtime_'))
    work.mkdir(parents=True, exist_ok=True)
    bag = Path(args.bag) if args.bag else work / 'bag'
    if not args.bag and not bag.exists():
        record_bag(bag, args.num_devices, args.record_seconds)
    frames, static, devices = load_bag(bag, args.num_devices)
    print(f'{bag}: {len(frames)} frames of {devices}; logs in {work}', flush=True)
    runs: dict[str, list[list[dict]]] = {lay: [] for lay in args.layouts}
    for k in range(args.runs):
        for layout in args.layouts:                   # alternate, so drift on a shared machine hits both alike
            print(f'run {k + 1} {layout}', flush=True)
            runs[layout].append(run_layout(layout, args.rates, args, frames, static, devices, work))
    medians = [row for lay in args.layouts for row in median_rows(runs[lay])]
    print(f'\nK = {len(devices)}, {args.seconds:g} s per rate, medians of {args.runs} run(s)')
    print_table(medians)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({'args': vars(args), 'bag': str(bag), 'devices': devices,
                                               'runs': runs, 'median': medians}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
