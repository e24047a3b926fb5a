"""The weights registry as typed data: one entry per pretrained model, read from ``weights.yaml``.

Each entry says where the weights come from, how to verify them and what input they expect, so loaders never
guess preprocessing and every model in the project is listed in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from facecloak.errors import ConfigError

SOURCE_TYPES = ("url", "gdrive", "pypi", "npm", "installed", "manual", "shared")
KINDS = (
    "generator",
    "encoder",
    "clip",
    "face_recognition",
    "detector",
    "landmarks",
    "expression",
    "diffusion",
    "perceptual",
)


@dataclass(frozen=True)
class Source:
    """One place a weights file can be fetched from."""

    type: str
    url: str | None = None
    id: str | None = None
    package: str | None = None
    version: str | None = None
    module: str | None = None
    member: str | None = None
    archive: str | None = None
    note: str | None = None

    def describe(self) -> str:
        """Human-readable origin, for listings and error messages."""
        where = {
            "url": self.url,
            "gdrive": f"Google Drive id {self.id}",
            "pypi": f"PyPI {self.package}=={self.version}",
            "npm": f"npm {self.package}@{self.version}",
            "installed": f"installed package {self.module}",
            "manual": "manual download",
            "shared": "shared weights folder",
        }[self.type]
        inner = self.member or (self.archive and f"inside {self.archive}")
        return f"{where} ({inner})" if inner else str(where)


@dataclass(frozen=True)
class WeightsFile:
    """One file of a model, addressed by its path relative to the cache and the offline search path."""

    path: str
    sources: tuple[Source, ...]
    sha256: str | None = None


@dataclass(frozen=True)
class Preprocessing:
    """What the weights expect as input: ``x_net = (x01 * scale - mean) / std`` after alignment and resizing."""

    input_size: tuple[int, int] | None = None
    template: str | None = None
    color: str = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    embedding_norm: str = "l2"
    flip_concat: bool = False
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class Thresholds:
    """Published verification thresholds (cosine similarity) keyed by false-accept rate, with their source."""

    source: str
    far: dict[str, float]


@dataclass(frozen=True)
class ModelEntry:
    """A pretrained model: identity, provenance, files and the preprocessing its weights expect."""

    name: str
    kind: str
    description: str
    format: str
    licence: str
    files: tuple[WeightsFile, ...]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    architecture: str | None = None
    thresholds: Thresholds | None = None
    same_network_as: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metric: str = "cosine"
    """How its users compare two embeddings: ``cosine`` similarity, or ``euclidean`` distance (dlib's descriptor)."""


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _parse_entry(name: str, raw: dict[str, Any]) -> ModelEntry:
    where = f"weights registry entry '{name}'"
    try:
        files = tuple(
            WeightsFile(path=f["path"], sha256=f.get("sha256"), sources=tuple(Source(**s) for s in f["sources"]))
            for f in raw["files"]
        )
        pre = Preprocessing(**{k: _tuple(v) for k, v in raw.get("preprocessing", {}).items()})
        thresholds = Thresholds(**raw["thresholds"]) if "thresholds" in raw else None
        entry = ModelEntry(
            name=name,
            kind=raw["kind"],
            description=raw["description"],
            format=raw["format"],
            licence=raw["licence"],
            files=files,
            preprocessing=pre,
            architecture=raw.get("architecture"),
            thresholds=thresholds,
            same_network_as=raw.get("same_network_as"),
            config=dict(raw.get("config", {})),
            metric=raw.get("metric", "cosine"),
        )
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{where} is malformed: {err}") from err
    if entry.metric not in ("cosine", "euclidean"):
        raise ConfigError(f"{where}: metric '{entry.metric}' is not 'cosine' or 'euclidean'")
    if entry.kind not in KINDS:
        raise ConfigError(f"{where}: kind '{entry.kind}' is not one of {KINDS}")
    for f in entry.files:
        for s in f.sources:
            if s.type not in SOURCE_TYPES:
                raise ConfigError(f"{where}: source type '{s.type}' is not one of {SOURCE_TYPES}")
    return entry


@cache
def load_registry() -> dict[str, ModelEntry]:
    """Read the packaged ``weights.yaml`` once."""
    text = resources.files("facecloak.registry").joinpath("weights.yaml").read_text()
    raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["models"]  # libyaml: 10x faster
    return {name: _parse_entry(name, spec) for name, spec in raw.items()}


def get_entry(name: str) -> ModelEntry:
    """Registry entry by name, with the known names in the error so a typo is easy to fix."""
    registry = load_registry()
    if name not in registry:
        raise ConfigError(f"unknown model '{name}'. Known models: {', '.join(sorted(registry))}")
    return registry[name]


def entries_of_kind(kind: str) -> list[ModelEntry]:
    """All entries of one kind (e.g. every face-recognition model)."""
    return [e for e in load_registry().values() if e.kind == kind]
