"""The conventional digital chain baseline: JPEG image + quantised RF over the same link.

Per device and frame the transmitter sends

* the camera image as JPEG (OpenCV ``imencode``, quality ``q``), and
* the radar feature maps (``radar_features``, 2 x chirps x samples) quantised to ``b`` bits per
  value with :func:`disac_ros.core.packet.quantize` (affine), plus its 8-byte scale/zero point.

The packet is delivered intact iff its bits fit the link's capacity over the channel uses it is
given, for the block-fading draw of that frame (the same draw the semantic link sees)::

    delivered  <=>  8 * bytes <= N_cu * log2(1 + SNR * |h|^2)        (|h| = 1 for AWGN)

otherwise it is lost (an ideal capacity-achieving code: the most favourable digital chain). The
aggregator then runs the device's own RVFN on the decompressed image and dequantised RF, and the
same TRAM. Lost devices are absent; a frame with every device lost yields no objects. This all-
or-nothing delivery is the "cliff effect" that the semantic link's graceful degradation avoids.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from disac_ros.core import packet

QUANT_HEADER_BYTES = 8     # float32 scale + int32 zero point travel with the payload


@dataclass
class DigitalPayload:
    """What the digital chain delivers for a batch of frames of one device."""

    images: np.ndarray       # (N, H, W, 3) uint8, JPEG round trip
    rf: np.ndarray           # (N, C, H, W) float32, quantisation round trip
    bytes: np.ndarray        # (N,) int64 payload bytes per frame


def jpeg_roundtrip(image_rgb: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
    """Encode an RGB uint8 image as JPEG and decode it: (decoded RGB, encoded bytes)."""
    bgr = np.ascontiguousarray(image_rgb[..., ::-1])
    ok, buf = cv2.imencode('.jpg', bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError('cv2.imencode failed for a JPEG image')
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(dec[..., ::-1]), int(buf.size)


def quantise_roundtrip(values: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """Quantise a real array with the packet codec and dequantise it: (values, bytes on air)."""
    q = packet.quantize(np.asarray(values, dtype=np.float32), bits, mode='affine')
    return packet.dequantize(q), len(q.payload) + QUANT_HEADER_BYTES


def digital_payload(images: np.ndarray, rf_maps: np.ndarray, jpeg_quality: int,
                    rf_bits: int) -> DigitalPayload:
    """JPEG + quantised-RF round trip of N frames of one device."""
    imgs, rfs, sizes = [], [], []
    for img, rfm in zip(images, rf_maps):
        di, ni = jpeg_roundtrip(np.asarray(img, dtype=np.uint8), jpeg_quality)
        dr, nr = quantise_roundtrip(rfm, rf_bits)
        imgs.append(di)
        rfs.append(dr)
        sizes.append(ni + nr)
    return DigitalPayload(np.stack(imgs), np.stack(rfs).astype(np.float32),
                          np.asarray(sizes, dtype=np.int64))


def capacity_bits(snr_db: np.ndarray, fading_gain: np.ndarray, channel_uses: int) -> np.ndarray:
    """Shannon capacity in bits of ``channel_uses`` uses at SNR * |h|^2."""
    snr = 10.0 ** (np.asarray(snr_db, dtype=np.float64) / 10.0)
    return channel_uses * np.log2(1.0 + snr * np.asarray(fading_gain, dtype=np.float64))


def delivered(payload_bytes: np.ndarray, snr_db: np.ndarray, fading_gain: np.ndarray,
              channel_uses: int) -> np.ndarray:
    """Bool mask: packets whose bits fit the capacity (see module doc)."""
    return 8.0 * np.asarray(payload_bytes) <= capacity_bits(snr_db, fading_gain, channel_uses)
