"""A lossy network on one machine: two network namespaces joined by a user-space radio.

This kernel has no ``netem`` and no ``nft``, so packet loss cannot be configured in the kernel.
Instead each namespace gets a TAP interface and one relay process (``python netns_lab.py relay``)
copies Ethernet frames between the two TAPs, dropping each frame with a seeded probability, or
every frame during a burst: a real L2 link that DDS crosses as it would cross a radio, UDP,
fragmentation and retransmissions included. A bandwidth cap is the kernel's ``tc tbf`` on both
TAPs. Addresses exist only inside the two namespaces; neighbour entries are static, so ARP does
not add losses of its own.

    with NetnsLab(loss=0.3, seed=1, rate_mbit=1.0) as lab:
        lab.popen(lab.ns_a, [...])          # a process inside namespace A
        lab.set_loss(1.0); time.sleep(2); lab.set_loss(0.3)
        print(lab.stats())                   # frames forwarded / dropped per direction

Everything it creates (two namespaces; the TAPs vanish with them; the relay) is removed on exit,
also on an exception or SIGTERM; it only touches the namespaces it made (``disac<pid>...``).
Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and /dev/net/tun; ``NetnsLab.available()`` says why not.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
from pathlib import Path
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
CLONE_NEWNET = 0x40000000
SUBNET = '10.213.{octet}.{host}'


def _run(*cmd: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed: {res.stderr.strip() or res.stdout.strip()}')
    return res.stdout


def _setns(fd: int, what: str) -> None:
    """Move this thread into the network namespace open at ``fd``."""
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f'setns({what})')


def _open_tap(netns: str, ifname: str) -> int:
    """Create TAP ``ifname`` inside ``netns`` and return its fd (valid after leaving the namespace)."""
    own = os.open('/proc/self/ns/net', os.O_RDONLY)
    target = os.open(f'/var/run/netns/{netns}', os.O_RDONLY)
    try:
        _setns(target, netns)
        fd = os.open('/dev/net/tun', os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH22x', ifname.encode(), IFF_TAP | IFF_NO_PI))
    finally:
        _setns(own, 'own namespace')
        os.close(own)
        os.close(target)
    return fd


class Radio:
    """The relay's state: loss probability, burst end, counters per direction."""

    def __init__(self, loss: float, seed: int):
        self.loss = loss
        self.rng = random.Random(seed)
        self.burst_until = 0.0
        self.counts = {d: {'forwarded': 0, 'dropped': 0, 'bytes': 0} for d in ('a_to_b', 'b_to_a')}

    def passes(self, direction: str, size: int) -> bool:
        c = self.counts[direction]
        dropped = time.monotonic() < self.burst_until or self.rng.random() < self.loss
        c['dropped' if dropped else 'forwarded'] += 1
        if not dropped:
            c['bytes'] += size
        return not dropped

    def command(self, line: str) -> None:
        """``loss P`` or ``burst SECONDS`` (100 % loss from now on for that long)."""
        word, _, value = line.strip().partition(' ')
        if word == 'loss':
            self.loss = min(max(float(value), 0.0), 1.0)
        elif word == 'burst':
            self.burst_until = time.monotonic() + float(value)


def relay_main(argv: list[str]) -> int:
    """The relay process: TAPs in both namespaces, frames copied with loss until SIGTERM/stdin EOF."""
    p = argparse.ArgumentParser(prog='netns_lab.py relay')
    p.add_argument('--ns-a', required=True)
    p.add_argument('--ns-b', required=True)
    p.add_argument('--loss', type=float, default=0.0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--stats', required=True, help='JSON counters, rewritten every 0.5 s and at exit')
    args = p.parse_args(argv)
    radio = Radio(args.loss, args.seed)
    tap_a, tap_b = _open_tap(args.ns_a, 'radio0'), _open_tap(args.ns_b, 'radio0')
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print('ready', flush=True)
    stdin = sys.stdin.fileno()
    peer = {tap_a: (tap_b, 'a_to_b'), tap_b: (tap_a, 'b_to_a')}
    buf = b''
    last_write = 0.0

    def write_stats() -> None:
        tmp = args.stats + '.tmp'
        Path(tmp).write_text(json.dumps({'loss': radio.loss, **radio.counts}))
        os.replace(tmp, args.stats)
    while not stop:
        try:
            ready, _, _ = select.select([tap_a, tap_b, stdin], [], [], 0.2)
        except InterruptedError:
            continue
        for fd in ready:
            if fd == stdin:
                chunk = os.read(stdin, 4096)
                if not chunk:
                    stop = True
                buf += chunk
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    radio.command(line.decode())
                continue
            frame = os.read(fd, 65536)
            out, direction = peer[fd]
            if radio.passes(direction, len(frame)):
                try:
                    os.write(out, frame)
                except OSError:          # the other side is down (e.g. its namespace is going)
                    pass
        if time.monotonic() - last_write > 0.5:
            write_stats()
            last_write = time.monotonic()
    write_stats()
    return 0


class NetnsLab:
    """Two namespaces (``ns_a``, ``ns_b``) joined by a lossy, optionally rate-capped radio."""

    def __init__(self, loss: float = 0.0, seed: int = 0, rate_mbit: float = 0.0, work_dir: Path | None = None,
                 tag: str = ''):
        self.loss, self.seed, self.rate_mbit = loss, seed, rate_mbit
        prefix = f'disac{os.getpid()}{tag}'
        self.ns_a, self.ns_b = prefix + 'a', prefix + 'b'
        self.addr = {self.ns_a: SUBNET.format(octet=0, host=1), self.ns_b: SUBNET.format(octet=0, host=2)}
        self.work_dir = Path(work_dir or '/tmp')
        self.stats_file = self.work_dir / f'{prefix}_radio.json'
        self.relay: subprocess.Popen | None = None
        self._made: list[str] = []
        self._old_term: Any = None

    @staticmethod
    def available() -> str:
        """'' when this machine can run the lab, else why not."""
        if os.geteuid() != 0:
            return 'needs root (network namespaces, TAP devices)'
        if not shutil.which('ip') or not shutil.which('tc'):
            return 'needs iproute2 (ip, tc)'
        if not os.path.exists('/dev/net/tun'):
            return 'needs /dev/net/tun'
        return ''

    def __enter__(self) -> 'NetnsLab':
        self._old_term = signal.signal(signal.SIGTERM, self._on_term)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _on_term(self, *_: Any) -> None:
        self.close()
        raise SystemExit(143)

    def _setup(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            _run('ip', 'netns', 'add', ns)
            self._made.append(ns)
            _run('ip', '-n', ns, 'link', 'set', 'lo', 'up')
        self.relay = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), 'relay', '--ns-a', self.ns_a, '--ns-b', self.ns_b,
             '--loss', str(self.loss), '--seed', str(self.seed), '--stats', str(self.stats_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.relay.stdout.readline() if self.relay.stdout else ''
        if line.strip() != 'ready':
            raise RuntimeError(f'the radio relay did not start (rc {self.relay.poll()})')
        macs = {}
        for ns in (self.ns_a, self.ns_b):
            _run('ip', '-n', ns, 'addr', 'add', f'{self.addr[ns]}/24', 'dev', 'radio0')
            # IPv4 only: no IPv6 neighbour discovery or router solicitations on the radio.
            _run('ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv6.conf.radio0.disable_ipv6=1')
            _run('ip', '-n', ns, 'link', 'set', 'radio0', 'up')
            # DDS discovery multicasts (239.255.0.1): out through the radio.
            _run('ip', '-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', 'radio0')
            macs[ns] = json.loads(_run('ip', '-j', '-n', ns, 'link', 'show', 'radio0'))[0]['address']
            if self.rate_mbit > 0:
                # burst >= one MTU frame per 10 ms at the rate; queue up to 200 ms before dropping.
                burst = max(3000, int(self.rate_mbit * 1e6 / 8 / 100))
                _run('tc', '-n', ns, 'qdisc', 'add', 'dev', 'radio0', 'root', 'tbf',
                     'rate', f'{self.rate_mbit}mbit', 'burst', str(burst), 'latency', '200ms')
        for ns, other in ((self.ns_a, self.ns_b), (self.ns_b, self.ns_a)):
            _run('ip', '-n', ns, 'neigh', 'replace', self.addr[other], 'lladdr', macs[other],
                 'dev', 'radio0', 'nud', 'permanent')

    def set_loss(self, loss: float) -> None:
        """Change the loss probability now."""
        self._command(f'loss {loss}')

    def burst(self, seconds: float) -> None:
        """Drop every frame, both ways, for ``seconds`` from now."""
        self._command(f'burst {seconds}')

    def _command(self, line: str) -> None:
        assert self.relay is not None and self.relay.stdin is not None
        self.relay.stdin.write(line + '\n')
        self.relay.stdin.flush()

    def stats(self) -> dict:
        """The relay's counters (frames forwarded / dropped and bytes, per direction)."""
        try:
            return json.loads(self.stats_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def command(self, ns: str, cmd: list[str]) -> list[str]:
        """``cmd`` run inside namespace ``ns``."""
        return ['ip', 'netns', 'exec', ns, *cmd]

    def close(self) -> None:
        """Stop the relay and delete the namespaces made (idempotent)."""
        if self.relay is not None and self.relay.poll() is None:
            self.relay.terminate()
            try:
                self.relay.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.wait()
        for ns in reversed(self._made):
            # Kill what is still running inside, so the namespace really goes away.
            pids = subprocess.run(['ip', 'netns', 'pids', ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(['ip', 'netns', 'del', ns], capture_output=True)
        self._made.clear()
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
            self._old_term = None


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == 'relay':
        sys.exit(relay_main(sys.argv[2:]))
    print(__doc__)
    sys.exit(2)
