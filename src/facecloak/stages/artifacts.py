"""Per-image artifacts that stage 1 (pivot tuning) hands to stage 2, keyed by an explicit image id.

For each photo, ``<root>/<image_id>.safetensors`` holds the pivot W+ code, the frozen noise maps and the tuned
generator as fp16 *offsets* from the base generator (a full 1024 px generator copy per photo would be 4× larger), and
``<root>/<image_id>.json`` a small description: format version, the base generator's fingerprint and config, the
tuned weight names and the run's metrics. Both files are written to a temporary name and renamed into place, tensors
first, so a crash never leaves a half-written artifact, and the JSON's presence marks a complete one.

Stage 2 gets exactly the generator stage 1 measured: pivot tuning defines the tuned generator as
``base + float(fp16(delta))`` (:func:`facecloak.stages.tuned_generator.apply_deltas`), and loading applies the same
function to the stored fp16 offsets. An offset is only meaningful for the base it was taken from, so the artifact
records a SHA-256 fingerprint of every base tensor and loading refuses any other base.

A result also depends on the settings that produced it (pivot tuning, the generator and its projector, face
alignment, precision): callers name an artifact by the face *and* :func:`settings_key` of those settings, so a run
with other settings never picks up a stale result (it computes and stores its own).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from facecloak.errors import CorruptWeightsError, MissingWeightsError, WeightsError
from facecloak.models.stylegan2 import Generator
from facecloak.stages.tuned_generator import TuningResult, apply_deltas, tuned_parameter_names

FORMAT_VERSION = 1
"""Bumped whenever the layout of the files changes; loading refuses other versions."""

IMAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""Ids become file names, so they are restricted to characters that are safe on every file system."""

PIVOT_KEY = "pivot"
NOISE_PREFIX = "noise."
DELTA_PREFIX = "delta."


@dataclass
class StageTwoInputs:
    """What stage 2 needs for one photo: its pivot ``[n_latent, style_dim]``, noise maps and tuned generator."""

    image_id: str
    pivot: Tensor
    noise: list[Tensor]
    generator: Generator
    metrics: dict[str, float] = field(default_factory=dict)


def base_fingerprint(generator: Generator) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) of a generator, so offsets never meet the wrong base."""
    digest = hashlib.sha256()
    for name, tensor in sorted(generator.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


def settings_key(settings: Mapping[str, Any]) -> str:
    """Short hash of every setting a stage-1 result depends on (plain values; key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _check_id(image_id: str) -> str:
    if not IMAGE_ID_PATTERN.fullmatch(image_id):
        raise ValueError(
            f"image id {image_id!r} cannot name an artifact file: use letters, digits, '.', '_' or '-' "
            "(at most 200, not starting with '.' or '-')"
        )
    return image_id


def artifact_paths(root: str | os.PathLike[str], image_id: str) -> tuple[Path, Path]:
    """The tensor file and the JSON file of one image's artifact."""
    root = Path(root)
    return root / f"{_check_id(image_id)}.safetensors", root / f"{image_id}.json"


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_artifact(
    root: str | os.PathLike[str], result: TuningResult, base: Generator, fingerprint: str | None = None
) -> Path:
    """Write one image's stage-1 result next to the others; returns the JSON path (its presence = complete).

    ``fingerprint`` (of ``base``) can be passed to avoid re-hashing the base for every image.
    """
    tensor_path, json_path = artifact_paths(root, result.image_id)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = fingerprint or base_fingerprint(base)
    expected = set(tuned_parameter_names(base))
    if set(result.deltas) != expected:
        raise ValueError(f"result {result.image_id!r} does not hold an offset for every tuned weight of this base")
    tensors = {PIVOT_KEY: result.pivot.detach().cpu().float().contiguous()}
    tensors |= {f"{NOISE_PREFIX}{i}": n.detach().cpu().float().contiguous() for i, n in enumerate(result.noise)}
    tensors |= {f"{DELTA_PREFIX}{k}": d.detach().cpu().half().contiguous() for k, d in result.deltas.items()}
    header = {"image_id": result.image_id, "base_fingerprint": fingerprint, "format_version": str(FORMAT_VERSION)}
    _replace_atomically(tensor_path, lambda tmp: save_file(tensors, str(tmp), metadata=header))

    meta = {
        "format_version": FORMAT_VERSION,
        "image_id": result.image_id,
        "base_fingerprint": fingerprint,
        "generator_config": asdict(base.config),
        "tuned_weights": sorted(result.deltas),
        "noise_maps": len(result.noise),
        "tensor_bytes": tensor_path.stat().st_size,
        "metrics": result.metrics,
    }
    _replace_atomically(json_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True)))
    return json_path


def list_artifacts(root: str | os.PathLike[str]) -> list[str]:
    """Ids of the complete artifacts under ``root`` (for resuming stage 1 and driving stage 2)."""
    return sorted(p.stem for p in Path(root).glob("*.json") if IMAGE_ID_PATTERN.fullmatch(p.stem))


def load_artifact(
    root: str | os.PathLike[str], image_id: str, base: Generator, fingerprint: str | None = None
) -> StageTwoInputs:
    """Rebuild one photo's stage-2 inputs; refuses a base other than the one the offsets were taken from."""
    tensor_path, json_path = artifact_paths(root, image_id)
    if not json_path.exists() or not tensor_path.exists():
        raise MissingWeightsError(f"no complete stage-1 artifact for image {image_id!r} in {root}; run stage 1 for it")
    meta = json.loads(json_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorruptWeightsError(
            f"{json_path} has artifact format {meta.get('format_version')}, this version reads {FORMAT_VERSION}; "
            "re-run stage 1 for this image"
        )
    fingerprint = fingerprint or base_fingerprint(base)
    if meta["base_fingerprint"] != fingerprint:
        raise WeightsError(
            f"the stage-1 artifact of {image_id!r} was tuned from a different base generator "
            f"(fingerprint {meta['base_fingerprint'][:16]}…, config {meta['generator_config']}) than the one given "
            f"({fingerprint[:16]}…, config {asdict(base.config)}); load the StyleGAN2 weights stage 1 used, "
            "or re-run stage 1 with these"
        )
    with safe_open(str(tensor_path), framework="pt") as f:
        header = f.metadata() or {}
        if header.get("image_id") != image_id or header.get("base_fingerprint") != fingerprint:
            raise CorruptWeightsError(
                f"{tensor_path} and {json_path} describe different runs (tensor header {header}); "
                "re-run stage 1 for this image"
            )
        pivot = f.get_tensor(PIVOT_KEY)
        noise = [f.get_tensor(f"{NOISE_PREFIX}{i}") for i in range(meta["noise_maps"])]
        deltas = {name: f.get_tensor(f"{DELTA_PREFIX}{name}") for name in meta["tuned_weights"]}
    device = next(base.parameters()).device
    return StageTwoInputs(
        image_id=image_id,
        pivot=pivot.to(device),
        noise=[n.to(device) for n in noise],
        generator=apply_deltas(base, deltas),
        metrics=dict(meta.get("metrics", {})),
    )
