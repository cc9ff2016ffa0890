"""disac_ros: an ament_python package (built with colcon) that also installs with plain pip."""
from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'disac_ros'


def share(subdir: str, pattern: str) -> tuple[str, list[str]]:
    """Install files matching pattern into share/<package>/<subdir>."""
    return (os.path.join('share', package_name, subdir), sorted(glob(pattern)))


def share_tree(root: str) -> list[tuple[str, list[str]]]:
    """Install every file under root (e.g. the shipped model folder) into share/<package>/root."""
    entries = []
    for folder, _, files in sorted(os.walk(root)):
        if files:
            entries.append((os.path.join('share', package_name, folder),
                            sorted(os.path.join(folder, f) for f in files)))
    return entries


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['disac_ros', 'disac_ros.*']),
    package_data={'disac_ros': ['py.typed']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        share('launch', 'launch/*.launch.py'),
        share('config', 'config/*.yaml'),
        share('config', 'config/*.xml'),
        share('config/scenarios', 'config/scenarios/*.yaml'),
        share('config/params', 'config/params/*.yaml'),
        share('config/families', 'config/families/*.yaml'),
        *share_tree('models'),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='disac_ros maintainers',
    maintainer_email='maintainers@disac-ros.dev',
    description='LLM-DiSAC: distributed camera+RF sensing with semantic communication for ROS 2.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            # ROS nodes
            'world_node = disac_ros.nodes.world_node:main',
            'bag_player = disac_ros.nodes.bag_player:main',
            'bag_recorder = disac_ros.nodes.bag_recorder:main',
            'device_node = disac_ros.nodes.device_node:main',
            'link_node = disac_ros.nodes.link_node:main',
            'aggregator_node = disac_ros.nodes.aggregator_node:main',
            'rf_synth_node = disac_ros.nodes.rf_synth_node:main',
            'container = disac_ros.nodes.container:main',    # several nodes in one process
            # Tools
            'disac_fleet = disac_ros.tools.fleet:main',
            'disac-bag = disac_ros.tools.bag:main',
            'disac-dataset = disac_ros.tools.dataset_cli:main',
            'disac-score-tracks = disac_ros.tools.score_tracks:main',
            'disac-train = disac_ros.tools.train_cli:main',
            'disac-eval = disac_ros.tools.eval_cli:main',
        ],
    },
)
