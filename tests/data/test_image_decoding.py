"""Image files in every common encoding decode to the Omniglot convention:
uint8, dark ink on a white (255) background, the same array as the
grayscale PNG of the drawing."""

import re
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf

from keras_meta.data import decode_image


def drawing(levels=256):
    """A 12x16 drawing: white background, a black stroke, anti-aliased
    edges and a gray ramp; values are multiples of 255 / (levels - 1)."""
    image = np.full((12, 16), 255, np.int64)
    image[2:10, 3:6] = 0
    image[2:10, 6] = 100
    image[5, 7:15] = np.linspace(0, 254, 8).astype(int)
    step = 255 // (levels - 1)
    return (np.rint(image / step) * step).astype(np.uint8)


REFERENCE = drawing()


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png(pixels, color_type, bit_depth=8, palette=None, trns=None):
    """A PNG of any colour type and bit depth (TF encodes only 8/16-bit
    gray, gray+alpha, RGB and RGBA)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    height, width = pixels.shape[:2]
    rows = []
    for row in pixels:
        if bit_depth == 16:
            raw = row.astype(">u2").tobytes()
        elif bit_depth == 8:
            raw = row.astype(np.uint8).tobytes()
        else:  # one sample per pixel, packed to bit_depth bits
            bits = np.unpackbits(row.astype(np.uint8), axis=1)
            raw = np.packbits(bits[:, 8 - bit_depth:].reshape(-1)).tobytes()
        rows.append(b"\0" + raw)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type,
                         0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
    if palette is not None:
        out += _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return (out + _chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + _chunk(b"IEND", b""))


def rgb(gray):
    return np.repeat(gray[..., None], 3, axis=-1)


def encodings():
    """(name, file bytes, expected array [h, w] uint8)."""
    g, ink = REFERENCE, 255 - REFERENCE
    zeros = np.zeros_like(g)
    binary = (g > 127).astype(np.uint8) * 255
    noise = np.random.default_rng(0).integers(0, 256, g.shape + (3,))
    grays = np.arange(256)
    yield "gray8", tf.io.encode_png(g[..., None]).numpy(), g
    yield "gray1", write_png(binary // 255, 0, 1), binary
    for depth in (2, 4):
        ref = drawing(1 << depth)
        yield f"gray{depth}", write_png(ref // (255 // ((1 << depth) - 1)),
                                        0, depth), ref
    yield "gray16", tf.io.encode_png(
        g[..., None].astype(np.uint16) * 257).numpy(), g
    # Within half a step of v * 257 rounds to v.
    yield "gray16_rounded", tf.io.encode_png(
        (g[..., None].astype(np.int64) * 257 + np.where(g > 0, -128, 128)
         [..., None]).astype(np.uint16)).numpy(), g
    yield "rgb_gray", tf.io.encode_png(rgb(g)).numpy(), g
    yield "rgba_ink_in_alpha", tf.io.encode_png(
        np.stack([zeros, zeros, zeros, ink], -1)).numpy(), g
    yield "rgba_opaque", tf.io.encode_png(
        np.concatenate([rgb(g), np.full_like(g, 255)[..., None]],
                       -1)).numpy(), g
    yield "rgba_white_ink_in_alpha", tf.io.encode_png(
        np.stack([zeros + 255] * 3 + [ink], -1)).numpy(), g
    # Transparent pixels keep whatever colour the exporter left there.
    hidden = np.where((ink == 0)[..., None], noise, 0).astype(np.uint8)
    yield "rgba_garbage_under_transparent", tf.io.encode_png(
        np.concatenate([hidden, ink[..., None]], -1)).numpy(), g
    yield "rgba16_ink_in_alpha", tf.io.encode_png(
        np.stack([zeros, zeros, zeros, ink], -1).astype(np.uint16)
        * 257).numpy(), g
    yield "gray_alpha", write_png(np.stack([zeros, ink], -1), 4), g
    yield "gray_alpha_png_tf", tf.io.encode_png(
        np.stack([zeros, ink], -1)).numpy(), g
    yield "palette", write_png(g, 3, palette=rgb(grays)), g
    yield "palette_alpha", write_png(
        g, 3, palette=np.zeros((256, 3)),
        trns=bytes(255 - grays.astype(np.uint8))), g
    ref4 = drawing(16)
    yield "palette4", write_png(ref4 // 17, 3, 4,
                                palette=rgb(np.arange(16) * 17)), ref4
    # A colour key: the background is stored as 7 and declared transparent.
    keyed = np.where(binary == 255, 7, 0)
    yield "gray_colour_key", write_png(keyed, 0, trns=b"\0\7"), binary
    yield "rgb_colour_key", write_png(rgb(keyed), 2,
                                      trns=b"\0\7\0\7\0\7"), binary


CASES = list(encodings())


@pytest.mark.parametrize("name, data, expected", CASES,
                         ids=[c[0] for c in CASES])
def test_every_png_encoding_gives_the_grayscale_array(name, data, expected):
    image = decode_image(data, name=name)
    assert image.dtype == np.uint8 and image.shape == expected.shape + (1,)
    np.testing.assert_array_equal(image[..., 0], expected)


@pytest.mark.parametrize("name, data, expected", CASES[:8] + CASES[10:11],
                         ids=[c[0] for c in CASES[:8] + CASES[10:11]])
def test_three_channels_repeat_the_gray(name, data, expected):
    np.testing.assert_array_equal(decode_image(data, channels=3),
                                  rgb(expected))


def test_colour_is_weighted_to_gray_and_kept_with_three_channels():
    image = np.full((4, 4, 3), 255, np.uint8)
    image[1:3, 1:3] = (255, 0, 0)  # red ink
    data = tf.io.encode_png(image).numpy()
    gray = decode_image(data)[..., 0]
    assert gray[1, 1] == 76 and gray[0, 0] == 255  # rint(0.2989 * 255)
    np.testing.assert_array_equal(decode_image(data, channels=3), image)
    rgba = np.concatenate([image, np.full((4, 4, 1), 255, np.uint8)], -1)
    rgba[0, 0, 3] = 0  # transparent: white whatever its colour
    np.testing.assert_array_equal(
        decode_image(tf.io.encode_png(rgba).numpy(), channels=3), image)


@pytest.mark.parametrize("colour", [False, True])
def test_jpeg_matches_tfs_decoder_and_the_drawing(colour):
    pixels = rgb(REFERENCE) if colour else REFERENCE[..., None]
    data = tf.io.encode_jpeg(pixels, quality=100).numpy()
    image = decode_image(data)[..., 0].astype(int)
    if not colour:
        np.testing.assert_array_equal(
            image, tf.io.decode_jpeg(data, channels=1,
                                     dct_method="INTEGER_ACCURATE")[..., 0])
    # Lossy: close to the drawing, not equal (TF's default fast DCT is off
    # by up to 19 here).
    assert np.abs(image - REFERENCE).max() <= 1


@pytest.mark.parametrize("data, reason", [
    (b"", "0 bytes"),
    (b"hello, not an image", "19 bytes"),
    (tf.io.encode_png(REFERENCE[..., None]).numpy()[:40], "40 bytes"),
])
def test_not_an_image_names_the_file(data, reason):
    with pytest.raises(ValueError, match=(
            r"^notes/a\.png is not a readable image \(PNG, JPEG, GIF, BMP "
            rf"or WebP expected; {reason}\)")):
        decode_image(data, name="notes/a.png")


def test_channels_must_be_one_or_three():
    with pytest.raises(ValueError, match="`channels` must be 1 or 3; got 4"):
        decode_image(tf.io.encode_png(REFERENCE[..., None]).numpy(),
                     channels=4)


# The classic 1x1 GIF whose one colour (index 0, black) is transparent.
TRANSPARENT_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff"
                   b"\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01"
                   b"\x00\x01\x00\x00\x02\x02D\x01\x00;")


def test_gif_transparency_is_refused_not_dropped():
    # TF would decode it as an opaque black pixel.
    with pytest.raises(ValueError, match=re.escape(
            "dot.gif is a GIF with a transparent colour, which TF decodes "
            "without its transparency; save it as a PNG")):
        decode_image(TRANSPARENT_GIF, name="dot.gif")
    opaque = TRANSPARENT_GIF.replace(b"!\xf9\x04\x01", b"!\xf9\x04\x00")
    np.testing.assert_array_equal(decode_image(opaque), [[[0]]])
