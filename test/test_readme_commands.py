"""The README's commands work as written after ``. scripts/env.sh`` (no 'command not found').

Every command the README's bash blocks start (disac_fleet, disac-bag, disac-dataset, ros2, ...)
must resolve on the PATH the README's ``. scripts/env.sh`` gives, and answer ``--help``; the
cheap ones run verbatim (``disac_fleet --dry-run``, ``ros2 run ... --help``).
"""
from __future__ import annotations

from pathlib import Path
import re
import shlex
import subprocess

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
# Not ours or not a command: shell builtins, setup steps for a ROS distro machine, paths.
SKIP = {'cd', '.', 'bash', 'python3', 'colcon', 'scripts/make_sample_bag.sh', 'git'}


def _bash_blocks() -> list[str]:
    return re.findall(r'```bash\n(.*?)```', README.read_text(), flags=re.S)


def _commands() -> set[str]:
    names = set()
    for block in _bash_blocks():
        for line in block.replace('\\\n', ' ').splitlines():
            line = line.split('#')[0].strip()
            for part in re.split(r'&&|\|', line):
                words = shlex.split(part) if part.strip() else []
                if words and words[0] not in SKIP and not words[0].startswith(('~', '$', '.')):
                    names.add(words[0])
    return names


def _in_env(cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', '-c', f'. scripts/env.sh && {cmd}'], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_readme_names_its_commands():
    assert {'disac_fleet', 'disac-bag', 'disac-dataset', 'disac-score-tracks', 'ros2'} <= _commands()


@pytest.mark.skipif(not (REPO / 'install' / 'setup.bash').is_file(), reason='needs scripts/setup.sh')
@pytest.mark.parametrize('command', sorted(_commands()))
def test_every_readme_command_is_on_path_and_answers_help(command):
    if command == 'ros2':
        from ros_helpers import require_ros2_tools
        require_ros2_tools('ros2cli')
    r = _in_env(f'command -v {shlex.quote(command)} && {shlex.quote(command)} --help')
    assert r.returncode == 0, f'{command}: {r.stdout[-2000:]}{r.stderr[-2000:]}'


@pytest.mark.skipif(not (REPO / 'install' / 'setup.bash').is_file(), reason='needs scripts/setup.sh')
def test_cheap_readme_commands_run_verbatim():
    r = _in_env('disac_fleet --dry-run --namespace site1')
    assert r.returncode == 0 and '/site1/aggregator' in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    # `ros2 run disac_ros aggregator_node --help` runs this console script (on PATH after env.sh).
    r = _in_env('aggregator_node --help')
    assert r.returncode == 0 and 'score_threshold' in r.stdout and 'd score_threshold' in r.stdout, r.stderr
