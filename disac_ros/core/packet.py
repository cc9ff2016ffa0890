"""Semantic packet codec: quantisation, bit packing and authentication of a SemanticFeature.

The wire layout is the one documented in ``disac_interfaces/msg/SemanticFeature.msg``.

Quantisation
    A real tensor (channel symbols: ``(L, 2)`` as I, Q) becomes unsigned integers ``q`` of ``bits``
    bits with ``value = (q - zero_point) * scale``. ``scale`` is rounded to float32 before use
    because that is how it travels, so sender and receiver compute the same values.

    * ``mode='symmetric'`` (bits >= 2, the default; right for zero-mean channel symbols):
      ``zero_point = 2**(bits-1)`` and the codes ``zero_point +- (2**(bits-1) - 1)`` cover
      ``[-A, A]`` (code 0 is unused so that the grid is symmetric and contains 0), with
      ``A = clip`` if given, else ``max|x|``.
    * ``mode='affine'``: ``[lo, hi]`` is mapped onto all ``2**bits`` codes, with ``lo, hi`` the
      data's min and max, each clipped to ``[-clip, clip]`` if ``clip`` is given. Needed for
      ``bits == 1``, whose two codes cannot be symmetric about 0 with an integer zero point.

    Values inside the covered range are reproduced within ``scale / 2``. Values outside it (only
    possible with ``clip``) are clipped to the nearest end: clipping rare large symbols buys
    resolution for the common ones.

Bit packing
    Elements are taken in C (row-major) order, so ``(L, 2)`` is sent as I0 Q0 I1 Q1 ... .
    Each element's ``bits`` bits are written most significant bit first into one bit stream,
    element 0 first; byte ``k`` of the payload holds stream bits ``8k .. 8k+7``, the first of them
    in its most significant bit. The last byte is padded with zero bits. This is the .msg's
    "little-endian, MSB-first within each byte": element order runs from the lowest byte address
    up, and no element is wider than a byte, so there is no multi-byte word order to choose.
    ``bits == 8`` is simply one byte per element.

Authentication
    ``tag = HMAC-SHA256(key, canonical_bytes)[:16]`` where ``canonical_bytes`` is, little-endian:
    the ASCII context ``b'disac_ros/SemanticFeature/auth\\0'``, ``u32`` length + UTF-8 of
    device_id, ``u64`` seq, ``u16`` codec_version, ``i32`` stamp sec, ``u32`` stamp nanosec,
    ``u32`` ndim then one ``u32`` per dimension, ``f32`` scale, ``i32`` zero_point, ``u8`` bits,
    ``u32`` payload length + payload, then ``u32`` pose count + ``f64`` per pose value (the
    device pose x y z qx qy qz qw; count 0 when not given). Length prefixes make the encoding
    unambiguous; the context string keeps these tags from being valid for any other message. Keys
    are per device (:class:`KeyRing`).

    Scope ``'header'`` (``AUTH_SCOPES``) is for links that change the symbols on the way, as an
    analog semantic channel (and ``link_node``, which emulates one) does: the context becomes
    ``b'disac_ros/SemanticFeature/auth-header\\0'`` and the quantised symbols (scale, zero_point,
    bits, payload) are left out; device id, seq, codec version, stamp, shape and pose stay covered.
    It proves who sent a packet for which instant and where it stood, so forged and replayed
    packets are refused; it cannot prove the received symbol values, which no receiver of a
    noisy channel could check bit-exactly.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
import hashlib
import hmac
import json
import math
from pathlib import Path
import struct
from typing import Any, Iterable, Mapping

import numpy as np
import yaml

from disac_ros.core.errors import ConfigError, DisacError

CODEC_VERSION = 1                 # version of this payload layout (SemanticFeature.codec_version)
AUTH_TAG_BYTES = 16               # HMAC-SHA256 truncated to 128 bits
MIN_KEY_BYTES = 16                # shorter keys are refused: they would weaken the 128-bit tag
_AUTH_CONTEXT = b'disac_ros/SemanticFeature/auth\x00'
_AUTH_HEADER_CONTEXT = b'disac_ros/SemanticFeature/auth-header\x00'
AUTH_SCOPES: tuple[str, ...] = ('payload', 'header')   # what a tag covers (module docstring)
_HKDF_SALT = b'disac_ros/device-key/v1'
_HKDF_INFO_PREFIX = b'disac_ros/SemanticFeature/v1/device/'
_UINT32_MAX = 2 ** 32 - 1
_INT32_MIN, _INT32_MAX = -2 ** 31, 2 ** 31 - 1


class CodecError(DisacError, ValueError):
    """A payload, a packet field or a tag is malformed; the message names the field."""


@dataclass(frozen=True)
class QuantizedPayload:
    """The payload fields of a SemanticFeature message."""

    shape: tuple[int, ...]
    scale: float
    zero_point: int
    bits: int
    payload: bytes

    @property
    def num_elements(self) -> int:
        """Number of quantised elements (product of shape)."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class PacketFields:
    """Every SemanticFeature field the authentication tag covers."""

    device_id: str
    seq: int
    codec_version: int
    stamp_sec: int
    stamp_nanosec: int
    payload: QuantizedPayload
    pose: tuple[float, ...] = ()       # x y z qx qy qz qw of the device pose; () = not covered


def payload_bytes(num_symbols: int, bits: int, components: int = 2) -> int:
    """Payload size in bytes of ``num_symbols`` symbols of ``components`` reals each.

    With the defaults, the size of ``num_symbols`` complex (I, Q) symbols.
    """
    _check_bits(bits)
    if num_symbols < 0 or components < 1:
        raise CodecError(f'num_symbols/components: expected >= 0 / >= 1, got '
                         f'{num_symbols} / {components}')
    return (num_symbols * components * bits + 7) // 8


def complex_to_iq(symbols: np.ndarray) -> np.ndarray:
    """Return complex symbols (L,) as a real (L, 2) array of (I, Q)."""
    z = np.asarray(symbols).reshape(-1)
    return np.stack([z.real, z.imag], axis=-1).astype(np.float64)


def iq_to_complex(iq: np.ndarray) -> np.ndarray:
    """Return a real (L, 2) array of (I, Q) as complex symbols (L,)."""
    iq = np.asarray(iq)
    if iq.ndim != 2 or iq.shape[1] != 2:
        raise CodecError(f'shape: expected (L, 2) I/Q symbols, got {iq.shape}')
    return iq[:, 0] + 1j * iq[:, 1]


# ---- quantisation ---------------------------------------------------------------------------


def _check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise CodecError(f'bits: expected an integer in 1..8, got {bits!r}')
    return int(bits)


def quantize(symbols: np.ndarray, bits: int, *, mode: str = 'symmetric',
             clip: float | None = None) -> QuantizedPayload:
    """Quantise a real array (e.g. ``(L, 2)`` I/Q symbols) to ``bits`` bits and pack it.

    See the module docstring for the quantiser and the bit layout. ``clip`` (> 0) limits the
    covered range to ``[-clip, clip]``; values beyond it saturate.
    """
    bits = _check_bits(bits)
    x = np.asarray(symbols)
    if np.iscomplexobj(x):
        raise CodecError('symbols: complex input; convert with complex_to_iq() to (L, 2) reals')
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 1 or x.size == 0:
        raise CodecError(f'symbols: expected a non-empty real numeric array, got dtype '
                         f'{x.dtype} shape {x.shape}')
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise CodecError(f'symbols: {bad} of {x.size} values are NaN or infinite')
    if clip is not None and not (math.isfinite(clip) and clip > 0.0):
        raise CodecError(f'clip: expected a finite value > 0, got {clip!r}')
    qmax = 2 ** bits - 1
    if mode == 'symmetric':
        if bits < 2:
            raise CodecError("bits: symmetric quantisation needs bits >= 2; use mode='affine'")
        half = 2 ** (bits - 1) - 1
        zero_point = 2 ** (bits - 1)
        amax = float(np.max(np.abs(x))) if clip is None else float(clip)
        # Never below the smallest normal float32: a subnormal range would round the scale to 0,
        # a payload every receiver must refuse.
        scale = max(_f32(amax / half if amax > 0.0 else 1.0), _F32_TINY)
        while half * scale > _F32_MAX:
            # Rounded up at the top of float32's range: the receiver's values would overflow.
            scale = float(np.nextafter(np.float32(scale), np.float32(0.0)))
        q = np.clip(np.rint(x / scale) + zero_point, zero_point - half, zero_point + half)
    elif mode == 'affine':
        lo, hi = float(x.min()), float(x.max())
        if clip is not None:
            lo, hi = min(max(lo, -clip), clip), min(max(hi, -clip), clip)
        scale = max(_f32((hi - lo) / qmax if hi > lo else max(abs(lo), 1.0)), _F32_TINY)
        zero_point = int(np.rint(-lo / scale))
        if not _INT32_MIN <= zero_point <= _INT32_MAX:
            raise CodecError(f'zero_point: {zero_point} does not fit int32 (range too far from 0 '
                             f'for its width)')
        q = np.clip(np.rint(x / scale) + zero_point, 0, qmax)
    else:
        raise CodecError(f"mode: expected 'symmetric' or 'affine', got {mode!r}")
    shape = tuple(int(d) for d in x.shape)
    return QuantizedPayload(shape=shape, scale=scale, zero_point=zero_point, bits=bits,
                            payload=pack_bits(q.astype(np.uint8).reshape(-1), bits))


def dequantize(payload: QuantizedPayload) -> np.ndarray:
    """Unpack and dequantise a payload to float32 of ``payload.shape``; CodecError if malformed."""
    validate_payload(payload)
    q = unpack_bits(payload.payload, payload.bits, payload.num_elements)
    with np.errstate(over='ignore'):        # an overflow becomes inf, refused just below
        values = ((q.astype(np.float64) - payload.zero_point) * float(np.float32(payload.scale))).astype(np.float32)
    if not np.isfinite(values).all():
        # e.g. scale 3e38: finite itself, but the values overflow float32 (and would poison a batch)
        raise CodecError(f'scale: {payload.scale!r} with zero_point {payload.zero_point} overflows float32')
    return values.reshape(payload.shape)


def validate_payload(payload: QuantizedPayload) -> None:
    """Raise CodecError naming the first inconsistent field of a received payload."""
    bits = _check_bits(payload.bits)
    shape = payload.shape
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool)
            and 0 <= d <= _UINT32_MAX for d in shape):
        raise CodecError(f'shape: expected a non-empty list of uint32, got {shape!r}')
    scale = payload.scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) \
            or not math.isfinite(scale) or scale <= 0.0:
        raise CodecError(f'scale: expected a finite value > 0, got {scale!r}')
    zp = payload.zero_point
    if isinstance(zp, bool) or not isinstance(zp, (int, np.integer)) \
            or not _INT32_MIN <= zp <= _INT32_MAX:
        raise CodecError(f'zero_point: expected an int32, got {zp!r}')
    if not isinstance(payload.payload, (bytes, bytearray, memoryview)):
        raise CodecError(f'payload: expected bytes, got {type(payload.payload).__name__}')
    n = math.prod(int(d) for d in shape)
    expected = (n * bits + 7) // 8
    if len(payload.payload) != expected:
        raise CodecError(f'payload: {len(payload.payload)} bytes, but shape {list(shape)} '
                         f'({n} elements) at {bits} bits needs {expected}')


def pack_bits(q: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers (< 2**bits) MSB-first into a byte string (see module docstring)."""
    bits = _check_bits(bits)
    q = np.asarray(q).reshape(-1)
    if q.size and (q.min() < 0 or q.max() >= 2 ** bits):
        raise CodecError(f'payload: values must lie in 0..{2 ** bits - 1} for {bits} bits')
    q = q.astype(np.uint8)
    if bits == 8:
        return q.tobytes()
    # (N, 8) bits of each byte MSB first, keep the low `bits` columns, then one stream.
    stream = np.unpackbits(q[:, None], axis=1, bitorder='big')[:, 8 - bits:]
    return np.packbits(stream.reshape(-1), bitorder='big').tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``count`` elements as uint8."""
    bits = _check_bits(bits)
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    if len(buf) * 8 < count * bits:
        raise CodecError(f'payload: {len(buf)} bytes hold fewer than {count} elements of '
                         f'{bits} bits')
    if bits == 8:
        return buf[:count].copy()
    stream = np.unpackbits(buf, bitorder='big')[:count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint8)
    return (stream * weights).sum(axis=1).astype(np.uint8)


def _f32(value: float) -> float:
    return float(np.float32(value))


_F32_TINY = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)


# ---- authentication -------------------------------------------------------------------------


def canonical_bytes(fields: PacketFields, scope: str = 'payload') -> bytes:
    """The byte string the authentication tag covers (layout and scopes in the module docstring)."""
    if scope not in AUTH_SCOPES:
        raise ConfigError('auth_scope', f'expected one of {", ".join(AUTH_SCOPES)}, got {scope!r}')
    p = fields.payload
    if scope == 'payload':
        validate_payload(p)
    device = fields.device_id.encode('utf-8') if isinstance(fields.device_id, str) else None
    if device is None or not device:
        raise CodecError(f'device_id: expected a non-empty string, got {fields.device_id!r}')
    for name, value, low, high in (('seq', fields.seq, 0, 2 ** 64 - 1),
                                   ('codec_version', fields.codec_version, 0, 2 ** 16 - 1),
                                   ('stamp.sec', fields.stamp_sec, _INT32_MIN, _INT32_MAX),
                                   ('stamp.nanosec', fields.stamp_nanosec, 0, 999_999_999)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not low <= value <= high:
            raise CodecError(f'{name}: expected an integer in {low}..{high}, got {value!r}')
    pose = tuple(float(v) for v in fields.pose)
    if not all(math.isfinite(v) for v in pose):
        raise CodecError(f'pose: expected finite values, got {pose}')
    shape = tuple(int(d) for d in p.shape)
    if not all(0 <= d <= _UINT32_MAX for d in shape):
        raise CodecError(f'shape: expected uint32 values, got {list(shape)}')
    parts = [
        _AUTH_CONTEXT if scope == 'payload' else _AUTH_HEADER_CONTEXT,
        struct.pack('<I', len(device)), device,
        struct.pack('<QHiI', fields.seq, fields.codec_version, fields.stamp_sec,
                    fields.stamp_nanosec),
        struct.pack('<I', len(shape)), struct.pack(f'<{len(shape)}I', *shape),
    ]
    if scope == 'payload':
        parts += [struct.pack('<fiB', p.scale, p.zero_point, p.bits),
                  struct.pack('<I', len(p.payload)), bytes(p.payload)]
    parts += [struct.pack('<I', len(pose)), struct.pack(f'<{len(pose)}d', *pose)]
    return b''.join(parts)


def sign(fields: PacketFields, key: bytes, scope: str = 'payload') -> bytes:
    """Return the 16-byte authentication tag of a packet under ``key``."""
    _check_key(key, 'key')
    return hmac.new(bytes(key), canonical_bytes(fields, scope), hashlib.sha256).digest()[:AUTH_TAG_BYTES]


def verify(fields: PacketFields, tag: bytes, key: bytes, scope: str = 'payload') -> bool:
    """Return True when ``tag`` authenticates ``fields`` under ``key`` (constant-time compare).

    Raises CodecError when the tag does not have 16 bytes (an empty tag means an unsigned
    packet, which a receiver that checks tags must refuse) or the fields are malformed.
    """
    tag = bytes(tag)
    if len(tag) != AUTH_TAG_BYTES:
        raise CodecError(f'auth_tag: expected {AUTH_TAG_BYTES} bytes, got {len(tag)}'
                         + (' (packet is not signed)' if not tag else ''))
    return hmac.compare_digest(sign(fields, key, scope), tag)


def _check_key(key: Any, name: str) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise ConfigError(name, f'expected a key of at least {MIN_KEY_BYTES} bytes, got {size}')
    return bytes(key)


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF (RFC 5869) with SHA-256: extract with ``salt``, expand with ``info``."""
    if not 0 < length <= 255 * 32:
        raise ValueError(f'length: expected 1..{255 * 32}, got {length}')
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block = b'', b''
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def derive_device_key(shared_secret: bytes, device_id: str) -> bytes:
    """Per-device 32-byte key: HKDF-SHA256(shared_secret, salt, info = prefix + device_id)."""
    secret = _check_key(shared_secret, 'shared_secret')
    return hkdf_sha256(secret, _HKDF_SALT, _HKDF_INFO_PREFIX + device_id.encode('utf-8'))


def _decode_key(text: Any, field: str, source: str | None) -> bytes:
    """Decode ``hex:...`` or ``base64:...`` (the prefix is required to avoid guessing)."""
    if not isinstance(text, str) or ':' not in text:
        raise ConfigError(field, "expected a string 'hex:<hex digits>' or 'base64:<text>'",
                          source)
    kind, _, body = text.partition(':')
    try:
        if kind == 'hex':
            key = bytes.fromhex(body)
        elif kind == 'base64':
            key = base64.b64decode(body, validate=True)
        else:
            raise ConfigError(field, f"unknown key encoding {kind!r}; use 'hex:' or 'base64:'",
                              source)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(field, f'cannot decode {kind} key: {exc}', source) from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(field, f'key has {len(key)} bytes; at least {MIN_KEY_BYTES} needed',
                          source)
    return key


class KeyRing:
    """Per-device authentication keys: explicit keys, else keys derived from a shared secret.

    A key file (YAML or JSON) holds either or both of::

        shared_secret: hex:00112233...        # derive a key per device (derive_device_key)
        keys:                                  # explicit keys win over derived ones
          veh_0: hex:8f1e...
          rsu_0: base64:q83v...

    Every key and the secret are at least 16 bytes. Without a shared secret only the listed
    devices have keys.
    """

    def __init__(self, keys: Mapping[str, bytes] | None = None,
                 shared_secret: bytes | None = None):
        """Build from explicit keys and/or a shared secret."""
        self._keys = {str(dev): _check_key(k, f'keys.{dev}') for dev, k in (keys or {}).items()}
        self._secret = None if shared_secret is None else _check_key(shared_secret,
                                                                     'shared_secret')
        self._derived: dict[str, bytes] = {}

    @classmethod
    def from_shared_secret(cls, secret: bytes, device_ids: Iterable[str] = ()) -> KeyRing:
        """Derive keys from one secret; ``device_ids`` only pre-computes them."""
        ring = cls(shared_secret=secret)
        for dev in device_ids:
            ring.key_for(dev)
        return ring

    @classmethod
    def from_mapping(cls, data: Any, source: str | None = None) -> KeyRing:
        """Build from the parsed key-file structure (see the class docstring)."""
        if not isinstance(data, Mapping):
            raise ConfigError('keyring', 'expected a mapping with shared_secret and/or keys',
                              source)
        unknown = set(data) - {'shared_secret', 'keys'}
        if unknown:
            raise ConfigError(f'keyring.{sorted(unknown)[0]}',
                              'unknown key; expected shared_secret and/or keys', source)
        secret = data.get('shared_secret')
        raw_keys = data.get('keys') or {}
        if not isinstance(raw_keys, Mapping):
            raise ConfigError('keyring.keys', 'expected a mapping device_id -> key', source)
        if secret is None and not raw_keys:
            raise ConfigError('keyring', 'neither shared_secret nor keys given', source)
        keys = {str(dev): _decode_key(text, f'keyring.keys.{dev}', source)
                for dev, text in raw_keys.items()}
        secret_bytes = (None if secret is None
                        else _decode_key(secret, 'keyring.shared_secret', source))
        return cls(keys=keys, shared_secret=secret_bytes)

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        """Load a YAML or JSON key file (JSON when the suffix is .json)."""
        path = Path(path)
        try:
            text = path.read_text(encoding='utf-8')
        except OSError as exc:
            raise ConfigError('keyring', f'cannot read key file: {exc}', str(path)) from None
        try:
            data = json.loads(text) if path.suffix == '.json' else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError('keyring', f'cannot parse key file: {exc}', str(path)) from None
        return cls.from_mapping(data, source=str(path))

    def has_key(self, device_id: str) -> bool:
        """True when a key exists (or can be derived) for the device."""
        return device_id in self._keys or self._secret is not None

    def key_for(self, device_id: str) -> bytes:
        """The device's key; KeyError naming the device when there is none."""
        if device_id in self._keys:
            return self._keys[device_id]
        if self._secret is None:
            raise KeyError(f'no authentication key for device {device_id!r}')
        if device_id not in self._derived:
            self._derived[device_id] = derive_device_key(self._secret, device_id)
        return self._derived[device_id]

    def sign(self, fields: PacketFields, scope: str = 'payload') -> bytes:
        """Tag a packet with its device's key."""
        return sign(fields, self.key_for(fields.device_id), scope)

    def verify(self, fields: PacketFields, tag: bytes, scope: str = 'payload') -> bool:
        """Check a packet's tag; False for a device without a key (CodecError if malformed)."""
        if not self.has_key(fields.device_id):
            return False
        return verify(fields, tag, self.key_for(fields.device_id), scope)


__all__ = ['AUTH_SCOPES', 'AUTH_TAG_BYTES', 'CODEC_VERSION', 'CodecError', 'KeyRing', 'PacketFields',
           'QuantizedPayload', 'canonical_bytes', 'complex_to_iq', 'dequantize',
           'derive_device_key', 'hkdf_sha256', 'iq_to_complex', 'pack_bits', 'payload_bytes',
           'quantize', 'sign', 'unpack_bits', 'validate_payload', 'verify']
