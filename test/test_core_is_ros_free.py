"""disac_ros/core imports no ROS module (DESIGN.md section 3): checked statically and at run time."""
import ast
from pathlib import Path
import subprocess
import sys

CORE = Path(__file__).resolve().parents[1] / 'disac_ros' / 'core'
ROS_PREFIXES = ('rclpy', 'rcl_interfaces', 'disac_interfaces', 'launch', 'launch_ros', 'tf2', 'rosidl',
                'ament_index', 'builtin_interfaces', 'rosgraph_msgs', 'rmw', 'rcutils', 'message_filters',
                'cv_bridge')


def is_ros_module(name: str) -> bool:
    top = name.split('.')[0]
    return top.endswith('_msgs') or top.endswith('_srvs') or any(
        top == p or top.startswith(p + '_') or top.startswith(p) and p in ('tf2', 'rosidl', 'ament_index')
        for p in ROS_PREFIXES)


def ros_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(node.func, 'id', '')) in (
                'import_module', '__import__') and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        found += [f'{path.relative_to(CORE.parent.parent)}:{node.lineno}: {n}' for n in names if is_ros_module(n)]
    return found


def test_the_checker_catches_ros_imports(tmp_path):
    assert all(is_ros_module(m) for m in ('rclpy.node', 'sensor_msgs.msg', 'disac_interfaces.msg',
                                          'launch_ros.actions', 'launch', 'tf2_ros', 'rosidl_runtime_py',
                                          'ament_index_python.packages', 'diagnostic_msgs'))
    assert not any(is_ros_module(m) for m in ('numpy', 'yaml', 'rosbags.rosbag2', 'torch', 'launcher'))


def test_core_source_imports_no_ros_module():
    files = sorted(CORE.rglob('*.py'))
    assert len(files) > 3
    offenders = [hit for f in files for hit in ros_imports(f)]
    assert offenders == [], 'disac_ros/core must stay ROS-free:\n' + '\n'.join(offenders)


def test_importing_core_loads_no_ros_module():
    # Run time check in a fresh interpreter: catches indirect imports through third-party code.
    modules = sorted('disac_ros.core.' + '.'.join(p.relative_to(CORE).with_suffix('').parts)
                     for p in CORE.rglob('*.py') if p.name != '__init__.py')
    code = (
        'import importlib, sys\n'
        f'for m in {modules!r}:\n'
        '    try:\n'
        '        importlib.import_module(m)\n'
        '    except ImportError as e:\n'
        '        print("skip", m, e, file=sys.stderr)\n'
        f'bad = sorted(m for m in sys.modules if m.split(".")[0] in {list(ROS_PREFIXES)!r} '
        'or m.split(".")[0].endswith("_msgs"))\n'
        'print("\\n".join(bad))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                         cwd=CORE.parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '', f'importing disac_ros.core loaded ROS modules: {out.stdout}'
