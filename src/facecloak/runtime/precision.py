"""fp32 islands inside mixed-precision stages: where bf16/fp16 rounding would decide a loss, a norm or a verdict.

Under ``bf16-mixed`` the networks run in bf16 (autocast), which is what makes them fast. The quantities computed
*from* their outputs are small reductions whose error bf16 amplifies: an L2 normalisation and a cosine (bf16 keeps
8 bits of mantissa, so a cosine near an FR threshold moves by ~4e-3), 1 − MS-SSIM of two nearly equal images (the
difference of two numbers close to 1), a CLIP direction (a difference of two similar embeddings). Those are
computed in fp32 with autocast off, from fp32 copies of their inputs; outside autocast this is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

AUTOCAST_DEVICES = ("cpu", "cuda")


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Autocast off on every device type, so the enclosed ops run in the dtype of their (fp32) inputs."""
    with contextlib.ExitStack() as stack:
        for device_type in AUTOCAST_DEVICES:
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in fp32 when it is in a half type (bf16/fp16); fp32 and fp64 tensors unchanged (never narrowed)."""
    return tensor.float() if tensor.is_floating_point() and tensor.element_size() < 4 else tensor
