"""Image files and arrays in any common encoding to the pipeline's uint8.

The convention is the Omniglot files': uint8 intensities, dark ink on a
white (255) background, one channel unless more are asked for (the models
invert). Every encoding comes out that way:

- grayscale PNGs of any bit depth (1 to 16; 16-bit values are rounded to
  8 bits), RGB, palette (indexed) PNGs and JPEGs: as stored, colour turned
  to gray with the ITU-R BT.601 weights (exact when R = G = B);
- images with transparency (RGBA, gray + alpha, a palette or a colour key
  with `tRNS`): composited over white, so transparent pixels are
  background. When that leaves no contrast although the alpha channel has
  some (light ink on a transparent background), the ink is the alpha:
  intensity = 255 - alpha.

GIFs with a transparent colour are refused (TF drops GIF transparency).
JPEGs are decoded with the accurate integer DCT (TF's default fast DCT is
off by up to ~20 levels at sharp strokes).

Opaque images are never inverted: light ink on a dark opaque background
stays so (e.g. MNIST); a model for such data is built with `invert=False`.
"""

import struct

import numpy as np
import tensorflow as tf

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# ITU-R BT.601 luma, as tf.image.rgb_to_grayscale.
_LUMA = np.asarray([0.2989, 0.5870, 0.1140])


def _png_header(data):
    """(bit depth, colour type, tRNS payload or None) of a PNG's bytes."""
    bit_depth, color_type, trns = data[24], data[25], None
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"tRNS":
            trns = data[pos + 8:pos + 8 + length]
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return bit_depth, color_type, trns


def _to_8bit(pixels):
    """uint16 [0, 65535] rounded to uint8 [0, 255] (v * 257 -> v exactly)."""
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(
        np.uint8)


def _decode_png(data):
    """A PNG as uint8 [h, w, c], c in 1..4, with the colour key of a
    gray or RGB PNG's `tRNS` turned into an alpha channel."""
    bit_depth, color_type, trns = _png_header(data)
    dtype = tf.uint16 if bit_depth == 16 else tf.uint8
    pixels = tf.io.decode_png(data, channels=0, dtype=dtype).numpy()
    # TF applies a palette's tRNS (4 channels) but ignores a colour key.
    if trns and color_type in (0, 2) and pixels.shape[-1] in (1, 3):
        key = np.frombuffer(trns, ">u2")[:pixels.shape[-1]].astype(np.int64)
        if bit_depth < 8:  # decoded 1/2/4-bit gray is scaled to 8 bits
            key = key * 255 // ((1 << bit_depth) - 1)
        opaque = np.any(pixels != key, axis=-1, keepdims=True)
        alpha = (opaque * np.iinfo(pixels.dtype).max).astype(pixels.dtype)
        pixels = np.concatenate([pixels, alpha], axis=-1)
    return _to_8bit(pixels) if bit_depth == 16 else pixels


def _gray(color):
    """uint8 [h, w, 3] to [h, w, 1]; exact where R = G = B."""
    if np.array_equal(color[..., :1], color[..., 1:2]) and np.array_equal(
            color[..., :1], color[..., 2:3]):
        return color[..., :1]
    return np.rint(color @ _LUMA)[..., None].clip(0, 255).astype(np.uint8)


def _composite(color, alpha):
    """Colour (uint8 [h, w, c]) over white through alpha (uint8 [h, w, 1])."""
    a = alpha.astype(np.int32)
    out = (color.astype(np.int32) * a + 255 * (255 - a) + 127) // 255
    if out.min() == out.max() and alpha.min() != alpha.max():
        # Light ink on a transparent background: the alpha is the drawing.
        out = np.broadcast_to(255 - a, out.shape)
    return out.astype(np.uint8)


def to_channels(pixels, channels=1):
    """Decoded uint8 [h, w, c] (gray, gray+alpha, RGB, RGBA) to `channels`
    (1 or 3) by the conventions of this module."""
    c = pixels.shape[-1]
    color, alpha = (pixels, None) if c in (1, 3) else (
        pixels[..., :-1], pixels[..., -1:])
    if channels == 1 and color.shape[-1] == 3:
        color = _gray(color)
    if channels == 3 and color.shape[-1] == 1:
        color = np.repeat(color, 3, axis=-1)
    if alpha is not None:
        color = _composite(color, alpha)
    return np.ascontiguousarray(color)


def _refuse_transparent_gif(data, name):
    """TF decodes GIFs without their transparent colour, which would turn
    ink drawn on a transparent background into a blank image."""
    if data[:3] != b"GIF":
        return
    pos = data.find(b"\x21\xf9\x04")  # a graphic control extension
    while pos >= 0:
        if pos + 3 < len(data) and data[pos + 3] & 1:
            raise ValueError(
                f"{name} is a GIF with a transparent colour, which TF "
                "decodes without its transparency; save it as a PNG (its "
                "transparency is handled) or without transparency."
            )
        pos = data.find(b"\x21\xf9\x04", pos + 1)


def decode_image(data, channels=1, name="image"):
    """Decodes PNG, JPEG, GIF, BMP or WebP bytes to uint8 [h, w, channels].

    Args:
        data: the file's bytes.
        channels: 1 (grayscale) or 3 (RGB).
        name: the file, for error messages.

    Raises:
        ValueError: the bytes are not an image TF can decode, or a GIF with
            a transparent colour; the message names the file.
    """
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3; got {channels!r}.")
    try:
        if data[:len(PNG_SIGNATURE)] == PNG_SIGNATURE:
            pixels = _decode_png(data)
        elif data[:3] == JPEG_SIGNATURE:
            # TF's default DCT is the fast, inexact one (errors of ~20).
            pixels = tf.io.decode_jpeg(data, channels=0,
                                       dct_method="INTEGER_ACCURATE").numpy()
        else:
            pixels = tf.io.decode_image(data, channels=0,
                                        expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, struct.error, IndexError,
            ValueError) as e:
        reason = str(e).strip().split("\n")[0][:200]
        raise ValueError(
            f"{name} is not a readable image (PNG, JPEG, GIF, BMP or WebP "
            f"expected; {len(data)} bytes): {reason}"
        ) from e
    _refuse_transparent_gif(data, name)
    return to_channels(pixels, channels)


def _range(images):
    arrays = [np.asarray(x) for x in images]
    return (min(float(np.min(x)) for x in arrays if x.size),
            max(float(np.max(x)) for x in arrays if x.size))


def to_uint8(images, what="images"):
    """uint8 intensities from an array, or a list of arrays of one dtype.

    The range is judged over all the images together: uint8 as it is;
    other integer types when their values lie in [0, 255]; floats in
    [0, 1] are scaled by 255, floats in [0, 255] (some value above 1) are
    kept; both are rounded to the nearest integer.

    Args:
        images: an array, or a list of arrays of one dtype.
        what: names the images in error messages.

    Returns:
        The same structure (array or list), uint8.

    Raises:
        ValueError: another dtype, values outside those ranges, or
            non-finite floats; the message gives the range found.
    """
    single = not isinstance(images, (list, tuple))
    arrays = [images] if single else list(images)
    dtype = np.asarray(arrays[0]).dtype if arrays else np.dtype(np.uint8)
    if dtype == np.uint8:
        out = [np.asarray(x) for x in arrays]
        return out[0] if single else out
    if dtype.kind not in "iuf":
        raise ValueError(
            f"{what} have dtype {dtype}; expected uint8 in [0, 255], another "
            "integer type with values in [0, 255], or floats in [0, 1] or "
            "[0, 255]."
        )
    arrays = [np.asarray(x) for x in arrays]
    if dtype.kind == "f" and not all(np.all(np.isfinite(x)) for x in arrays):
        raise ValueError(f"{what} hold NaN or infinite values ({dtype}).")
    lo, hi = _range(arrays) if any(x.size for x in arrays) else (0.0, 0.0)
    if dtype.kind == "f" and lo >= 0 and hi <= 1:
        scale = 255.0
    elif lo >= 0 and hi <= 255:
        scale = 1.0
    else:
        expected = ("[0, 1] or [0, 255]" if dtype.kind == "f" else
                    "[0, 255] (16-bit images: convert with "
                    "tf.image.convert_image_dtype(images, tf.uint8) first)")
        raise ValueError(
            f"{what} ({dtype}) hold values in [{lo:g}, {hi:g}]; expected "
            f"{expected}."
        )
    out = [np.rint(x.astype(np.float64) * scale).astype(np.uint8)
           for x in arrays]
    return out[0] if single else out
