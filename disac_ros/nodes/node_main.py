"""The common ``main()`` of every disac_ros node: help, init, build, spin, clean shutdown, exit code.

Exit codes: 0 after SIGINT/SIGTERM or a normal end, 2 on a configuration error (the message names
the parameter), 1 on any other failure. A callback that was publishing while the signal shut the
context down raises an rclpy error; that is part of a clean stop, not a failure.

Shutdown: a terminal's Ctrl-C reaches every process of the group *and* ``ros2 launch`` forwards its
own SIGINT, so a node usually gets two. The first SIGINT or SIGTERM shuts the ROS context down (no
``KeyboardInterrupt`` raised into whatever callback runs: a bag write or a publish finishes), which
ends the spin; from then on both signals are ignored so the cleanup (destroy the nodes, ``close()``
them: the world closes its simulator, the recorder its bag) runs to the end, and the process then
ends at once with ``os._exit`` instead of a slow interpreter teardown of torch and Genesis (seconds
on a loaded 2-core machine, past launch's SIGTERM deadline).

``<executable> --help`` prints the node's description and parameters and exits 0, without ROS.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import sys
from typing import Callable, Sequence, TypeVar

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from disac_ros.core.errors import ConfigError, DisacError
from disac_ros.nodes.params import Param, usage

N = TypeVar('N', bound=Node)
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def run_node(factory: Callable[[], N], spin: Callable[[N], int | None] | None = None,
             args: list[str] | None = None, name: str = 'node', params: Sequence[Param] = (),
             doc: str = '', exit_process: bool = True) -> int:
    """Create the node with ``factory`` and run ``spin(node)`` (default ``rclpy.spin``)."""
    def build(nodes: list[Node]) -> None:
        nodes.append(factory())

    def spin_all(nodes: list[Node]) -> int | None:
        return (spin or rclpy.spin)(nodes[0])
    return run_nodes(build, spin_all, args=args, name=name, params=params, doc=doc,
                     exit_process=exit_process)


def wants_help(args: Sequence[str] | None) -> bool:
    """True when -h/--help is among the arguments before ``--ros-args`` (``args[0]`` is the program)."""
    argv = list(sys.argv if args is None else args)[1:]
    own = argv[:argv.index('--ros-args')] if '--ros-args' in argv else argv
    return '-h' in own or '--help' in own


def run_nodes(build: Callable[[list[Node]], None],
              spin: Callable[[list[Node]], int | None], args: list[str] | None = None,
              name: str = 'node', params: Sequence[Param] = (), doc: str = '',
              exit_process: bool = True) -> int:
    """Run several nodes in one process: ``build`` appends them to a list (so the ones already
    built are cleaned up when a later one fails), ``spin`` runs them.

    With ``exit_process`` (the default for executables) the process ends here with the exit code
    once everything is cleaned up; otherwise the code is returned.
    """
    if wants_help(args):
        print(usage(name, doc, params))
        return _finish(EXIT_OK, exit_process)
    # Before rclpy.init: rclpy's own handler wakes the executors, then chains to this one.
    _stop_on_signals()
    rclpy.init(args=args)
    # `kill -USR1 <pid>` prints every thread's Python stack to stderr: how to see where a node
    # hangs (disac_fleet sends it to a node that ignores SIGINT before escalating).
    if hasattr(signal, 'SIGUSR1'):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    nodes: list[Node] = []
    code = EXIT_OK
    try:
        try:
            build(nodes)
            if nodes:
                _stop_guard.append(nodes[0].create_guard_condition(rclpy.try_shutdown))
            code = spin(nodes) or EXIT_OK
        finally:
            _ignore_stop_signals()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as exc:
        print(f'{name}: configuration error: {exc}', file=sys.stderr)
        code = EXIT_CONFIG
    except DisacError as exc:
        print(f'{name}: {exc}', file=sys.stderr)
        code = EXIT_FAILED
    except Exception:
        if rclpy.ok():
            import traceback
            traceback.print_exc()      # a real failure: traceback and exit 1
            code = EXIT_FAILED
        # else: the context was shut down by a signal while a callback was publishing: a clean stop.
    finally:
        _ignore_stop_signals()
        for node in reversed(nodes):
            code = _close_node(node, name, code)
        rclpy.try_shutdown()
    return _finish(code, exit_process)


# Set once the nodes exist: a guard condition whose callback shuts the context down, so a signal
# stops the executor between two callbacks (shutting down inside one crashed the world's renderer).
_stop_guard: list = []


def _stop_on_signals() -> None:
    """The first SIGINT/SIGTERM shuts the context down; later ones are ignored (see module doc)."""
    def stop(signum: int, frame: object) -> None:
        _ignore_stop_signals()
        if _stop_guard:
            _stop_guard[0].trigger()
        else:
            rclpy.try_shutdown()        # still building: no executor runs a callback yet
    _stop_guard.clear()
    _set_stop_signals(stop)


def _ignore_stop_signals() -> None:
    """From the first stop on, further SIGINT/SIGTERM must not interrupt the cleanup."""
    _set_stop_signals(signal.SIG_IGN)


def _set_stop_signals(handler: Callable | int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):
            pass                        # not the main thread (a node hosted by a test): rclpy's defaults stay


def _close_node(node: Node, name: str, code: int) -> int:
    close = getattr(node, 'close', None)
    try:
        # Destroy first: afterwards log lines go to the console only, not to the /rosout of a
        # context a signal may already have shut down. ``close`` must not use the node.
        node.destroy_node()
        if close is not None:
            close()
    except Exception as exc:          # one node's cleanup must not skip the others'
        print(f'{name}: cleanup of {node.get_name()} failed: {exc!r}', file=sys.stderr)
        return code or EXIT_FAILED
    return code


def _finish(code: int, exit_process: bool) -> int:
    if not exit_process:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
