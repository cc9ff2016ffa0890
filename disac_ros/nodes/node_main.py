"""The common ``main()`` of every disac_ros node: init, build, spin, clean shutdown, exit code.

Exit codes: 0 after SIGINT/SIGTERM or a normal end, 2 on a configuration error (the message names
the parameter), 1 on any other failure. A callback that was publishing while the signal shut the
context down raises an rclpy error; that is part of a clean stop, not a failure.
"""
from __future__ import annotations

import faulthandler
import signal
import sys
from typing import Callable, TypeVar

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from disac_ros.core.errors import ConfigError, DisacError

N = TypeVar('N', bound=Node)
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def run_node(factory: Callable[[], N], spin: Callable[[N], int | None] | None = None,
             args: list[str] | None = None, name: str = 'node') -> int:
    """Create the node with ``factory`` and run ``spin(node)`` (default ``rclpy.spin``)."""
    def build(nodes: list[Node]) -> None:
        nodes.append(factory())

    def spin_all(nodes: list[Node]) -> int | None:
        return (spin or rclpy.spin)(nodes[0])
    return run_nodes(build, spin_all, args=args, name=name)


def run_nodes(build: Callable[[list[Node]], None],
              spin: Callable[[list[Node]], int | None], args: list[str] | None = None,
              name: str = 'node') -> int:
    """Run several nodes in one process: ``build`` appends them to a list (so the ones already
    built are cleaned up when a later one fails), ``spin`` runs them."""
    rclpy.init(args=args)
    # `kill -USR1 <pid>` prints every thread's Python stack to stderr: how to see where a node
    # hangs (disac_fleet sends it to a node that ignores SIGINT before escalating).
    if hasattr(signal, 'SIGUSR1'):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    nodes: list[Node] = []
    code = EXIT_OK
    try:
        build(nodes)
        code = spin(nodes) or EXIT_OK
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
            raise              # a real failure: traceback and exit 1
        # The context was shut down by a signal while a callback was publishing: a clean stop.
    finally:
        for node in reversed(nodes):
            close = getattr(node, 'close', None)
            # Destroy first: afterwards log lines go to the console only, not to the /rosout of a
            # context a signal may already have shut down. ``close`` must not use the node.
            node.destroy_node()
            if close is not None:
                close()
        rclpy.try_shutdown()
    return code
