"""config/fleet.yaml -> node specs (ROS-free), and the runner's command lines built from them."""
from pathlib import Path
import sys

import pytest
import yaml

from disac_ros.core.errors import ConfigError
from disac_ros.core.fleet_config import FleetOptions, build_fleet, load_fleet_yaml, params_file_content
from disac_ros.tools import fleet as runner

REPO = Path(__file__).resolve().parents[1]
FLEET_YAML = REPO / 'config' / 'fleet.yaml'

# A fleet like the one later issues will have: per-device nodes, sources, remappings.
FUTURE = yaml.safe_load("""
fleet: {num_devices: 3, source: sim}
nodes:
  - {name: world, executable: world_node, sources: [sim], parameters: {num_devices: '{num_devices}'}}
  - {name: bag_player, executable: bag_player, sources: [bag], parameters: {bag: '{bag}'}}
  - name: device_node
    executable: device_node
    namespace: '/{device_id}'
    per_device: true
    parameters: {device_id: '{device_id}', index: '{index}', label: 'unit-{device_id}'}
    remappings: {semantic/feature: '/link/{device_id}/in'}
  - {name: aggregator, executable: aggregator_node, namespace: /aggregator,
     parameters: {device_ids: '{device_ids}', empty: [], nothing: null}}
""")


def test_shipped_fleet_yaml_gives_the_world_for_sim():
    specs = build_fleet(load_fleet_yaml(FLEET_YAML), FleetOptions(num_devices=2))
    assert [(s.name, s.executable, s.namespace) for s in specs] == [
        ('world', 'world_node', '/'), ('device_node', 'device_node', '/dev0'),
        ('device_node', 'device_node', '/dev1'), ('link', 'link_node', '/'), ('aggregator', 'aggregator_node', '/')]
    assert specs[0].parameters['num_devices'] == 2
    assert specs[0].module == 'disac_ros.nodes.world_node'


def test_shipped_fleet_yaml_gives_the_bag_player_for_bag():
    specs = build_fleet(load_fleet_yaml(FLEET_YAML), FleetOptions(source='bag', bag='/data/b'))
    assert (specs[0].name, specs[0].parameters['bag']) == ('bag_player', '/data/b')
    assert 'world' not in [s.name for s in specs]


def test_per_device_fan_out_sources_and_placeholders():
    specs = build_fleet(FUTURE, FleetOptions(namespace='site1', use_sim_time=True,
                                             overrides={'world.rate_hz': 5.0, 'seed': 3}))
    assert [s.fqn for s in specs] == ['/site1/world', '/site1/dev0/device_node', '/site1/dev1/device_node',
                                      '/site1/dev2/device_node', '/site1/aggregator/aggregator']
    world, dev1, agg = specs[0], specs[2], specs[4]
    assert world.parameters == {'num_devices': 3, 'use_sim_time': True, 'rate_hz': 5.0, 'seed': 3}
    assert dev1.parameters['device_id'] == 'dev1' and dev1.parameters['index'] == 1   # typed, not '1'
    assert dev1.parameters['label'] == 'unit-dev1'
    # Namespaced: the global topics move under the namespace, so two sites never cross.
    assert dev1.remappings == (('semantic/feature', '/link/dev1/in'), ('/tf', '/site1/tf'),
                               ('/tf_static', '/site1/tf_static'), ('/clock', '/site1/clock'))
    assert 'rate_hz' not in dev1.parameters                    # node-qualified override only hits world
    assert agg.parameters['device_ids'] == ['dev0', 'dev1', 'dev2']
    assert 'empty' not in agg.parameters and 'nothing' not in agg.parameters


def test_num_devices_and_device_ids():
    cfg = dict(FUTURE, fleet={'device_ids': ['north', 'south'], 'device_id_format': 'rsu{index}'})
    specs = build_fleet(cfg, FleetOptions(num_devices=3))
    assert [s.namespace for s in specs if s.name == 'device_node'] == ['/north', '/south', '/rsu2']


@pytest.mark.parametrize('mutate,options,field', [
    (lambda c: c['nodes'][0].pop('executable'), FleetOptions(), 'nodes[0].executable'),
    (lambda c: c['nodes'][0].update(sources=['gazebo']), FleetOptions(), 'nodes[0].sources'),
    (lambda c: c['nodes'][0].update(colour='red'), FleetOptions(), 'nodes[0].colour'),
    (lambda c: c['nodes'][2].update(name='device_{oops}'), FleetOptions(), 'nodes[2].name'),
    (lambda c: c['nodes'][2].update(namespace=''), FleetOptions(), 'nodes'),        # 3 x /device_node
    (lambda c: None, FleetOptions(source='bag'), 'bag'),
    (lambda c: None, FleetOptions(source='lidar'), 'source'),
    (lambda c: None, FleetOptions(num_devices=0), 'num_devices'),
    (lambda c: c['fleet'].update(device_ids=['a b']), FleetOptions(), 'fleet.device_ids[0]'),
])
def test_bad_config_names_the_field(mutate, options, field):
    cfg = yaml.safe_load(yaml.safe_dump(FUTURE))
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        build_fleet(cfg, options)
    assert err.value.field == field


def test_runner_command_lines_and_params_file(tmp_path):
    specs = build_fleet(FUTURE, FleetOptions(params_files=('/etc/extra.yaml',)))
    params = runner.write_params_file(specs, str(tmp_path))
    cmd = runner.child_command(specs[1], params, 'debug')
    assert cmd[:3] == [sys.executable, '-m', 'disac_ros.nodes.device_node']
    assert cmd[3:] == ['--ros-args', '-r', '__node:=device_node', '-r', '__ns:=/dev0',
                       '-r', 'semantic/feature:=/link/dev0/in', '--params-file', params,
                       '--params-file', '/etc/extra.yaml', '--log-level', 'debug']
    assert yaml.safe_load(Path(params).read_text()) == params_file_content(specs)


def test_runner_can_host_every_device_node_in_one_process(tmp_path):
    specs = build_fleet(FUTURE, FleetOptions(num_devices=3, params_files=('/etc/extra.yaml',)))
    assert [len(m) for _, m in runner.process_groups(specs, False)] == [1] * len(specs)
    groups = runner.process_groups(specs, True)
    devices = [s for s in specs if s.executable == 'device_node']
    assert len(groups) == len(specs) - len(devices) + 1
    label, members = groups[[g[0] for g in groups].index(runner.CONTAINER)]
    assert members == devices
    params = runner.write_params_file(specs, str(tmp_path))
    cmd = runner.group_command(members, params, 'warn')
    assert cmd[:3] == [sys.executable, '-m', 'disac_ros.nodes.container']
    assert cmd[3:9] == ['--member', 'device_node@/dev0/device_node|semantic/feature:=/link/dev0/in',
                        '--member', 'device_node@/dev1/device_node|semantic/feature:=/link/dev1/in',
                        '--member', 'device_node@/dev2/device_node|semantic/feature:=/link/dev2/in']
    assert cmd[9:] == ['--ros-args', '--params-file', params, '--params-file', '/etc/extra.yaml',
                       '--log-level', 'warn']
    fleet = runner.Fleet(specs, 'info', share_device_process=True)
    assert sum('disac_ros.nodes.container' in c for c in fleet.commands()) == 1
    # use_composition: every composable node (world, devices, aggregator) in one process.
    composed = runner.process_groups(specs, False, use_composition=True)
    assert composed[0][0] is runner.CONTAINER and len(composed) == 1
    assert [m.fqn for m in composed[0][1]] == [s.fqn for s in specs]


def test_container_member_syntax():
    from disac_ros.nodes.container import Member, member_argument, node_cli_args, parse_member
    assert parse_member('/dev0/device_node') == Member('device_node', '/dev0', 'device_node', [])
    m = parse_member('aggregator_node@/a/b/agg|tracks:=t')
    assert m == Member('aggregator_node', '/a/b', 'agg', ['tracks:=t'])
    assert parse_member(member_argument('aggregator_node', '/a/b/agg', [('tracks', 't')])) == m
    assert node_cli_args(m.namespace, m.name, m.remaps) == ['--ros-args', '-r', '__ns:=/a/b', '-r',
                                                            '__node:=agg', '-r', 'tracks:=t']
    for bad in ('dev0', '/dev0/device_node|nocolon', '/dev0/', 'bag_player@/bag_player'):
        with pytest.raises(ConfigError, match='--member'):
            parse_member(bad)


def test_runner_cli_parses_overrides_and_rejects_bad_ones():
    args = runner.parse_args(['--num-devices', '2', '-p', 'world.rate_hz=2.5', '-p', 'flag=true',
                              '--use-sim-time', 'true'])
    opts = runner.options_from_args(args)
    assert opts.overrides == {'world.rate_hz': 2.5, 'flag': True} and opts.use_sim_time is True
    with pytest.raises(ConfigError, match='--param'):
        runner.options_from_args(runner.parse_args(['-p', 'novalue']))


def test_runner_dry_run_and_config_error_exit_codes(capsys):
    assert runner.main(['--config', str(FLEET_YAML), '--dry-run', '--num-devices', '1']) == 0
    out = capsys.readouterr().out
    assert '-m disac_ros.nodes.world_node --ros-args -r __node:=world -r __ns:=/' in out
    assert runner.main(['--config', str(FLEET_YAML), '--source', 'bag']) == runner.EXIT_CONFIG
    assert 'needs a bag directory' in capsys.readouterr().err


def test_params_file_has_no_yaml_aliases_when_nodes_share_a_list_placeholder():
    """rcl refuses YAML aliases; two nodes given '{device_ids}' must not share one list object."""
    import yaml
    config = {'fleet': {'num_devices': 2}, 'nodes': [
        {'name': 'a', 'executable': 'x', 'parameters': {'ids': '{device_ids}'}},
        {'name': 'b', 'executable': 'y', 'parameters': {'ids': '{device_ids}'}}]}
    specs = build_fleet(config, FleetOptions())
    text = yaml.safe_dump(params_file_content(specs))
    assert '&id' not in text and '*id' not in text, text
    assert specs[0].parameters['ids'] == specs[1].parameters['ids'] == ['dev0', 'dev1']


# A scenario with its own device ids (not dev0..devK-1).
SMALL = REPO / 'config' / 'scenarios' / 'intersection_small.yaml'
SMALL_IDS = ['car_a', 'rsu_north', 'rsu_east']


def test_scenario_brings_its_device_ids_to_every_per_device_node_and_its_path_to_the_world(monkeypatch):
    monkeypatch.chdir(REPO)                                    # a relative path is made absolute
    specs = build_fleet(load_fleet_yaml(FLEET_YAML),
                        FleetOptions(scenario='config/scenarios/intersection_small.yaml'))
    by_name = {s.fqn: s for s in specs}
    assert [s.fqn for s in specs] == ['/world', '/car_a/device_node', '/rsu_north/device_node',
                                      '/rsu_east/device_node', '/link', '/aggregator']
    world = by_name['/world']
    assert world.parameters['scenario'] == str(SMALL) and world.parameters['num_devices'] == 3
    for dev in SMALL_IDS:
        assert by_name[f'/{dev}/device_node'].parameters['device_id'] == dev
    assert by_name['/aggregator'].parameters['device_ids'] == SMALL_IDS
    # The link's settings are its own parameters file (config/params/link.yaml), any device.
    assert by_name['/link'].node_params_files == (str(REPO / 'config' / 'params' / 'link.yaml'),)
    assert 'device_ids: [auto]' in Path(by_name['/link'].node_params_files[0]).read_text()
    from disac_ros.core.fleet_config import fleet_device_ids
    assert fleet_device_ids(load_fleet_yaml(FLEET_YAML), FleetOptions(scenario=str(SMALL))) == SMALL_IDS
    # Without a scenario nothing changes: the world's default scenario, dev0..dev3.
    default = build_fleet(load_fleet_yaml(FLEET_YAML))
    assert default[0].parameters['scenario'] == '' and default[0].parameters['num_devices'] == 4
    assert default[-1].parameters['device_ids'] == ['dev0', 'dev1', 'dev2', 'dev3']


def test_scenario_with_num_devices_keeps_its_first_k_devices():
    specs = build_fleet(load_fleet_yaml(FLEET_YAML), FleetOptions(scenario=str(SMALL), num_devices=2))
    assert [s.namespace for s in specs if s.executable == 'device_node'] == ['/car_a', '/rsu_north']
    assert specs[0].parameters['num_devices'] == 2
    assert specs[-1].parameters['device_ids'] == ['car_a', 'rsu_north']
    # Other sources take the scenario's ids too (a bag recorded from it, or its real devices).
    ext = build_fleet(load_fleet_yaml(FLEET_YAML), FleetOptions(scenario=str(SMALL), source='external'))
    assert [s.fqn for s in ext] == ['/car_a/device_node', '/rsu_north/device_node', '/rsu_east/device_node',
                                    '/aggregator']
    assert ext[-1].parameters['device_ids'] == SMALL_IDS


def _bad_scenario(tmp_path, text):
    path = tmp_path / 'bad_scenario.yaml'
    path.write_text(text)
    return path


@pytest.mark.parametrize('make,num_devices,field', [
    (lambda tmp: SMALL, 4, 'num_devices'),                                  # only 3 devices
    (lambda tmp: tmp / 'missing.yaml', None, 'scenario'),
    (lambda tmp: _bad_scenario(tmp, 'devices: [\n'), None, 'scenario'),     # not YAML
    (lambda tmp: _bad_scenario(tmp, SMALL.read_text().replace('id: rsu_east', 'id: rsu_north')),
     None, 'scenario'),                                                     # duplicate device id
    (lambda tmp: _bad_scenario(tmp, 'name: x\n'), None, 'scenario'),        # not a scenario
])
def test_bad_scenario_or_too_many_devices_is_a_config_error_naming_the_file(tmp_path, make, num_devices, field):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as err:
        build_fleet(load_fleet_yaml(FLEET_YAML), FleetOptions(scenario=str(path), num_devices=num_devices))
    assert err.value.field == field
    assert str(path) in str(err.value)


def test_scenario_with_a_world_that_would_ignore_it_is_a_config_error():
    """An older fleet YAML (world scenario: '') must not simulate other devices than it starts."""
    cfg = load_fleet_yaml(FLEET_YAML)
    cfg['nodes'][0]['parameters']['scenario'] = ''
    with pytest.raises(ConfigError, match='would not simulate') as err:
        build_fleet(cfg, FleetOptions(scenario=str(SMALL)))
    assert err.value.field == 'scenario'
    assert build_fleet(cfg, FleetOptions(scenario=str(SMALL), source='bag', bag='/b'))   # no world: fine


def test_runner_scenario_flag_dry_run_and_list_devices(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    opts = runner.options_from_args(runner.parse_args(['--scenario', 'config/scenarios/intersection_small.yaml']))
    assert opts.scenario == str(SMALL)
    assert runner.main(['--config', str(FLEET_YAML), '--scenario', str(SMALL), '--dry-run']) == 0
    out = capsys.readouterr().out
    assert '# devices: car_a rsu_north rsu_east' in out
    for dev in SMALL_IDS:
        assert f'/{dev}/device_node:' in out and f'__ns:=/{dev} ' in out
    assert f'scenario: {SMALL}' in out
    assert runner.main(['--config', str(FLEET_YAML), '--scenario', str(SMALL), '--num-devices', '2',
                        '--list-devices']) == 0
    assert capsys.readouterr().out.split() == ['car_a', 'rsu_north']
    assert runner.main(['--config', str(FLEET_YAML), '--list-devices']) == 0
    assert capsys.readouterr().out.split() == ['dev0', 'dev1', 'dev2', 'dev3']
    assert runner.main(['--config', str(FLEET_YAML), '--scenario', 'nope.yaml']) == runner.EXIT_CONFIG
    assert 'nope.yaml' in capsys.readouterr().err
