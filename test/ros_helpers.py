"""Shared utilities for tests that run real ROS processes.

- ``ros_env``: an environment for child processes with its own ROS_DOMAIN_ID, discovery kept on
  localhost, and this checkout first on PYTHONPATH.
- ``Proc``: a child process (venv python) with its output in a log file, stopped with SIGINT and
  killed on failure; ``Proc.tail()`` for assertion messages.
- ``Observer``: an rclpy node in the pytest process (own Context on the test's domain, executor
  thread) that subscribes, records (receive time, message) and waits for matches.

Every wait has a timeout; nothing sleeps a fixed time to "let things settle".
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
# Genesis compiles kernels on the first scene build of a machine (~80 s), later ~5 s.
WORLD_START_TIMEOUT_S = float(os.environ.get('DISAC_TEST_WORLD_TIMEOUT', '240'))

_rng = random.Random(os.getpid() * 7919 + int(time.time()))


_DOMAIN_LOCK_DIR = Path(os.environ.get('DISAC_TEST_DOMAIN_LOCKS', '/tmp/disac_ros_test_domains'))
_held_domain_locks: list[Any] = []     # open lock files: released when this process exits


def new_domain_id() -> int:
    """A domain id for one test, unused by any other test process on this machine.

    FastDDS allows 0..232; 1..100 are left to interactive use. Concurrent pytest sessions on one
    host (several developers, CI) would otherwise collide now and then and see each other's
    traffic, so each id is reserved with an exclusive lock file held until this process exits.
    """
    _DOMAIN_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    candidates = list(range(101, 233))
    _rng.shuffle(candidates)
    for domain in candidates:
        f = open(_DOMAIN_LOCK_DIR / f'{domain}.lock', 'w')  # noqa: SIM115 - held open on purpose
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _held_domain_locks.append(f)
        return domain
    raise RuntimeError(f'no free ROS domain id in 101..232 (locks in {_DOMAIN_LOCK_DIR})')


def fleet_subset_config(folder: Path, node_names: list[str]) -> Path:
    """Write config/fleet.yaml reduced to the named node entries (for tests of one part of the graph)."""
    import yaml
    cfg = yaml.safe_load((REPO / 'config' / 'fleet.yaml').read_text())
    cfg['nodes'] = [n for n in cfg['nodes'] if n['name'] in node_names]
    for n in cfg['nodes']:          # relative to config/, where the reduced file does not live
        if n.get('params_file') and not Path(n['params_file']).is_absolute():
            n['params_file'] = str(REPO / 'config' / n['params_file'])
    missing = set(node_names) - {n['name'] for n in cfg['nodes']}
    assert not missing, f'config/fleet.yaml has no node named {sorted(missing)}'
    path = Path(folder) / ('fleet_' + '_'.join(node_names) + '.yaml')
    path.write_text(yaml.safe_dump(cfg))
    return path


def diagnostic_numbers(status: Any) -> dict[str, float]:
    """The numeric values of one DiagnosticStatus (rclpy or rosbags message) by key; text values skipped."""
    out: dict[str, float] = {}
    for kv in status.values:
        try:
            out[kv.key] = float(kv.value)
        except ValueError:
            pass
    return out


def ros_env(domain_id: int, **extra: str) -> dict[str, str]:
    """Environment for ROS child processes of one test."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.pop('ROS_LOCALHOST_ONLY', None)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
                                                       if p and p != str(REPO)])
    env['PYTHONUNBUFFERED'] = '1'
    fastdds = REPO / 'config' / 'fastdds_shm.xml'
    if fastdds.is_file():
        env.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(fastdds))
    env.update(extra)
    return env


class Proc:
    """A child process whose stdout+stderr go to ``log``; always stopped by ``stop``/``kill``."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO):
        self.args = args
        self.log = log
        self._file = open(log, 'wb')
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    @classmethod
    def python(cls, module: str, *args: str, env: dict[str, str], log: Path) -> 'Proc':
        """``<venv python> -m module args...``."""
        return cls([sys.executable, '-m', module, *args], env, log)

    def tail(self, n: int = 60) -> str:
        """The last ``n`` lines of output, for failure messages."""
        try:
            lines = self.log.read_text(errors='replace').splitlines()
        except FileNotFoundError:
            return ''
        return '\n'.join(lines[-n:])

    def output(self) -> str:
        """All output so far."""
        return self.log.read_text(errors='replace')

    def wait_for_output(self, text: str, timeout: float) -> bool:
        """True once ``text`` appears in the output (False on timeout or exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                return text in self.output()
            time.sleep(0.1)
        return False

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int | None:
        """Send ``sig`` and wait; kill the whole process group if it does not exit. Returns rc."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self._file.close()
        return self.proc.returncode

    def stop_group(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int | None:
        """What a terminal's Ctrl-C does: ``sig`` to the whole process group, wait, SIGKILL the
        group if it does not end. Returns the exit code (None when it had to be killed)."""
        try:
            os.killpg(self.proc.pid, sig)
            return self.proc.wait(timeout=timeout)
        except ProcessLookupError:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        finally:
            self._file.close()

    def kill(self) -> None:
        """SIGKILL the process group (the runner's children are in their own groups: PDEATHSIG)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self._file.close()


class Observer:
    """An rclpy node in the test process, on its own Context and domain, spun by a thread."""

    def __init__(self, domain_id: int, name: str = 'test_observer'):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.received: dict[str, list[tuple[float, Any]]] = {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self) -> None:
        while self._running and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - shutting down
                if self._running:
                    raise

    def subscribe(self, topic: str, msg_type: type, qos: Any, raw: bool = False) -> None:
        """Record every message on ``topic`` as (monotonic receive time, message or bytes)."""
        self.received.setdefault(topic, [])

        def cb(msg: Any, topic: str = topic) -> None:
            with self.lock:
                self.received[topic].append((time.monotonic(), msg))
        self.node.create_subscription(msg_type, topic, cb, qos, raw=raw)

    def messages(self, topic: str) -> list[tuple[float, Any]]:
        """A copy of what arrived on ``topic``."""
        with self.lock:
            return list(self.received.get(topic, []))

    def clear(self, topics: list[str] | None = None) -> None:
        """Forget what was received (on ``topics``, default all)."""
        with self.lock:
            for t, v in self.received.items():
                if topics is None or t in topics:
                    v.clear()

    def wait_until(self, predicate: Callable[[], bool], timeout: float, period: float = 0.05) -> bool:
        """Poll ``predicate`` until True or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(period)
        return predicate()

    def wait_for_messages(self, topics: list[str], count: int, timeout: float,
                          alive: Proc | None = None) -> bool:
        """Until every topic has ``count`` messages (stops early if ``alive`` exits)."""
        return self.wait_until(lambda: all(len(self.messages(t)) >= count for t in topics)
                               or (alive is not None and alive.proc.poll() is not None), timeout) and all(
            len(self.messages(t)) >= count for t in topics)

    def wait_for_publishers(self, topics: list[str], timeout: float) -> bool:
        """Until every topic has a matched publisher."""
        return self.wait_until(lambda: all(self.node.count_publishers(t) > 0 for t in topics), timeout)

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        import rclpy
        self._running = False
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


# The real upstream launch / ros2 CLI come with ROS apt; on development and CI machines they come
# from this folder (scripts/setup.sh installs them). Their tests skip only where it is absent.
ROS2_TOOLS_DIR = Path(os.environ.get('DISAC_ROS2_TOOLS', str(REPO.parent / 'shared' / 'ros2-tools')))


def require_ros2_tools(*modules: str) -> None:
    """Import ``modules`` or skip the calling test module, with the reason; but where
    ``ROS2_TOOLS_DIR`` exists a missing module is a setup failure, not a skip."""
    import importlib
    import pytest
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            if ROS2_TOOLS_DIR.is_dir():
                pytest.fail(f'{module} is not importable although {ROS2_TOOLS_DIR} exists '
                            f'(scripts/setup.sh installs it): {exc}', pytrace=False)
            pytest.skip(f'{module} is not installed (ROS apt, or {ROS2_TOOLS_DIR} for '
                        f'scripts/setup.sh); the fallback runner tests cover the same graph',
                        allow_module_level=True)
