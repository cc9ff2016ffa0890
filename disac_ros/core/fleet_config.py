"""Fleet YAML -> the list of nodes to start. ROS-free; used by launch/fleet.launch.py and disac_fleet.

A fleet file (``config/fleet.yaml``) looks like::

    fleet:
      num_devices: 4                 # default K; --num-devices / num_devices:=K override
      device_ids: [dev0, dev1, dev2, dev3]   # optional; else device_id_format
      device_id_format: 'dev{index}' # ids for K devices when device_ids is absent or too short
      source: sim                    # default source: sim | bag | external
    nodes:
      - name: world                  # ROS node name (placeholders allowed)
        package: disac_ros           # default disac_ros
        executable: world_node       # console script of the package
        namespace: ''                # placeholders allowed, e.g. '/{device_id}'
        per_device: false            # true: one node per device id
        sources: [sim]               # start only for these sources (absent: every source)
        params_file: params/world.yaml   # a ROS 2 parameters file applied first (relative to the
                                     # fleet YAML's folder; placeholders allowed)
        parameters: {num_devices: '{num_devices}'}
        remappings: {from: to}       # or a list of [from, to] pairs

Placeholders in names, namespaces, remappings and string parameter values: ``{device_id}``,
``{index}`` (per-device nodes only), ``{num_devices}``, ``{source}``, ``{bag}``, ``{scenario}``
(the absolute path of ``FleetOptions.scenario``, '' when unset), ``{fleet_key_file}`` (a key file
the front end made for this run, see ``write_fleet_key``; '' when none) and ``{fleet_auth}``
(true when there is one). A string value
that is exactly one placeholder takes the placeholder's type (``'{num_devices}'`` -> int 4), and
``'{device_ids}'`` becomes the list of device ids. Null and empty-list values are dropped (a ROS
parameters file cannot type them), so the node keeps its default.

A scenario (``FleetOptions.scenario``: ``disac_fleet --scenario FILE`` / ``scenario:=FILE``) brings its
own devices: the device ids become the scenario's ``devices[*].id`` in scenario order (``fleet.device_ids``
and ``device_id_format`` are then ignored), K defaults to their count (an explicit K keeps the first
K), and ``{scenario}`` is the file's absolute path (the shipped fleet.yaml gives it to the world).

``build_fleet`` is the single pure function both front ends call, so they start the same nodes.
"""
from __future__ import annotations

import copy

from dataclasses import dataclass, field
import os
from pathlib import Path
import re
from typing import Any, Mapping, Sequence

import yaml

from disac_ros.core.errors import ConfigError

SOURCES: tuple[str, ...] = ('sim', 'bag', 'external')
DEFAULT_NUM_DEVICES = 4
DEFAULT_DEVICE_ID_FORMAT = 'dev{index}'
_NODE_KEYS = {'name', 'package', 'executable', 'namespace', 'per_device', 'sources', 'parameters',
              'remappings', 'module', 'params_file'}
_SOURCE_KEY = '_source'               # load_fleet_yaml records the file here (relative params_file)
_FLEET_KEYS = {'num_devices', 'device_ids', 'device_id_format', 'source'}
# Absolute topics every node shares; a namespaced fleet remaps them under its namespace.
NAMESPACED_GLOBAL_TOPICS: tuple[str, ...] = ('/tf', '/tf_static', '/clock')
_PLACEHOLDER = re.compile(r'\{([a-z_]+)\}')
_ROS_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: what ``launch_ros.actions.Node`` and the runner both need."""

    package: str
    executable: str
    name: str
    namespace: str                       # absolute ('/' for the root)
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    params_files: tuple[str, ...] = ()   # extra ROS params files, applied after ``parameters``
    node_params_files: tuple[str, ...] = ()  # the entry's own params_file, applied before ``parameters``
    module: str | None = None            # python module with main(), for the runner (python -m)

    @property
    def fqn(self) -> str:
        """Fully qualified node name, e.g. '/dev0/device_node'."""
        return self.namespace.rstrip('/') + '/' + self.name


@dataclass(frozen=True)
class FleetOptions:
    """The knobs a user turns on the command line / launch arguments."""

    num_devices: int | None = None       # None: the YAML's fleet.num_devices
    source: str | None = None            # None: the YAML's fleet.source
    bag: str = ''                        # bag directory, required for source 'bag'
    namespace: str = ''                  # prefix for every node's namespace
    use_sim_time: bool | None = None     # None: leave each node's own setting
    params_files: tuple[str, ...] = ()   # extra ROS params files for every node
    overrides: Mapping[str, Any] = field(default_factory=dict)  # '<node name>.<param>' or '<param>'
    scenario: str = ''                   # scenario YAML: its device ids, and '{scenario}' for the world
    fleet_key_file: str = ''             # '{fleet_key_file}': the run's signing key (write_fleet_key)


def load_fleet_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a fleet YAML file; ConfigError names the file on a syntax error."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError('config', f'fleet file not found: {p}') from None
    except yaml.YAMLError as exc:
        raise ConfigError('config', f'invalid YAML: {exc}', source=str(p)) from None
    if not isinstance(data, dict):
        raise ConfigError('<root>', 'expected a mapping with a "nodes" list', source=str(p))
    data[_SOURCE_KEY] = str(p.resolve())
    return data


def device_ids_for(fleet: Mapping[str, Any], num_devices: int) -> list[str]:
    """The first ``num_devices`` ids: from ``fleet.device_ids``, then ``device_id_format``."""
    ids = list(fleet.get('device_ids') or [])
    fmt = fleet.get('device_id_format', DEFAULT_DEVICE_ID_FORMAT)
    if not isinstance(fmt, str) or '{index}' not in fmt:
        raise ConfigError('fleet.device_id_format', f'must be a string containing {{index}}, got {fmt!r}')
    for i, dev in enumerate(ids):
        if not isinstance(dev, str) or not _ROS_NAME.match(dev):
            raise ConfigError(f'fleet.device_ids[{i}]', f'not a valid ROS name token: {dev!r}')
    if len(set(ids)) != len(ids):
        raise ConfigError('fleet.device_ids', f'duplicate ids in {ids}')
    while len(ids) < num_devices:
        ids.append(fmt.format(index=len(ids)))
    return ids[:num_devices]


def scenario_device_ids(path: str | os.PathLike[str]) -> list[str]:
    """The device ids of a scenario YAML, in scenario order (the scenario is fully validated).

    ConfigError (field ``scenario``) naming the file when it is missing, not YAML or invalid.
    """
    from disac_ros.core.scenario import load_scenario   # ROS-free; only needed with a scenario

    p = Path(path)
    if not p.is_file():
        raise ConfigError('scenario', f'scenario file not found: {p}')
    try:
        return list(load_scenario(p).device_ids)
    except ConfigError as exc:                # ScenarioError: its message names file and field
        text = str(exc)
        raise ConfigError('scenario', f'invalid scenario: {text}' if str(p) in text
                          else f'invalid scenario {p}: {text}') from None


def _fleet_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    fleet = config.get('fleet') or {}
    if not isinstance(fleet, Mapping):
        raise ConfigError('fleet', f'expected a mapping, got {type(fleet).__name__}')
    for key in fleet:
        if key not in _FLEET_KEYS:
            raise ConfigError(f'fleet.{key}', f'unknown key; expected one of {", ".join(sorted(_FLEET_KEYS))}')
    return fleet


def _devices(fleet: Mapping[str, Any], options: FleetOptions) -> tuple[int, list[str], str]:
    """(K, the K device ids, the scenario's absolute path or '') for ``options``."""
    scenario = str(Path(options.scenario).resolve()) if options.scenario else ''
    scenario_ids = scenario_device_ids(scenario) if scenario else None
    if options.num_devices is not None:
        num_devices = options.num_devices
    elif scenario_ids is not None:
        num_devices = len(scenario_ids)
    else:
        num_devices = fleet.get('num_devices', DEFAULT_NUM_DEVICES)
    if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 1:
        raise ConfigError('num_devices', f'must be an integer >= 1, got {num_devices!r}')
    if scenario_ids is not None and num_devices > len(scenario_ids):
        raise ConfigError('num_devices', f'{num_devices} devices asked for, but the scenario {scenario} '
                                         f'defines {len(scenario_ids)} ({", ".join(scenario_ids)})')
    device_ids = (scenario_ids[:num_devices] if scenario_ids is not None
                  else device_ids_for(fleet, num_devices))
    return num_devices, device_ids, scenario


def fleet_device_ids(config: Mapping[str, Any], options: FleetOptions = FleetOptions()) -> list[str]:
    """The device ids ``build_fleet(config, options)`` uses, in order (``{device_ids}``)."""
    return _devices(_fleet_section(config), options)[1]


def build_fleet(config: Mapping[str, Any], options: FleetOptions = FleetOptions()) -> list[NodeSpec]:
    """Expand a parsed fleet YAML into the node specs for ``options`` (pure function but for
    reading ``options.scenario``)."""
    fleet = _fleet_section(config)
    num_devices, device_ids, scenario = _devices(fleet, options)
    source = options.source or fleet.get('source', 'sim')
    if source not in SOURCES:
        raise ConfigError('source', f'expected one of {", ".join(SOURCES)}, got {source!r}')
    if source == 'bag' and not options.bag:
        raise ConfigError('bag', 'source "bag" needs a bag directory (--bag DIR / bag:=DIR)')
    nodes = config.get('nodes')
    if not isinstance(nodes, list) or not nodes:
        raise ConfigError('nodes', 'expected a non-empty list of node entries')

    base_values = {'num_devices': num_devices, 'source': source, 'bag': options.bag,
                   'device_ids': device_ids, 'scenario': scenario, _SOURCE_KEY: config.get(_SOURCE_KEY, ''),
                   'fleet_key_file': options.fleet_key_file, 'fleet_auth': bool(options.fleet_key_file)}
    specs: list[NodeSpec] = []
    for i, entry in enumerate(nodes):
        where = f'nodes[{i}]'
        if not isinstance(entry, Mapping):
            raise ConfigError(where, f'expected a mapping, got {type(entry).__name__}')
        for key in entry:
            if key not in _NODE_KEYS:
                raise ConfigError(f'{where}.{key}', f'unknown key; expected one of {", ".join(sorted(_NODE_KEYS))}')
        for key in ('name', 'executable'):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ConfigError(f'{where}.{key}', 'required non-empty string')
        sources = entry.get('sources', list(SOURCES))
        if not isinstance(sources, list) or any(s not in SOURCES for s in sources):
            raise ConfigError(f'{where}.sources', f'expected a list drawn from {", ".join(SOURCES)}, got {sources!r}')
        if source not in sources:
            continue
        per_device = entry.get('per_device', False)
        if not isinstance(per_device, bool):
            raise ConfigError(f'{where}.per_device', f'expected true or false, got {per_device!r}')
        instances = ([dict(base_values, device_id=d, index=k) for k, d in enumerate(device_ids)]
                     if per_device else [dict(base_values)])
        for values in instances:
            specs.append(_expand(entry, values, options, where))

    for spec in specs:
        if scenario and spec.executable == 'world_node' and spec.parameters.get('scenario') != scenario:
            # e.g. an older fleet YAML with scenario: '': the world would simulate other devices.
            raise ConfigError('scenario', f'{spec.fqn} would not simulate {scenario} (its scenario '
                                          f'parameter is {spec.parameters.get("scenario")!r}); give it '
                                          f"scenario: '{{scenario}}' in the fleet YAML")
    seen: dict[str, int] = {}
    for k, spec in enumerate(specs):
        if spec.fqn in seen:
            raise ConfigError('nodes', f'two nodes would be named {spec.fqn}; give per-device nodes '
                                       f'a {{device_id}} in the name or namespace')
        seen[spec.fqn] = k
    return specs


def _expand(entry: Mapping[str, Any], values: Mapping[str, Any], options: FleetOptions, where: str) -> NodeSpec:
    name = _substitute(entry['name'], values, f'{where}.name')
    if not _ROS_NAME.match(name):
        raise ConfigError(f'{where}.name', f'not a valid ROS node name: {name!r}')
    namespace = _join_namespace(options.namespace,
                                _substitute(entry.get('namespace', '') or '', values, f'{where}.namespace'))
    params_in = entry.get('parameters') or {}
    if not isinstance(params_in, Mapping):
        raise ConfigError(f'{where}.parameters', f'expected a mapping, got {type(params_in).__name__}')
    parameters = {str(k): _substitute_value(v, values, f'{where}.parameters.{k}') for k, v in params_in.items()}
    if options.use_sim_time is not None:
        parameters['use_sim_time'] = bool(options.use_sim_time)
    elif values.get('source') == 'bag' and entry['executable'] != 'bag_player':
        # A bag's stamps are hours old on the wall clock: replay runs on the player's /clock.
        parameters.setdefault('use_sim_time', True)
    for key, value in options.overrides.items():
        node_name, _, param = key.rpartition('.')
        if not node_name or node_name == name:
            parameters[param] = value
    # A ROS parameters file cannot type an empty list or a null: leave them out (node default).
    parameters = {k: v for k, v in parameters.items() if v is not None and v != []}
    remap_in = entry.get('remappings') or []
    if isinstance(remap_in, Mapping):
        remap_in = list(remap_in.items())
    remappings = []
    for j, pair in enumerate(remap_in):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(f'{where}.remappings[{j}]', f'expected [from, to], got {pair!r}')
        remappings.append((_substitute(str(pair[0]), values, f'{where}.remappings[{j}]'),
                           _substitute(str(pair[1]), values, f'{where}.remappings[{j}]')))
    if options.namespace.strip('/'):
        # Two fleets on one domain must not hear each other's poses or clock: the global topics
        # move under the namespace too (per-node topics are relative already).
        prefix = '/' + options.namespace.strip('/')
        taken = {src for src, _ in remappings}
        remappings += [(g, prefix + g) for g in NAMESPACED_GLOBAL_TOPICS if g not in taken]
    package = entry.get('package', 'disac_ros')
    module = entry.get('module')
    if module is None and package == 'disac_ros':
        module = f'disac_ros.nodes.{entry["executable"]}'
    node_files: tuple[str, ...] = ()
    if entry.get('params_file'):
        if not isinstance(entry['params_file'], str):
            raise ConfigError(f'{where}.params_file', f'expected a file path, got {entry["params_file"]!r}')
        path = Path(_substitute(entry['params_file'], values, f'{where}.params_file'))
        if not path.is_absolute():
            path = (Path(values[_SOURCE_KEY]).parent if values.get(_SOURCE_KEY) else Path.cwd()) / path
        if not path.is_file():
            raise ConfigError(f'{where}.params_file', f'not found: {path}')
        node_files = (str(path),)
    return NodeSpec(package=package, executable=entry['executable'], name=name, namespace=namespace,
                    parameters=parameters, remappings=tuple(remappings),
                    params_files=tuple(options.params_files), module=module, node_params_files=node_files)


def _substitute(text: str, values: Mapping[str, Any], where: str) -> str:
    def repl(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise ConfigError(where, f'unknown placeholder {{{key}}} here; available: '
                                     f'{", ".join("{" + k + "}" for k in sorted(values) if not k.startswith("_"))}')
        v = values[key]
        return ','.join(v) if isinstance(v, list) else str(v)
    return _PLACEHOLDER.sub(repl, text)


def _substitute_value(value: Any, values: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, str):
        m = _PLACEHOLDER.fullmatch(value)
        if m and m.group(1) in values:
            # Keep the type ('{num_devices}' -> 4); copy lists so no two nodes share one object,
            # which yaml.dump would write as an alias that rcl refuses to parse.
            return copy.deepcopy(values[m.group(1)])
        return _substitute(value, values, where)
    if isinstance(value, list):
        return [_substitute_value(v, values, f'{where}[{i}]') for i, v in enumerate(value)]
    return value


def _join_namespace(prefix: str, ns: str) -> str:
    parts = [p for p in (prefix.strip('/') + '/' + ns.strip('/')).split('/') if p]
    for p in parts:
        if not _ROS_NAME.match(p):
            raise ConfigError('namespace', f'invalid namespace token {p!r}')
    return '/' + '/'.join(parts)


def params_file_content(specs: Sequence[NodeSpec]) -> dict[str, Any]:
    """A ROS 2 parameters-file mapping ``{fqn: {ros__parameters: {...}}}`` for ``specs``."""
    return {s.fqn: {'ros__parameters': dict(s.parameters)} for s in specs}


def write_fleet_key(directory: str | os.PathLike[str]) -> str:
    """Write a fresh random fleet signing key (a KeyRing file, mode 0600) into ``directory``
    (made private, 0700) and return its path: the simulated fleet's devices sign with it and its
    aggregator verifies, and the key never appears on a command line or in a process listing."""
    import secrets
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / 'fleet_key.yaml'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as f:
        f.write(f"shared_secret: 'hex:{secrets.token_hex(32)}'\n")
    return str(path)


def find_default_config(name: str = 'fleet.yaml') -> Path:
    """``config/<name>``: installed share dir (via AMENT_PREFIX_PATH) first, then the source tree."""
    for prefix in filter(None, os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)):
        candidate = Path(prefix) / 'share' / 'disac_ros' / 'config' / name
        if candidate.is_file():
            return candidate
    candidate = Path(__file__).resolve().parents[2] / 'config' / name
    if candidate.is_file():
        return candidate
    raise ConfigError('config', f'cannot find config/{name} in AMENT_PREFIX_PATH or the source tree')
