"""aggregator_node (aggregation center / roadside unit): features of K devices -> tracked objects.

Subscribes to every configured device on ``/<device_id>/<input_topic>`` (``link/feature``
behind the emulated link, ``semantic/feature`` on real radios), checks each packet
(configured device id, codec version, payload, optional authentication tag), groups the packets by
sensor stamp (:class:`disac_ros.core.sync.FeatureSynchronizer`), runs the shipped semantic decoder
batched over every device of every ready group, then TRAM, then the multi-object tracker
(:class:`disac_ros.core.tracking.MultiObjectTracker`), and publishes:

=====================  =====================================  ===================================
topic                  type                                   content
=====================  =====================================  ===================================
``tracks_topic``       disac_interfaces/TrackedObjectArray    confirmed tracks, stamp = sensor time
``markers_topic``      visualization_msgs/MarkerArray         boxes, velocity arrows, labels
``weights_topic``      disac_interfaces/AggregationWeights    TRAM weight, SNR, distance, staleness
``/diagnostics``       diagnostic_msgs/DiagnosticArray        per-device staleness/SNR, latencies
=====================  =====================================  ===================================

It works with any subset of the devices: a group is fused as soon as every *active* device
(heard from within ``active_timeout_s``) is in it, or after ``max_wait_s``. Bad packets are
logged (throttled), counted per reason in diagnostics and dropped; a missing or corrupt model is
reported and retried every 5 s while the node keeps running. Detections use the model's fitted
per-class calibration (``stage2/.../calibration.json``: class weights and thresholds, see
:mod:`disac_ros.core.training.calibration`) unless ``class_weights`` / ``class_thresholds`` say
otherwise; with class thresholds in effect, ``score_threshold`` is not used.
"""
from __future__ import annotations

import array
import math
from pathlib import Path
import sys
import time
from typing import Any, Callable

import numpy as np

from disac_interfaces.msg import AggregationWeights, SemanticFeature, TrackedObject, TrackedObjectArray
from rclpy.event_handler import SubscriptionEventCallbacks
from visualization_msgs.msg import MarkerArray

from disac_ros.core.detection_fusion import (check_class_thresholds, check_class_weights, FUSION_METHODS,
                                             FusionConfig)
from disac_ros.core.errors import ConfigError, DisacError
from disac_ros.core.packet import AUTH_SCOPES, CODEC_VERSION, dequantize, payload_bytes
from disac_ros.core.sync import FeatureSynchronizer, TimedPacket
from disac_ros.core.training.recipes import DECODER_KINDS
from disac_ros.core.tracking import MultiObjectTracker, NUM_CLASSES, Track, TrackerConfig
from disac_ros.nodes import conversions as cv
from disac_ros.nodes import feature_msgs as fm
from disac_ros.nodes.feature_msgs import device_topic
from disac_ros.nodes.diagnostics import Diagnostics, LogThrottle
from disac_ros.nodes.markers import tracks_to_markers
from disac_ros.nodes.model_loading import RetryingModelLoader
from disac_ros.nodes.node_main import run_node
from disac_ros.nodes.managed import AUTOSTART, ManagedNode
from disac_ros.nodes.params import Param, declare_params, on_parameter_change
from disac_ros.nodes.vision_output import VisionOutput
from disac_ros.nodes.qos import qos_by_name, reliable_qos

# Plausibility limits of a received packet (anything beyond cannot come from a real device).
MAX_PAYLOAD_BYTES = 1 << 16      # before the model is loaded (then: the exact size it expects)
MAX_POSE_M = 1e5
MAX_SNR_DB = 200.0
MAX_SYMBOL = 1e4                 # channel outputs are unit-power symbols plus noise

PARAMS = (
    Param('device_ids', ['dev0', 'dev1', 'dev2', 'dev3'], 'accepted devices (features of others are dropped)'),
    Param('input_topic', 'link/feature',
          'per-device feature topic under /<device_id>/: link/feature behind link_node, '
          'semantic/feature on real links'),
    Param('input_qos', 'sensor_data', 'QoS of the feature subscriptions', choices=('sensor_data', 'reliable')),
    Param('tracks_topic', 'aggregator/tracks', 'TrackedObjectArray output (relative: under the namespace)'),
    Param('markers_topic', 'aggregator/markers', 'MarkerArray output'),
    Param('weights_topic', 'aggregator/weights', 'AggregationWeights output'),
    Param('detections_topic', 'aggregator/detections',
          'vision_msgs/Detection3DArray of the tracks (ids = track ids) where vision_msgs is installed; '
          "'' = off"),
    Param('world_frame', 'world', 'frame of the tracks'),
    Param('model_dir', '', 'trained model folder; empty = $DISAC_MODEL_DIR or the installed models/default'),
    Param('decoder', 'shipped', "semantic decoder: the model's shipped one, or device (each "
          "device's own) / mlp / llm / llm_no_channel_tokens",
          choices=('shipped',) + DECODER_KINDS),
    Param('llm_source', '', "LLM backbone for an LLM decoder ('' = the recipe's)"),
    Param('threads', 1, 'torch CPU threads', minimum=1, maximum=64),
    Param('max_fused_cells', 512, 'TRAM fuses at most this many polar cells over all the devices of a '
          'group, the likeliest max_fused_cells // K of each (the others keep their own reading); '
          '512 = exact up to 4 devices, then the cost stops growing with the square of K. 0 = every cell',
          minimum=0, maximum=1 << 20),
    Param('warm_up', True, 'decode and fuse one blank group after loading, so the first real '
                           'group is not slowed by first-call costs'),
    Param('score_threshold', 0.5, 'min class probability of a TRAM query to become a detection '
          '(unused while per-class thresholds are in effect: class_thresholds)',
          minimum=0.0, maximum=1.0, exclusive_minimum=True, read_only=False),
    Param('detection_fusion', 'weighted', 'how reports of one object by several devices are merged: '
          'weighted (score-weighted mean of the reports within fusion_radius_m, noisy-OR '
          'confidence) or nms (keep the most confident within nms_radius_m)',
          choices=FUSION_METHODS, read_only=False),
    Param('fusion_radius_m', 2.5, 'weighted fusion: reports closer than this describe one object (m)',
          minimum=0.0, read_only=False),
    Param('fusion_min_score', 0.3, 'weighted fusion: weakest report that may join a detection',
          minimum=0.0, maximum=1.0, exclusive_minimum=True, read_only=False),
    Param('nms_radius_m', 1.5, 'nms fusion: detections closer than this (any class) are merged into '
          'the most confident one (m)', minimum=0.0, read_only=False),
    Param('class_weights', 'model', "class-prior weights on each detection's class distribution: "
          "'model' (the aggregator's fitted calibration, if any), 'none', or four numbers "
          "'car,truck,pedestrian,cyclist' (e.g. '1,2,0.8,1.1')", read_only=False),
    Param('class_thresholds', 'model', "per-class detection thresholds replacing score_threshold: "
          "'model' (the aggregator's fitted calibration, if any), 'none', or four numbers in (0, 1] "
          "'car,truck,pedestrian,cyclist'", read_only=False),
    Param('window_s', 0.1, 'packets whose stamps differ by less than this form one group (s)',
          minimum=0.0, exclusive_minimum=True, read_only=False),
    Param('max_wait_s', 0.3, 'fuse a group after waiting this long for missing devices (s)',
          minimum=0.0, exclusive_minimum=True, read_only=False),
    Param('active_timeout_s', 1.0, 'a device not heard from for this long is not waited for (s)',
          minimum=0.0, exclusive_minimum=True, read_only=False),
    Param('max_stamp_age_s', 10.0, "refuse (count 'stale_stamp') a packet whose sensor stamp is older "
          "than the node's clock minus this (replays, dead clocks; 0 = off; generous because an "
          'overloaded simulator\'s stamps trail the wall clock). Bags need use_sim_time:=true',
          minimum=0.0, read_only=False),
    Param('max_stamp_lead_s', 0.5, "refuse (count 'future_stamp') a packet stamped more than this "
          "ahead of the node's clock (a device clock running fast; 0 = off)", minimum=0.0, read_only=False),
    Param('verify_auth', False, 'require a valid authentication tag on every packet'),
    Param('key_file', '', 'KeyRing file (YAML/JSON) for verify_auth'),
    Param('shared_secret', '', "'hex:...'/'base64:...' fleet secret for verify_auth (prefer key_file)"),
    Param('auth_scope', 'payload', "what the devices' tags cover: payload (bit-exact links) or header "
          '(behind link_node or an analog channel: all but the symbol values)', choices=AUTH_SCOPES),
    Param('tracker_file', '', 'YAML with a tracker: section (TrackerConfig); empty = defaults'),
    Param('tracker_min_hits', 0, 'override tracker min_hits (0 = keep)', minimum=0, maximum=100,
          read_only=False),
    Param('tracker_max_age_s', 0.0, 'override tracker max_age_s (0 = keep)', minimum=0.0, read_only=False),
    Param('tracker_outage_gap_s', 0.0, 'override tracker outage_gap_s: a gap with nothing received '
          'longer than this (a link outage) ages the tracks only this much, so they outlive a short '
          'outage (0 = keep)', minimum=0.0, read_only=False),
    Param('tracker_merge_radius_m', 0.0, 'override tracker merge_radius_m: a confirmed track this '
          'close to one with more hits is dropped, none is born this close (0 = keep; fewer '
          'duplicate tracks, fewer tracked objects)', minimum=0.0, read_only=False),
    Param('tracker_birth_min_confidence', 0.0, 'override tracker birth_min_confidence: an unmatched '
          'detection below this starts no track (0 = keep)', minimum=0.0, maximum=1.0, read_only=False),
    Param('tracker_uncorroborated_birth_confidence', 0.0, 'override tracker '
          'uncorroborated_birth_confidence: a detection only one of several present devices reported '
          'starts a track only at this confidence (0 = keep; fewer false tracks, fewer tracked objects)',
          minimum=0.0, maximum=1.0, read_only=False),
    Param('process_period_s', 0.05, 'how often groups still waiting for a device are checked against '
          'max_wait_s (s); a complete group is fused as soon as its last packet arrives', minimum=0.001),
)


def track_to_msg(track: Track) -> TrackedObject:
    """core Track -> TrackedObject (world frame, z = 0; heading from the velocity)."""
    msg = TrackedObject()
    msg.id = int(track.id)
    msg.classification = int(track.class_id)
    msg.class_confidence = float(track.class_confidence)
    msg.class_probabilities = array.array('f', [float(p) for p in track.class_probabilities])
    msg.existence_probability = float(track.existence_probability)
    vx, vy = (float(v) for v in track.velocity)
    yaw = math.atan2(vy, vx) if math.hypot(vx, vy) > 0.3 else 0.0
    from disac_ros.core.types import Pose
    msg.pose.pose = cv.pose_to_msg(Pose((float(track.position[0]), float(track.position[1]), 0.0), yaw))
    cov = np.zeros((6, 6))
    cov[:2, :2] = track.position_cov
    cov[2, 2] = cov[3, 3] = cov[4, 4] = 1e6
    cov[5, 5] = 1.0
    msg.pose.covariance = cov.reshape(36)
    msg.twist.twist.linear.x, msg.twist.twist.linear.y = vx, vy
    tcov = np.zeros((6, 6))
    tcov[:2, :2] = track.velocity_cov
    tcov[2, 2] = tcov[3, 3] = tcov[4, 4] = tcov[5, 5] = 1e6
    msg.twist.covariance = tcov.reshape(36)
    # The model estimates neither the box size nor which sensor of a device saw the object: leave
    # dimensions 0 (unknown) and sensed_by_modalities empty instead of inventing them.
    msg.contributing_devices = list(track.contributing_devices)
    msg.first_seen = cv.time_to_msg(max(0.0, track.first_seen_s))
    msg.hits = int(track.hits)
    return msg


def parse_per_class(text: str, name: str, check: Callable[[object], tuple[float, ...]]
                    ) -> tuple[float, ...] | None:
    """A per-class parameter: 'model' -> None (the model's), 'none' -> (), else one number per
    real class, checked by ``check``."""
    text = text.strip().lower()
    if text == 'model':
        return None
    if text == 'none':
        return ()
    try:
        values = check([float(v) for v in text.replace(' ', '').split(',')])
    except (ValueError, ConfigError):
        values = ()
    if len(values) != NUM_CLASSES - 1:
        raise ConfigError(name, f"expected 'model', 'none' or {NUM_CLASSES - 1} valid numbers "
                                f"'car,truck,pedestrian,cyclist', got {text!r}")
    return values


class AggregatorNode(ManagedNode):
    """Decoder + TRAM + tracker over the configured devices (see module doc); a lifecycle node
    (configure = load the model and subscribe, activate = fuse and publish)."""

    def __init__(self, **node_kwargs: Any) -> None:
        """``node_kwargs`` go to rclpy's Node (``cli_args``, ``parameter_overrides``, ``context``: composition, tests)."""
        super().__init__('aggregator', **node_kwargs)
        cfg = declare_params(self, PARAMS + (AUTOSTART,))
        self.cfg = cfg
        self.device_ids = list(cfg['device_ids'])
        if not self.device_ids:
            raise ConfigError(f'{self.get_name()}.device_ids', 'at least one device is needed')
        self.keyring = fm.load_keyring(cfg['key_file'], cfg['shared_secret'])
        if cfg['verify_auth'] and self.keyring is None:
            raise ConfigError(f'{self.get_name()}.verify_auth', 'needs key_file or shared_secret')
        self.class_weights = parse_per_class(cfg['class_weights'], f'{self.get_name()}.class_weights',
                                             check_class_weights)
        self.class_thresholds = parse_per_class(cfg['class_thresholds'],
                                                f'{self.get_name()}.class_thresholds', check_class_thresholds)
        self.tracker = MultiObjectTracker(self._tracker_config())
        self.sync = FeatureSynchronizer(self.device_ids, cfg['window_s'], cfg['max_wait_s'], cfg['active_timeout_s'])
        self.pipeline = None
        self.diag = Diagnostics(self, 'aggregator', warn_if=self._warning)
        for key in ('groups', 'tracks_published', 'unknown_device', 'bad_payload', 'bad_codec', 'auth_failed',
                    'late', 'duplicate', 'decode_errors', 'stale_stamp', 'future_stamp', 'replayed',
                    'clock_jumps', 'lost', 'dds_lost'):
            self.diag.set(key, 0.0)
        self._throttle = LogThrottle(self)      # bad streams must not flood the log
        self._last_stamp: dict[str, float] = {}  # newest accepted sensor stamp per device
        self._last_seq: dict[str, int] = {}      # newest accepted sequence number per device
        self._last_clock: float | None = None
        self.model: RetryingModelLoader | None = None
        self.tracks_pub = self.create_publisher(TrackedObjectArray, cfg['tracks_topic'], reliable_qos(10))
        self.markers_pub = self.create_publisher(MarkerArray, cfg['markers_topic'], reliable_qos(5))
        self.weights_pub = self.create_publisher(AggregationWeights, cfg['weights_topic'], reliable_qos(10))
        self.detections = VisionOutput(self, cfg['detections_topic'], cfg['world_frame'])
        on_parameter_change(self, PARAMS, self.cfg, self._apply_params)
        self.start(cfg['autostart'])

    def configure_io(self) -> None:
        """Lifecycle configure: load the model, then subscribe (see ManagedNode)."""
        cfg = self.cfg
        # A missing or corrupt model must not kill the aggregator: keep reporting and retry. Loaded
        # before the subscriptions exist, so a matched subscription means a ready aggregator.
        self.model = RetryingModelLoader(self, self.diag, 'aggregator model', cfg['model_dir'],
                                         build=self._build_pipeline, on_loaded=self._on_model_loaded)
        qos = qos_by_name(cfg['input_qos'])
        for dev in self.device_ids:
            topic = device_topic(dev, cfg['input_topic'])
            # DDS reports samples it knows it lost (a best-effort gap, a full history); the
            # sequence numbers below also count what never reached DDS (the radio dropped it).
            lost = SubscriptionEventCallbacks(message_lost=lambda info, d=dev: self._on_dds_lost(d, info))
            self.track(self.create_subscription(SemanticFeature, topic,
                                                lambda m, d=dev: self._on_feature(d, m), qos,
                                                event_callbacks=lost))
        # A complete group wakes the fusion at once (guard condition); the timer covers groups that
        # wait for a missing device and the diagnostics. (Polling at 50 Hz cost ~0.08 core idle.)
        self._wake = self.track(self.create_guard_condition(self._process))
        self.track(self.create_timer(cfg['process_period_s'], self._process))
        self.get_logger().info(
            f'aggregating {self.device_ids} from {self.get_namespace().rstrip("/")}/<dev>/{cfg["input_topic"]} -> '
            f'{self.tracks_pub.topic_name} (auth {"verified" if cfg["verify_auth"] else "not checked"}, '
            f'window {cfg["window_s"]} s'
            f'{", " + self.detections.topic if self.detections.enabled else ""})')

    def _apply_params(self, changed: dict) -> None:
        """A ``ros2 param set`` of tuning parameters (validated by their specs): check the
        combination, then change the pipeline, synchroniser and tracker at once."""
        cfg = dict(self.cfg, **changed)
        name = self.get_name()
        class_weights = parse_per_class(cfg['class_weights'], f'{name}.class_weights', check_class_weights)
        class_thresholds = parse_per_class(cfg['class_thresholds'], f'{name}.class_thresholds',
                                           check_class_thresholds)
        fusion = self._fusion_config(cfg)
        tracker = self._tracker_config(cfg)
        if self.pipeline is not None:
            self.pipeline.retune(cfg['score_threshold'], fusion, class_weights, class_thresholds)
        self.class_weights, self.class_thresholds = class_weights, class_thresholds
        self.tracker.reconfigure(tracker)
        self.sync.window_s, self.sync.max_wait_s = cfg['window_s'], cfg['max_wait_s']
        self.sync.active_timeout_s = cfg['active_timeout_s']

    # ---- setup ------------------------------------------------------------------------------

    def _tracker_config(self, cfg: dict | None = None) -> TrackerConfig:
        cfg = cfg or self.cfg
        data: dict = {}
        if cfg['tracker_file']:
            import yaml
            try:
                with open(cfg['tracker_file']) as f:
                    doc = yaml.safe_load(f) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f'{self.get_name()}.tracker_file', str(exc)) from None
            data = dict(doc.get('tracker', doc))
        if cfg['tracker_min_hits']:
            data['min_hits'] = cfg['tracker_min_hits']
            data['confirm_window'] = max(int(data.get('confirm_window', 5)), cfg['tracker_min_hits'])
        for key in ('max_age_s', 'outage_gap_s', 'merge_radius_m', 'birth_min_confidence',
                    'uncorroborated_birth_confidence'):
            if cfg[f'tracker_{key}']:          # 0 = keep the file's (or default) value
                data[key] = cfg[f'tracker_{key}']
        return TrackerConfig.from_dict(data, source=cfg['tracker_file'] or None)

    def _fusion_config(self, cfg: dict | None = None) -> FusionConfig:
        cfg = cfg or self.cfg
        return FusionConfig.for_method(cfg['detection_fusion'], cfg['fusion_radius_m'],
                                       cfg['nms_radius_m'], cfg['fusion_min_score'])

    def _build_pipeline(self, model_dir: Path) -> AggregatorPipeline:
        from disac_ros.core.inference import AggregatorPipeline    # torch: imported when first needed
        pipeline = AggregatorPipeline(model_dir, threads=self.cfg['threads'], decoder=self.cfg['decoder'],
                                      score_threshold=self.cfg['score_threshold'],
                                      fusion=self._fusion_config(), llm_source=self.cfg['llm_source'],
                                      class_weights=self.class_weights,
                                      class_thresholds=self.class_thresholds,
                                      max_fused_cells=self.cfg['max_fused_cells'])
        for dev in self.device_ids:
            pipeline.slot(dev)
        return pipeline

    def _on_model_loaded(self, pipeline: AggregatorPipeline, model_dir: Path, load_s: float) -> None:
        warm = pipeline.warm_up() if self.cfg['warm_up'] else 0.0
        self.pipeline = pipeline
        self.diag.set('decoder', pipeline.decoder_kind)
        fusion = pipeline.fusion
        self.diag.set('class_calibration', '+'.join(name for name, on in (
            ('weights', fusion.class_weights), ('thresholds', fusion.class_thresholds)) if on) or 'none')
        per_class = (f'class weights {[round(w, 3) for w in fusion.class_weights]}, '
                     if fusion.class_weights else '') + (
            f'class thresholds {list(fusion.class_thresholds)}' if fusion.class_thresholds
            else f'score threshold {pipeline.score_threshold:g}')
        self.get_logger().info(f'loaded {pipeline.decoder_kind} decoder + TRAM from {model_dir} '
                               f'in {load_s:.2f} s{f" (+{warm:.2f} s warm-up)" if warm else ""}; {per_class}')

    def cleanup_io(self) -> None:
        """Lifecycle cleanup: drop the model and everything in flight."""
        if self.model is not None:
            self.model.cancel()
        self.model, self.pipeline = None, None
        self._restart_stream()

    def _restart_stream(self) -> None:
        """Forget every track, open group and per-device stamp (cleanup, a clock jump)."""
        self.sync.reset()
        self.tracker.reset()
        self._last_stamp.clear()
        self._last_seq.clear()

    def _warning(self, values: dict) -> str | None:
        if self.model is None:
            return 'not configured (ros2 lifecycle set <node> configure)'
        if self.model.error:
            return f'no model: {self.model.error}'
        now = self._now()
        stale = [d for d, s in self.sync.staleness(now).items()
                 if not (s['since_heard_s'] <= self.cfg['active_timeout_s'])]
        return f'no packets from {", ".join(stale)}' if stale else None

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ---- input ------------------------------------------------------------------------------

    def _reject(self, counter: str, dev: str, text: str) -> None:
        self.diag.count(counter)
        self.diag.count(f'{dev}.rejected')
        self._throttle.warning(f'{dev}: packet dropped ({counter}): {text}', key=counter + dev)

    def _on_feature(self, dev: str, msg: SemanticFeature) -> None:
        from disac_ros.core.inference import ReceivedPacket
        if not self.active:
            return self.diag.count('inactive_dropped')
        now = self._now()
        if msg.device_id != dev or msg.device_id not in self.device_ids:
            return self._reject('unknown_device', dev, f'device_id {msg.device_id!r} on the topic of {dev}')
        if msg.codec_version != CODEC_VERSION:
            return self._reject('bad_codec', dev, f'codec_version {msg.codec_version} != {CODEC_VERSION}')
        problem = self._implausible(msg)
        if problem:
            # Checked before anything is unpacked: a 50 MB payload costs no memory beyond the message.
            return self._reject('bad_payload', dev, problem)
        stamp = cv.msg_to_time(msg.header.stamp)
        verdict = self._stamp_verdict(dev, stamp, now)
        if verdict:
            return self._reject(verdict, dev, f'sensor stamp {stamp:.3f} s, clock {now:.3f} s, newest '
                                              f'accepted {self._last_stamp.get(dev, math.nan):.3f} s')
        try:
            if self.cfg['verify_auth'] and not self.keyring.verify(fm.packet_fields(msg), bytes(msg.auth_tag),
                                                                   self.cfg['auth_scope']):
                return self._reject('auth_failed', dev, 'authentication tag does not verify')
            symbols = dequantize(fm.msg_payload(msg))
        except (DisacError, ValueError, KeyError) as exc:
            counter = 'auth_failed' if 'auth_tag' in str(exc) else 'bad_payload'
            return self._reject(counter, dev, str(exc))
        n = self.pipeline.num_symbols if self.pipeline is not None else None
        if symbols.ndim != 2 or symbols.shape[1] != 2 or (n is not None and symbols.shape[0] != n):
            return self._reject('bad_payload', dev, f'shape {symbols.shape}, expected ({n}, 2)')
        if float(np.abs(symbols).max(initial=0.0)) > MAX_SYMBOL:
            return self._reject('bad_payload', dev, f'symbols up to {np.abs(symbols).max():.3g}, '
                                                    f'beyond any channel output (|x| <= {MAX_SYMBOL:g})')
        self._last_stamp[dev] = stamp
        self._count_sequence(dev, int(msg.seq))
        pose = fm.pose_xyyaw(msg.device_pose)
        packet = ReceivedPacket(dev, symbols, float(msg.snr_db), float(msg.distance_m), pose)
        # The exact stamp travels along: float seconds lose nanoseconds at epoch scale.
        result = self.sync.add(TimedPacket(dev, stamp, now, (packet, msg.header.stamp)))
        self.diag.tick(f'{dev}.in')
        self.diag.set(f'{dev}.snr_db', float(msg.snr_db))
        self.diag.set(f'{dev}.distance_m', float(msg.distance_m))
        if result != 'accepted':
            self.diag.count(result)
        elif self.sync.has_complete(now):
            self._wake.trigger()

    def _count_sequence(self, dev: str, seq: int) -> None:
        """Per device: packets received, and lost in transit (gaps in ``seq``, link or network).

        Counted only for packets that passed every check, so a forged ``seq`` cannot inflate it;
        a ``seq`` that goes back is a restarted device, not a loss.
        """
        last = self._last_seq.get(dev)
        if last is not None and seq > last + 1:
            self.diag.count(f'{dev}.lost', seq - last - 1)
            self.diag.count('lost', seq - last - 1)
        self._last_seq[dev] = seq
        self.diag.count(f'{dev}.received')

    def _on_dds_lost(self, dev: str, info: Any) -> None:
        # The event's count of samples lost since the last event; 0 means nothing new was lost.
        n = int(getattr(info, 'total_count_change', 1))
        if n <= 0:
            return
        self.diag.count(f'{dev}.dds_lost', n)
        self.diag.count('dds_lost', n)

    def _implausible(self, msg: SemanticFeature) -> str:
        """Why a packet's header fields cannot come from a real device ('' when plausible)."""
        n = self.pipeline.num_symbols if self.pipeline is not None else None
        if n is not None:
            shape = tuple(int(v) for v in msg.shape)
            if shape != (n, 2):
                return f'shape {list(shape)}, expected [{n}, 2]'
            bits = int(msg.bits_per_element)
            if 1 <= bits <= 8 and len(msg.payload) != payload_bytes(n, bits):
                return f'payload of {len(msg.payload)} bytes, expected {payload_bytes(n, bits)} at {bits} bits'
        elif len(msg.payload) > MAX_PAYLOAD_BYTES:
            return f'payload of {len(msg.payload)} bytes (limit {MAX_PAYLOAD_BYTES})'
        x, y, yaw = fm.pose_xyyaw(msg.device_pose)
        if not all(math.isfinite(v) for v in (x, y, yaw, msg.device_pose.position.z)):
            return 'device pose is not finite'
        if max(abs(x), abs(y), abs(msg.device_pose.position.z)) > MAX_POSE_M:
            return f'device pose ({x:.3g}, {y:.3g}) beyond {MAX_POSE_M:g} m of the world origin'
        snr, dist = float(msg.snr_db), float(msg.distance_m)
        if math.isfinite(snr) and not -MAX_SNR_DB <= snr <= MAX_SNR_DB:
            return f'snr_db {snr:.3g} outside [-{MAX_SNR_DB:g}, {MAX_SNR_DB:g}]'
        if math.isinf(snr) or math.isinf(dist):
            return 'snr_db or distance_m is infinite (NaN means unknown)'
        if math.isfinite(dist) and not 0.0 <= dist <= MAX_POSE_M:
            return f'distance_m {dist:.3g} outside [0, {MAX_POSE_M:g}]'
        return ''

    def _stamp_verdict(self, dev: str, stamp: float, now: float) -> str:
        """'' for a packet whose stamp fits the clock and the device's stream, else the counter.

        Per device, so one device with a bad clock (or a replayed capture) never blanks the
        others and never resets the tracker; the tracker restarts only when the node's own clock
        jumps back (a bag loop or a simulator restart, seen in ``_process``).
        """
        age, lead = self.cfg['max_stamp_age_s'], self.cfg['max_stamp_lead_s']
        if stamp <= 0.0 or (age > 0 and stamp < now - age):
            return 'stale_stamp'
        if lead > 0 and stamp > now + lead:
            return 'future_stamp'
        last = self._last_stamp.get(dev)
        if last is not None and stamp <= last:
            return 'replayed'          # same or older than what this device already delivered
        return ''

    # ---- fusion -----------------------------------------------------------------------------

    def _process(self) -> None:
        now = self._now()
        if self._last_clock is not None and now < self._last_clock - 1.0:
            # The clock went back (a bag looped, the simulator restarted): start over.
            self.get_logger().warning(f'clock jumped back {self._last_clock - now:.1f} s; resetting the tracker')
            self._restart_stream()
            self.diag.count('clock_jumps')
        self._last_clock = now
        for dev, s in self.sync.staleness(now).items():
            self.diag.set(f'{dev}.since_heard_s', s['since_heard_s'])
            self.diag.set(f'{dev}.link_latency_s', s['latency_s'])
        self.diag.set('active_devices', float(len(self.sync.active_devices(now))))
        self.diag.set('pending_groups', float(self.sync.pending))
        if self.pipeline is None or not self.active:
            return
        groups = self.sync.pop_ready(now)
        if not groups:
            return
        t0 = time.monotonic()
        try:
            results = self.pipeline.run([[p.data[0] for p in g.packets.values()] for g in groups])
        except Exception as exc:       # torch errors too: one bad batch must not stop the node
            self.diag.count('decode_errors', len(groups))
            self._throttle.warning(f'fusion failed for {len(groups)} group(s): {exc}', key='decode')
            return
        self.diag.timing('decode_fuse', time.monotonic() - t0)
        self.diag.set('batch_groups', float(len(groups)))
        for g, res in zip(groups, results):
            # The group's stamp: that of its anchor packet (the one whose stamp opened the group).
            anchor = min(g.packets.values(), key=lambda p: abs(p.stamp_s - g.stamp_s))
            stamp = anchor.data[1]
            tracks = self.tracker.update(g.stamp_s, res.detections)
            out = TrackedObjectArray()
            out.header = cv.make_header(stamp, self.cfg['world_frame'])
            out.objects = [track_to_msg(t) for t in tracks]
            self.tracks_pub.publish(out)
            self.markers_pub.publish(tracks_to_markers(out))
            self.detections.publish(out)
            w = AggregationWeights()
            w.header = cv.make_header(stamp, self.cfg['world_frame'])
            w.device_ids = list(res.device_ids)
            w.weights = array.array('f', res.weights)
            w.snr_db = array.array('f', res.snr_db)
            w.distance_m = array.array('f', res.distance_m)
            w.staleness_s = array.array('f', [g.packets[d].received_s - g.packets[d].stamp_s for d in res.device_ids])
            self.weights_pub.publish(w)
            self.diag.count('groups')
            self.diag.count('tracks_published')
            self.diag.set('tracks', float(len(tracks)))
            self.diag.set('detections', float(len(res.detections)))
            self.diag.set('group_devices', float(len(res.device_ids)))
            self.diag.timing('sensor_to_tracks', self._now() - g.stamp_s)
            self.diag.tick('tracks_out')
        st = self.tracker.stats
        self.diag.set('tracks_born', float(st.tracks_born))
        self.diag.set('tracks_deleted', float(st.tracks_deleted))
        self.diag.set('groups_timed_out', float(self.sync.stats.groups_timed_out))


def main(args: list[str] | None = None) -> int:
    """Entry point: run until SIGINT/SIGTERM; exit 2 on a configuration error."""
    return run_node(AggregatorNode, args=args, name='aggregator_node', params=PARAMS + (AUTOSTART,), doc=__doc__)


if __name__ == '__main__':
    sys.exit(main())
