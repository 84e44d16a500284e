"""Images for the model: check, downscale, and wrap them as :class:`ImagePart`.

A figure reaches the model from three places: a PNG/JPEG the ``python`` tool's code
displays or plots, a matplotlib ``Figure`` / PIL image / displayable object named in a
prompt (``{fig}``, ``{Out[5]}``). Each goes through :func:`image_part`, which refuses what
no provider takes and shrinks the rest below every provider's documented limits:

* Anthropic: at most 5 MB per image once base64-encoded and 8000 px a side (2000 px when
  a request has more than 20 images); an image whose long edge passes 1568 px or that has
  more than about 1.15 megapixels is downscaled by the API itself, so larger costs
  upload time and buys nothing.
* OpenAI chat completions: a "high detail" image is scaled to fit 2048x2048 and then to
  768 px on its short side; a request carries at most 50 MB of images.

So an image is sent with a long edge of at most 1568 px, at most 1.15 megapixels and at
most 3.75 MB (5 MB in base64), re-encoded as JPEG when a PNG is still too heavy. The
transcript keeps the downscaled image, which is what the model saw.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import sys
import warnings
from typing import Any

from .message import ImagePart

MAX_EDGE = 1568
MAX_PIXELS = 1_150_000
MAX_BYTES = 3_750_000  # 5 MB once base64-encoded
#: Refused before decoding: bigger inputs are mistakes, not plots (and decompression bombs).
MAX_INPUT_BYTES = 50_000_000
#: Media types the model is sent, with the extension of their file in the store.
MEDIA_TYPES = {"image/png": "png", "image/jpeg": "jpg"}
_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}
JPEG_QUALITY = 85


class ImageError(ValueError):
    """An image the model cannot be sent; the message says why and what to do."""


def image_part(data: bytes, media_type: str, label: str = "") -> ImagePart:
    """An :class:`ImagePart` holding ``data`` checked and downscaled; :class:`ImageError` if
    it is not a PNG or JPEG image or is too large to decode. The declared ``media_type``
    only has to be one of those two: what the bytes hold decides."""
    what = label or "the image"
    if media_type not in MEDIA_TYPES:
        raise ImageError(_unsupported(what, media_type))
    if len(data) > MAX_INPUT_BYTES:
        raise ImageError(
            f"{what} is {len(data) / 1e6:.0f} MB, over the {MAX_INPUT_BYTES // 1_000_000} MB "
            "an image may have; save it smaller (fewer pixels or dpi)"
        )
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                actual = _FORMATS.get(img.format or "")
                if actual is None:
                    raise ImageError(
                        f"{what} says {media_type} but holds {img.format or 'unknown'} data; "
                        "show it as PNG or JPEG"
                    )
                img.load()
                data, media_type, width, height = _fit(img, data, actual)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard, checked from the header before any pixel is decoded.
        raise ImageError(
            f"{what} has too many pixels to decode safely (over "
            f"{Image.MAX_IMAGE_PIXELS // 1_000_000} megapixels); save it with fewer pixels"
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageError(
            f"{what} could not be read as {media_type} (its bytes are no image format known); "
            "show it as a PNG or JPEG image"
        ) from None
    except (OSError, ValueError) as e:
        raise ImageError(
            f"{what} could not be read as {media_type} ({e}); show it as a PNG or JPEG image"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    part = ImagePart(
        media_type, f"{digest}.{MEDIA_TYPES[media_type]}", width, height, len(data), label
    )
    part.data = data
    return part


def _unsupported(what: str, media_type: str) -> str:
    return (
        f"{what} is {media_type}, which models are not sent; "
        "show it as PNG or JPEG (e.g. PIL's img.save(buf, 'PNG'))"
    )


def _fit(img: Any, data: bytes, media_type: str) -> tuple[bytes, str, int, int]:
    """The image within MAX_EDGE, MAX_PIXELS and MAX_BYTES: (bytes, media type, w, h)."""
    from PIL import Image

    width, height = img.size
    scale = _scale(width, height)
    if scale >= 1.0 and len(data) <= MAX_BYTES:
        return data, media_type, width, height
    if img.mode not in ("RGB", "RGBA", "L"):
        img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
    if scale < 1.0:
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    if media_type == "image/png":
        encoded = _encode(img, "PNG")
        if len(encoded) <= MAX_BYTES:
            return encoded, media_type, *img.size
    # A photo-like PNG (or a JPEG still too heavy): JPEG, quality lowered until it fits.
    rgb = img.convert("RGB") if img.mode != "RGB" else img
    for quality in (JPEG_QUALITY, 70, 50):
        encoded = _encode(rgb, "JPEG", quality=quality)
        if len(encoded) <= MAX_BYTES:
            break
    return encoded, "image/jpeg", *rgb.size


def _scale(width: float, height: float) -> float:
    """The factor that brings an image within MAX_EDGE and MAX_PIXELS (>= 1: it fits)."""
    return min(MAX_EDGE / max(width, height, 1), math.sqrt(MAX_PIXELS / max(width * height, 1)))


def _encode(img: Any, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


# -- from notebook values ----------------------------------------------------------------------


def image_from_value(value: Any, label: str = "") -> ImagePart | None:
    """The image a notebook value shows, or ``None`` if it shows none.

    A matplotlib ``Figure`` (or ``Axes``: its figure), a PIL image, or any object with
    ``_repr_png_`` / ``_repr_jpeg_`` (``IPython.display.Image``, many plotting libraries).
    Raises :class:`ImageError` when the value is an image that cannot be sent.
    """
    figure = _matplotlib_figure(value)
    if figure is not None:
        # Drawn at a dpi that already fits: sharper text and faster than shrinking after.
        width, height = figure.get_size_inches() * figure.dpi
        dpi = figure.dpi * min(1.0, _scale(width, height))
        out = io.BytesIO()
        figure.savefig(out, format="png", bbox_inches="tight", dpi=dpi)
        return image_part(out.getvalue(), "image/png", label)
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(value, pil.Image):
        fmt = "JPEG" if value.format == "JPEG" else "PNG"
        img = value if fmt == "PNG" or value.mode in ("RGB", "L") else value.convert("RGB")
        return image_part(_encode(img, fmt), _FORMATS[fmt], label)
    for method, media_type in (("_repr_png_", "image/png"), ("_repr_jpeg_", "image/jpeg")):
        render = getattr(type(value), method, None)
        if not callable(render):
            continue
        rendered = render(value)
        if isinstance(rendered, tuple):  # (data, metadata), as IPython allows
            rendered = rendered[0]
        if rendered is not None:
            return image_part(decode_display_data(rendered, media_type, label), media_type, label)
    return None


def _matplotlib_figure(value: Any) -> Any:
    if not type(value).__module__.startswith("matplotlib."):
        return None
    if callable(getattr(value, "savefig", None)):
        return value
    figure = getattr(value, "figure", None)  # an Axes or any artist
    return figure if callable(getattr(figure, "savefig", None)) else None


def decode_display_data(value: Any, media_type: str, label: str = "") -> bytes:
    """The bytes of a display bundle's image entry: raw bytes, or base64 text as in ``.ipynb``."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, list):  # nbformat may split long strings into lines
        value = "".join(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError):
            pass
    raise ImageError(
        f"{label or 'the image'}: its {media_type} data is neither bytes nor base64 text"
    )


class PromptImages:
    """Turns the images a prompt names (``{fig}``, ``{Out[5]}``) into attached images.

    Pass as ``render`` to :func:`jupyter_crush.kernel.interpolate.interpolate`: each placeholder
    whose value shows an image becomes a one-line description in the text, the image is
    kept in :attr:`images`, and an image that cannot be sent leaves the value's ``str``
    and a line in :attr:`problems` saying why.
    """

    def __init__(self) -> None:
        self.images: list[ImagePart] = []
        self.problems: list[str] = []

    def __call__(self, placeholder: str, value: Any) -> str | None:
        try:
            image = image_from_value(value, placeholder)
        except ImageError as error:
            self.problems.append(f"{placeholder}: image not attached: {error}")
            return None
        except Exception as error:  # a broken _repr_png_ or savefig must not lose the prompt
            self.problems.append(f"{placeholder}: image not attached: rendering failed: {error}")
            return None
        if image is None:
            return None
        self.images.append(image)
        return f"{image.describe()} (attached below)"


def images_from_bundle(bundle: dict[str, Any], label: str) -> tuple[list[ImagePart], list[str]]:
    """The PNG/JPEG images of a display bundle, and a one-line note per image refused."""
    images: list[ImagePart] = []
    notes: list[str] = []
    for media_type, value in bundle.items():
        if not media_type.startswith("image/") or media_type == "image/svg+xml":
            continue  # SVG is text: the summary of the display already covers it
        if media_type not in MEDIA_TYPES:
            notes.append(f"[image not sent: {_unsupported(label, media_type)}]")
            continue
        try:
            images.append(
                image_part(decode_display_data(value, media_type, label), media_type, label)
            )
        except ImageError as error:
            notes.append(f"[image not sent: {error}]")
    return images, notes
