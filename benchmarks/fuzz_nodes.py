"""Fuzz a running fleet: hostile messages into a device node and the aggregator, then a flood.

Starts the simulated fleet (``disac_fleet``, K devices, the shipped model unless ``--model``,
renderer ``none`` by default so the CPU goes to the nodes under test) and, from an independent
node on the same domain, publishes into ``/dev0/link/feature`` (the aggregator's input) and
``/dev0/camera/image_raw`` / ``/dev0/rf/frame`` (a device's inputs) one class of bad input at a
time: wrong payload length or shape, NaN/inf/overflowing scales, NaN and absurd poses, SNR and
distance, a 50 MB payload, an unknown device id, a codec mismatch, stamps zero / 60 s old / 3 s
ahead, a replay of a captured valid packet, 0x0 / 1x1 / 4000x4000 images, a wrong encoding and an
RfFrame whose data does not match its shape. Then a flood of ``--flood-rate`` msg/s of stale
packets for ``--flood-s`` seconds while the aggregator's resident memory is sampled.

Prints, per input class, the diagnostics counters that moved, whether every node process is still
alive and whether tracks kept coming; then the flood's RSS (start / peak / end) and track rate.
Exit status 1 if a node died or tracks stopped.

    python benchmarks/fuzz_nodes.py [--num-devices 2] [--flood-rate 2000] [--flood-s 10]
"""
from __future__ import annotations

import argparse
import array
import copy
import math
from pathlib import Path
import re
import signal
import sys
import tempfile
import time

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))


def _counters(obs, name: str) -> dict[str, float]:
    from ros_helpers import diagnostic_numbers
    for _, msg in reversed(obs.messages('/diagnostics')):
        for st in msg.status:
            if st.name.endswith(f'/{name}: aggregator') or st.name.endswith(f'{name}: device'):
                return diagnostic_numbers(st)
    return {}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--num-devices', type=int, default=2)
    p.add_argument('--model', default='')
    p.add_argument('--renderer', choices=('none', 'genesis'), default='none')
    p.add_argument('--flood-rate', type=float, default=2000.0)
    p.add_argument('--flood-s', type=float, default=10.0)
    p.add_argument('--start-timeout', type=float, default=300.0)
    args = p.parse_args()

    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from disac_interfaces.msg import RfFrame, SemanticFeature, TrackedObjectArray
    from sensor_msgs.msg import Image
    from ros_helpers import Observer, Proc, new_domain_id, ros_env
    from disac_ros.nodes import conversions as cv
    from disac_ros.nodes.qos import reliable_qos, sensor_qos

    domain = new_domain_id()
    obs = Observer(domain, name='fuzzer')
    obs.subscribe('/aggregator/tracks', TrackedObjectArray, reliable_qos(100))
    obs.subscribe('/diagnostics', DiagnosticArray, reliable_qos(100))
    obs.subscribe('/dev0/link/feature', SemanticFeature, sensor_qos(10))
    cmd = [sys.executable, '-m', 'disac_ros.tools.fleet', '--num-devices', str(args.num_devices),
           '-p', f'world.renderer={args.renderer}', '--log-level', 'error']
    if args.model:
        cmd += ['-p', f'model_dir={args.model}']
    runner = Proc(cmd, ros_env(domain), Path(tempfile.gettempdir()) / 'fuzz_nodes_fleet.log')
    fleet = runner.proc
    feat_pub = obs.node.create_publisher(SemanticFeature, '/dev0/link/feature', sensor_qos(50))
    img_pub = obs.node.create_publisher(Image, '/dev0/camera/image_raw', sensor_qos(10))
    rf_pub = obs.node.create_publisher(RfFrame, '/dev0/rf/frame', sensor_qos(10))
    failed = False
    try:
        if not obs.wait_until(lambda: len(obs.messages('/aggregator/tracks')) > 5 and obs.messages('/dev0/link/feature')
                              or fleet.poll() is not None, args.start_timeout):
            print('no tracks / no features: is the fleet running? log:', runner.log)
            return 1
        pids = {m.group(1): int(m.group(2)) for m in
                re.finditer(r'started (\S+)(?: hosting .*)? \(pid (\d+)\)', runner.output())}
        valid = obs.messages('/dev0/link/feature')[-1][1]

        def now_stamp(offset: float = 0.0) -> Time:
            return cv.time_to_msg(time.time() + offset)

        def feature(**fields) -> SemanticFeature:
            m = copy.deepcopy(valid)
            m.header.stamp = now_stamp()
            for k, v in fields.items():
                if '.' in k:
                    obj, attr = k.rsplit('.', 1)
                    setattr(eval(f'm.{obj}'), attr, v)      # noqa: S307 - our own field paths
                else:
                    setattr(m, k, v)
            return m

        n = len(valid.payload)
        cases = {
            'payload too short': lambda: feature(payload=array.array('B', bytes(n - 1))),
            'wrong shape': lambda: feature(shape=array.array('I', [7, 3])),
            'NaN scale': lambda: feature(scale=math.nan),
            'inf scale': lambda: feature(scale=math.inf),
            'scale 3e38 (overflows)': lambda: feature(scale=3e38),
            'scale 1e30': lambda: feature(scale=1e30),
            'NaN pose': lambda: feature(**{'device_pose.position.x': math.nan}),
            'pose 1e30': lambda: feature(**{'device_pose.position.x': 1e30}),
            'SNR 1e30': lambda: feature(snr_db=1e30),
            'distance 1e30': lambda: feature(distance_m=1e30),
            '50 MB payload': lambda: feature(shape=array.array('I', [25 * 1024 * 1024, 2]),
                                             payload=array.array('B', bytes(50 * 1024 * 1024))),
            'unknown device': lambda: feature(device_id='evil'),
            'codec mismatch': lambda: feature(codec_version=99),
            'stamp zero': lambda: feature(**{'header.stamp': Time()}),
            'stamp 60 s old': lambda: feature(**{'header.stamp': now_stamp(-60.0)}),
            'stamp 3 s ahead': lambda: feature(**{'header.stamp': now_stamp(3.0)}),
            'replayed valid packet': lambda: copy.deepcopy(valid),
        }
        images = {'image 0x0': (0, 0, 'rgb8'), 'image 1x1': (1, 1, 'rgb8'), 'image 4000x4000': (4000, 4000, 'rgb8'),
                  'image bad encoding': (64, 64, 'yuv422_weird')}
        print(f'{"input":30}{"refused as":44}{"alive":>7}{"tracks":>8}')
        for label, make in list(cases.items()) + list(images.items()) + [('RfFrame shape/data mismatch', None)]:
            before_a, before_d = _counters(obs, 'aggregator'), _counters(obs, '/dev0/device_node')
            t0 = time.monotonic()
            for _ in range(3):
                if label in cases:
                    feat_pub.publish(make())
                elif label in images:
                    h, w, enc = make
                    img = Image(height=h, width=w, encoding=enc, step=3 * w, data=bytes(3 * w * h))
                    img.header.stamp = now_stamp()
                    img_pub.publish(img)
                    rf = RfFrame(device_id='dev0', dims=['rx', 'chirp', 'sample'],
                                 shape=array.array('I', [4, 16, 64]), iq=array.array('f', np.zeros(2 * 4 * 16 * 64)))
                    rf.header.stamp = img.header.stamp
                    rf_pub.publish(rf)
                else:
                    rf = RfFrame(device_id='dev0', dims=['rx', 'chirp', 'sample'],
                                 shape=array.array('I', [4, 16, 64]), iq=array.array('f', [0.0] * 10))
                    rf.header.stamp = now_stamp()
                    rf_pub.publish(rf)
                time.sleep(0.1)
            time.sleep(2.2)                          # one diagnostics period and a bit
            after_a, after_d = _counters(obs, 'aggregator'), _counters(obs, '/dev0/device_node')
            moved = [f'{k}+{after_a[k] - before_a.get(k, 0):g}' for k in after_a
                     if k in ('bad_payload', 'unknown_device', 'bad_codec', 'stale_stamp', 'future_stamp',
                              'replayed', 'auth_failed') and after_a[k] > before_a.get(k, 0)]
            moved += [f'dev0.{k}+{after_d[k] - before_d.get(k, 0):g}' for k in after_d
                      if k in ('bad_input', 'processing_errors', 'unpaired') and after_d[k] > before_d.get(k, 0)]
            alive = all(psutil.pid_exists(pid) for pid in pids.values()) and fleet.poll() is None
            tracks = len([1 for r, _ in obs.messages('/aggregator/tracks') if r > t0])
            failed |= not alive or tracks == 0
            print(f'{label:30}{", ".join(moved) or "-":44}{"yes" if alive else "NO":>7}{tracks:>8}')

        agg = psutil.Process(pids['/aggregator'])
        rss0 = agg.memory_info().rss / 2 ** 20
        peak = rss0
        stale = feature(**{'header.stamp': now_stamp(-60.0)})
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < args.flood_s:
            feat_pub.publish(stale)
            sent += 1
            if sent % 200 == 0:
                peak = max(peak, agg.memory_info().rss / 2 ** 20)
            delay = t0 + sent / args.flood_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        flood_s = time.monotonic() - t0
        tracks = len([1 for r, _ in obs.messages('/aggregator/tracks') if r > t0 and r < t0 + flood_s])
        time.sleep(3.0)
        rss1 = agg.memory_info().rss / 2 ** 20
        print(f'\nflood: {sent} stale packets in {flood_s:.1f} s ({sent / flood_s:.0f} msg/s); aggregator RSS '
              f'{rss0:.0f} -> peak {peak:.0f} -> {rss1:.0f} MB; tracks during the flood {tracks / flood_s:.1f} Hz')
        failed |= tracks == 0 or fleet.poll() is not None
    finally:
        runner.stop_group(signal.SIGINT)
        obs.close()
    print('RESULT:', 'a node died or tracks stopped' if failed else 'no crash, tracks kept flowing')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
