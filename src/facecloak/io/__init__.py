"""Photo input and output: decode anything users hand us, write results without metadata."""

from facecloak.io.images import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    Photo,
    load_photo,
    save_image,
    save_jpeg,
    save_png,
)

__all__ = [
    "DEFAULT_JPEG_QUALITY",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "Photo",
    "load_photo",
    "save_image",
    "save_jpeg",
    "save_png",
]
