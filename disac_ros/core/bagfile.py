"""rosbag2 (MCAP or sqlite3) reading and writing without ROS, on top of ``rosbags``.

Messages stay as CDR bytes end to end: the recorder writes what the middleware delivered and the
player publishes the same bytes, so a replay is byte-identical. Our custom types
(disac_interfaces/msg/*) are registered from their .msg files so the bag carries their
definitions and tools such as Foxglove can decode them.
"""
from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
import re
from typing import Iterable, Iterator, Sequence

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from disac_ros.core.errors import ConfigError

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
INTERFACE_PACKAGE = 'disac_interfaces'


@dataclass(frozen=True)
class BagMessage:
    """One recorded message: topic, type, log time (ns) and the CDR bytes."""

    topic: str
    msgtype: str
    timestamp_ns: int
    data: bytes


@dataclass(frozen=True)
class TopicInfo:
    """A topic in a bag: type, message count and whether it was recorded as transient local."""

    topic: str
    msgtype: str
    count: int
    latched: bool


@dataclass(frozen=True)
class BagInfo:
    """Summary of a bag."""

    path: str
    storage: str
    start_ns: int                       # log time of the first message
    end_ns: int                         # log time of the last message
    message_count: int
    topics: tuple[TopicInfo, ...]

    @property
    def duration_s(self) -> float:
        """Time from the first to the last message."""
        return (self.end_ns - self.start_ns) * 1e-9 if self.message_count else 0.0


def find_msg_dir(package: str = INTERFACE_PACKAGE) -> Path:
    """The folder holding ``<package>``'s .msg files: installed share (AMENT_PREFIX_PATH) or source tree."""
    for prefix in filter(None, os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)):
        candidate = Path(prefix) / 'share' / package / 'msg'
        if candidate.is_dir():
            return candidate
    candidate = Path(__file__).resolve().parents[2] / package / 'msg'
    if candidate.is_dir():
        return candidate
    raise ConfigError('msg_dir', f'cannot find the {package} .msg files (AMENT_PREFIX_PATH or source tree)')


def make_typestore(msg_dirs: Sequence[tuple[str, Path]] | None = None) -> Typestore:
    """A Kilted typestore plus our interface types, read from their .msg files.

    ``msg_dirs`` is a list of (package, folder) pairs; default: disac_interfaces.
    """
    store = get_typestore(Stores.ROS2_KILTED)
    for package, folder in msg_dirs or [(INTERFACE_PACKAGE, find_msg_dir())]:
        types = {}
        for f in sorted(Path(folder).glob('*.msg')):
            # rosbags' parser wants a comment-free-ish text; it handles comments, we only need the name.
            types.update(get_types_from_msg(f.read_text(), f'{package}/msg/{f.stem}'))
        store.register(types)
    return store


def qos_profile(reliable: bool, latched: bool, depth: int = 10) -> Qos:
    """A rosbags QoS record (stored in metadata.yaml as the topic's offered QoS)."""
    inf = QosTime(9223372036, 854775807)
    return Qos(QosHistory.KEEP_LAST, depth,
               QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
               inf, inf, QosLiveliness.AUTOMATIC, inf, False)


class BagWriter:
    """Write CDR messages to a new bag folder (MCAP by default). Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str], storage: str = 'mcap', typestore: Typestore | None = None):
        if storage not in STORAGES:
            raise ConfigError('storage', f'expected one of {", ".join(STORAGES)}, got {storage!r}')
        self.path = Path(path)
        if self.path.exists():
            raise ConfigError('output', f'bag folder already exists: {self.path}')
        self.typestore = typestore or make_typestore()
        self._writer = Writer(self.path, version=9 if storage == 'mcap' else 8, storage_plugin=STORAGES[storage])
        self._writer.open()
        self._connections: dict[str, object] = {}
        self.count = 0

    def add_topic(self, topic: str, msgtype: str, reliable: bool = True, latched: bool = False) -> None:
        """Declare a topic; ConfigError if the type is unknown to the typestore."""
        if topic in self._connections:
            return
        if msgtype not in self.typestore.fielddefs:
            raise ConfigError(topic, f'message type {msgtype} is unknown to the bag typestore')
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self.typestore, offered_qos_profiles=[qos_profile(reliable, latched)])

    def has_topic(self, topic: str) -> bool:
        """True when ``add_topic`` was called for ``topic``."""
        return topic in self._connections

    def write(self, topic: str, timestamp_ns: int, data: bytes | memoryview) -> None:
        """Append one CDR message with its log time."""
        self._writer.write(self._connections[topic], int(timestamp_ns), bytes(data))
        self.count += 1

    def close(self) -> None:
        """Finish the file and write metadata.yaml."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> 'BagWriter':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _latched(connection: object) -> bool:
    ext = getattr(connection, 'ext', None)
    return any(q.durability == QosDurability.TRANSIENT_LOCAL for q in getattr(ext, 'offered_qos_profiles', ()) or ())


def open_reader(path: str | os.PathLike[str]) -> Reader:
    """Open a bag folder (or a single .mcap/.db3 file's folder); ConfigError if missing."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if not (p / 'metadata.yaml').is_file():
        raise ConfigError('bag', f'not a rosbag2 folder (no metadata.yaml): {p}')
    reader = Reader(p)
    reader.open()
    return reader


def read_messages(path: str | os.PathLike[str], topics: Iterable[str] | None = None,
                  start_ns: int | None = None) -> Iterator[BagMessage]:
    """Messages in log-time order, optionally only ``topics`` and from ``start_ns``."""
    reader = open_reader(path)
    try:
        wanted = set(topics) if topics is not None else None
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for conn, ts, data in reader.messages(connections=conns, start=start_ns):
            yield BagMessage(conn.topic, conn.msgtype, ts, bytes(data))
    finally:
        reader.close()


def bag_info(path: str | os.PathLike[str]) -> BagInfo:
    """Summary: time range, message count and topics."""
    reader = open_reader(path)
    try:
        topics: dict[str, TopicInfo] = {}
        for c in reader.connections:
            prev = topics.get(c.topic)
            count = c.msgcount + (prev.count if prev else 0)
            topics[c.topic] = TopicInfo(c.topic, c.msgtype, count, _latched(c) or bool(prev and prev.latched))
        storage = 'mcap' if any(Path(reader.path).glob('*.mcap')) else 'sqlite3'
        # rosbags' end_time is one past the last message; BagInfo keeps the last message's time.
        return BagInfo(str(reader.path), storage, reader.start_time if reader.message_count else 0,
                       reader.end_time - 1 if reader.message_count else 0, reader.message_count,
                       tuple(sorted(topics.values(), key=lambda t: t.topic)))
    finally:
        reader.close()


def format_info(info: BagInfo) -> str:
    """Human-readable summary, like ``ros2 bag info``."""
    lines = [f'path:      {info.path}', f'storage:   {info.storage}',
             f'duration:  {info.duration_s:.3f} s', f'start:     {info.start_ns * 1e-9:.6f}',
             f'messages:  {info.message_count}', 'topics:']
    width = max((len(t.topic) for t in info.topics), default=0)
    for t in info.topics:
        lines.append(f'  {t.topic:<{width}}  {t.count:>6}  {t.msgtype}' + ('  (latched)' if t.latched else ''))
    return '\n'.join(lines)


def topic_matches(topic: str, patterns: Sequence[str]) -> bool:
    """True if ``topic`` matches one of ``patterns``: 'all', an exact name, or a regex 're:<expr>'."""
    for p in patterns:
        if p == 'all' or p == topic:
            return True
        if p.startswith('re:') and re.fullmatch(p[3:], topic):
            return True
    return False
