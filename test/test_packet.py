"""Tests of the semantic packet codec (disac_ros.core.packet)."""
import dataclasses
import json
import math

import numpy as np
import pytest

from disac_ros.core.errors import ConfigError
from disac_ros.core.packet import (
    AUTH_TAG_BYTES, canonical_bytes, CODEC_VERSION, CodecError, complex_to_iq, dequantize,
    derive_device_key, hkdf_sha256, iq_to_complex, KeyRing, pack_bits, PacketFields,
    payload_bytes, QuantizedPayload, quantize, sign, unpack_bits, verify)

KEY = bytes(range(32))


def symbols(n=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0 / math.sqrt(2), (n, 2))


def packet(**overrides) -> PacketFields:
    base = dict(device_id='veh_0', seq=42, codec_version=CODEC_VERSION, stamp_sec=1700000000,
                stamp_nanosec=123456789, payload=quantize(symbols(), 6))
    base.update(overrides)
    return PacketFields(**base)


@pytest.mark.parametrize('bits', [4, 6, 8])
@pytest.mark.parametrize('mode', ['symmetric', 'affine'])
def test_round_trip_error_is_at_most_half_a_step(bits, mode):
    x = symbols(256, seed=bits)
    q = quantize(x, bits, mode=mode)
    y = dequantize(q)
    assert y.shape == x.shape and y.dtype == np.float32
    # float32 output rounding is the only slack allowed.
    assert np.max(np.abs(y - x)) <= q.scale / 2 + 1e-6
    assert len(q.payload) == payload_bytes(256, bits)


def test_one_bit_needs_affine():
    # With an integer zero point the two 1-bit levels are {-zp, 1 - zp} * scale: one of them
    # is 0, so 1 bit cannot keep the sign of zero-mean data (a limit of the wire format).
    x = np.array([[0.2, 0.9], [0.0, 1.0]])
    with pytest.raises(CodecError, match="bits: symmetric quantisation needs bits >= 2"):
        quantize(x, 1)
    q = quantize(x, 1, mode='affine')
    assert (q.scale, q.zero_point) == (1.0, 0)
    assert np.array_equal(unpack_bits(q.payload, 1, 4), [0, 1, 0, 1])
    assert np.max(np.abs(dequantize(q) - x)) <= q.scale / 2


def test_clipping_saturates_outliers_and_refines_the_grid():
    x = np.array([[0.1, -0.2], [0.3, 10.0]])
    q = quantize(x, 8, clip=1.0)
    y = dequantize(q)
    assert q.scale == pytest.approx(1.0 / 127)
    assert y[1, 1] == pytest.approx(1.0)                     # saturated at the clip level
    assert np.max(np.abs(y[x <= 1.0] - x[x <= 1.0])) <= q.scale / 2 + 1e-7


def test_symmetric_zero_point_and_levels():
    q = quantize(np.array([[-2.0, 0.0], [0.5, 2.0]]), 4)
    assert (q.zero_point, q.bits, q.shape) == (8, 4, (2, 2))
    assert q.scale == pytest.approx(2.0 / 7)
    # codes 8 -+ 7 cover [-2, 2]; 0.5 / (2/7) = 1.75 -> 2; code 0 is never used
    assert np.array_equal(unpack_bits(q.payload, 4, 4), [1, 8, 10, 15])
    assert q.payload == bytes([0x18, 0xAF])


def test_packing_layout_hand_computed():
    # 4 bits: two elements per byte, first element in the high nibble.
    assert pack_bits(np.array([1, 2, 15, 0, 10]), 4) == bytes([0x12, 0xF0, 0xA0])
    # 3 bits: 101 011 111 -> 10101111 1(0000000)
    assert pack_bits(np.array([5, 3, 7]), 3) == bytes([0b10101111, 0b10000000])
    # 6 bits: 000001 111111 100000 -> 00000111 11111000 00(000000)
    assert pack_bits(np.array([1, 63, 32]), 6) == bytes([0b00000111, 0b11111000, 0b00000000])
    # 1 bit: MSB first.
    assert pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 1, 1]), 1) == bytes([0x81, 0x80])
    # 8 bits: one byte per element, element order = byte order.
    assert pack_bits(np.array([1, 2, 255]), 8) == bytes([1, 2, 255])


def test_quantize_uses_row_major_iq_order():
    x = np.array([[0.0, 1.0], [-1.0, 0.25]])       # I0 Q0 I1 Q1
    q = quantize(x, 8)
    assert list(q.payload) == [128, 255, 1, 160]   # zp 128, scale 1/127: 31.75 -> 32


@pytest.mark.parametrize('bits', range(1, 9))
def test_pack_unpack_round_trip_all_widths(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2 ** bits, 37).astype(np.uint8)
    data = pack_bits(values, bits)
    assert len(data) == (37 * bits + 7) // 8
    assert np.array_equal(unpack_bits(data, bits, 37), values)


def test_payload_size_of_64_symbols_at_8_bits_is_128_bytes():
    assert payload_bytes(64, 8) == 128
    assert len(quantize(symbols(64), 8).payload) == 128
    assert payload_bytes(64, 4) == 64 and payload_bytes(3, 3) == 3


def test_complex_helpers():
    z = np.array([1 + 2j, -0.5 - 1j])
    iq = complex_to_iq(z)
    assert iq.shape == (2, 2) and np.array_equal(iq_to_complex(iq), z)
    with pytest.raises(CodecError, match='symbols: complex input'):
        quantize(z, 8)


@pytest.mark.parametrize('bad, match', [
    (np.array([[0.0, np.nan]]), r'symbols: 1 of 2 values are NaN or infinite'),
    (np.array([[np.inf, 0.0]]), r'symbols: 1 of 2 values are NaN or infinite'),
    (np.zeros((0, 2)), r'symbols: expected a non-empty real numeric array'),
    (np.array([['a', 'b']]), r'symbols: expected a non-empty real numeric array'),
])
def test_quantize_rejects_bad_symbols(bad, match):
    with pytest.raises(CodecError, match=match):
        quantize(bad, 8)


@pytest.mark.parametrize('bits', [0, 9, 2.0, True])
def test_bits_out_of_range(bits):
    with pytest.raises(CodecError, match=r'bits: expected an integer in 1\.\.8'):
        quantize(symbols(4), bits)
    with pytest.raises(CodecError, match='bits'):
        payload_bytes(4, bits)


@pytest.mark.parametrize('change, match', [
    (dict(shape=(65, 2)), r'payload: 96 bytes, but shape \[65, 2\] \(130 elements\) at 6 bits '
                          r'needs 98'),
    (dict(payload=b'\x00' * 95), r'payload: 95 bytes'),
    (dict(bits=9), r'bits: expected an integer in 1\.\.8'),
    (dict(scale=float('nan')), r'scale: expected a finite value > 0'),
    (dict(scale=0.0), r'scale: expected a finite value > 0'),
    (dict(shape=()), r'shape: expected a non-empty list of uint32'),
    (dict(shape=(-1, 2)), r'shape: expected a non-empty list of uint32'),
    (dict(zero_point=2 ** 31), r'zero_point: expected an int32'),
])
def test_dequantize_rejects_malformed_payload(change, match):
    good = quantize(symbols(64), 6)
    with pytest.raises(CodecError, match=match):
        dequantize(dataclasses.replace(good, **change))


def test_codec_error_is_a_value_error():
    assert issubclass(CodecError, ValueError)


# ---- authentication -------------------------------------------------------------------------


def test_sign_verify_round_trip():
    pkt = packet()
    tag = sign(pkt, KEY)
    assert len(tag) == AUTH_TAG_BYTES
    assert verify(pkt, tag, KEY)


def _tampered(pkt: PacketFields):
    p = pkt.payload
    flipped = bytes([p.payload[0] ^ 0x01]) + p.payload[1:]
    yield 'device_id', dataclasses.replace(pkt, device_id='veh_1')
    yield 'seq', dataclasses.replace(pkt, seq=pkt.seq + 1)
    yield 'codec_version', dataclasses.replace(pkt, codec_version=pkt.codec_version + 1)
    yield 'stamp_sec', dataclasses.replace(pkt, stamp_sec=pkt.stamp_sec + 1)
    yield 'stamp_nanosec', dataclasses.replace(pkt, stamp_nanosec=pkt.stamp_nanosec + 1)
    yield 'shape', dataclasses.replace(pkt, payload=dataclasses.replace(p, shape=(2, 64)))
    yield 'scale', dataclasses.replace(pkt, payload=dataclasses.replace(
        p, scale=float(np.nextafter(np.float32(p.scale), np.float32(1e9)))))
    yield 'zero_point', dataclasses.replace(pkt, payload=dataclasses.replace(
        p, zero_point=p.zero_point + 1))
    yield 'bits', dataclasses.replace(pkt, payload=dataclasses.replace(
        p, bits=3, shape=(64, 4)))    # same payload length, reinterpreted
    yield 'payload', dataclasses.replace(pkt, payload=dataclasses.replace(p, payload=flipped))


@pytest.mark.parametrize('field', ['device_id', 'seq', 'codec_version', 'stamp_sec',
                                   'stamp_nanosec', 'shape', 'scale', 'zero_point', 'bits',
                                   'payload'])
def test_tampering_any_field_fails_verification(field):
    pkt = packet()
    tag = sign(pkt, KEY)
    tampered = dict(_tampered(pkt))[field]
    assert not verify(tampered, tag, KEY)


def test_tampered_tag_and_wrong_key_fail():
    pkt = packet()
    tag = sign(pkt, KEY)
    assert not verify(pkt, bytes([tag[0] ^ 0x80]) + tag[1:], KEY)
    assert not verify(pkt, tag, bytes(reversed(KEY)))


@pytest.mark.parametrize('tag, match', [(b'', r'auth_tag: expected 16 bytes, got 0 \(packet is '
                                              r'not signed\)'),
                                        (b'\x00' * 32, r'auth_tag: expected 16 bytes, got 32')])
def test_wrong_tag_length_raises(tag, match):
    with pytest.raises(CodecError, match=match):
        verify(packet(), tag, KEY)


@pytest.mark.parametrize('change, match', [
    (dict(seq=-1), r'seq: expected an integer'),
    (dict(stamp_nanosec=10 ** 9), r'stamp\.nanosec'),
    (dict(codec_version=70000), r'codec_version'),
    (dict(device_id=''), r'device_id: expected a non-empty string'),
])
def test_malformed_header_fields_raise(change, match):
    with pytest.raises(CodecError, match=match):
        sign(packet(**change), KEY)


def test_canonical_bytes_are_length_prefixed():
    # 'veh_0' + seq 1 must not collide with 'veh_' + something: the lengths differ.
    a = canonical_bytes(packet(device_id='veh_0'))
    b = canonical_bytes(packet(device_id='veh_'))
    assert a != b and a.startswith(b'disac_ros/SemanticFeature/auth\x00\x05\x00\x00\x00veh_0')


def test_short_key_is_refused():
    with pytest.raises(ConfigError, match='key: expected a key of at least 16 bytes, got 8'):
        sign(packet(), b'12345678')


def test_hkdf_matches_rfc5869_test_case_1():
    okm = hkdf_sha256(bytes([0x0b] * 22), bytes(range(13)), bytes(range(0xf0, 0xfa)), 42)
    assert okm.hex() == ('3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf'
                         '34007208d5b887185865')


def test_keyring_derives_distinct_per_device_keys():
    ring = KeyRing.from_shared_secret(b's' * 32, ['veh_0'])
    assert ring.key_for('veh_0') == derive_device_key(b's' * 32, 'veh_0')
    assert ring.key_for('veh_0') != ring.key_for('veh_1')
    pkt = packet()
    tag = ring.sign(pkt)
    assert ring.verify(pkt, tag)
    # A device cannot sign for another: veh_1's key does not verify a packet claiming veh_0.
    forged = sign(pkt, ring.key_for('veh_1'))
    assert not ring.verify(pkt, forged)


def test_keyring_from_yaml_and_json(tmp_path):
    explicit = bytes(range(100, 132))
    yml = tmp_path / 'keys.yaml'
    yml.write_text(f'shared_secret: hex:{"ab" * 32}\nkeys:\n  rsu_0: hex:{explicit.hex()}\n')
    ring = KeyRing.from_file(yml)
    assert ring.key_for('rsu_0') == explicit
    assert ring.key_for('veh_0') == derive_device_key(bytes([0xab] * 32), 'veh_0')
    js = tmp_path / 'keys.json'
    js.write_text(json.dumps({'keys': {'veh_0': 'base64:' + 'QUJD' * 6}}))
    ring = KeyRing.from_file(js)
    assert ring.key_for('veh_0') == b'ABC' * 6
    assert not ring.has_key('veh_1')
    with pytest.raises(KeyError, match="veh_1"):
        ring.key_for('veh_1')
    assert not ring.verify(packet(device_id='veh_1'), b'\x00' * 16)


@pytest.mark.parametrize('text, match', [
    ('keys:\n  veh_0: 0011', r'keyring.keys.veh_0: expected a string .hex:'),
    ('keys:\n  veh_0: hex:zz', r'keyring.keys.veh_0: cannot decode hex key'),
    ('keys:\n  veh_0: hex:0011', r'keyring.keys.veh_0: key has 2 bytes'),
    ('keys:\n  veh_0: rot13:abc', r"keyring.keys.veh_0: unknown key encoding 'rot13'"),
    ('secret: hex:00', r'keyring.secret: unknown key'),
    ('{}', r'keyring: neither shared_secret nor keys given'),
])
def test_bad_key_file_names_the_field(tmp_path, text, match):
    path = tmp_path / 'keys.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        KeyRing.from_file(path)
    assert str(path) in str(info.value)


def test_quantized_payload_num_elements():
    assert QuantizedPayload((64, 2), 1.0, 0, 8, b'').num_elements == 128
