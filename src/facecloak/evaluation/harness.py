"""The papers' evaluation protocol on a labelled photo folder: methods × FR models × FAR, robustness and quality.

Why one harness: every protection method (the unprotected photo, the L∞ pixel baselines, ``facecloak protect``) must
be judged by exactly the same code, on exactly what a user would upload (the saved uint8 photo), or the comparison
the papers make between them means nothing.

Protocol (dodging):

1. **Probes**: the first photo (labels order) of each of the first ``n_photos`` people with at least two photos; the
   **gallery** is every labelled photo, detected once and embedded by every judged model. Ids are the folder's
   explicit image ids (:func:`facecloak.evaluation.protocol.load_labelled_folder`).
2. Each method protects every probe; its photos are written as PNG to ``out/<method>/<image_id>.png`` (the
   originals to ``out/original/``).
3. Each protected photo is judged by every model in ``fr.attacked + fr.held_out`` with protect's own judge
   (:mod:`facecloak.verify.judge`): the face is re-detected on the saved pixels and matched to the original box by
   the judge's same-face rule. Each photo gets protect's verdicts (against its original at ``protect.far``; a
   re-detection miss is the verdict ``no_face_found``, never a pass). PSR per model × FAR
   (:func:`facecloak.evaluation.psr.protection_success`) against the gallery (no other photo of the same person
   matches) and against the photo's own original, again after each robustness transform; PSR measures a missed
   face at its original box (what a system with a better detector would see) and the misses are counted apart.
4. Identification rank-1 / rank-5 of every protected photo per model against the gallery (the person's other
   photos plus every other person's as distractors, :mod:`facecloak.evaluation.identification`), again after each
   robustness transform.
5. Quality (face box and whole photo, :func:`facecloak.verify.quality.measure_quality`) and cost: seconds and
   peak memory per photo and stage (:mod:`facecloak.evaluation.cost`; ``protect`` split into its two stages).

The result is plain data (``dict``) that :mod:`facecloak.evaluation.report` turns into files.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from facecloak.attacks.pixel import PIXEL_ATTACKS, PixelAttackConfig, build_pixel_attack, protect_photo_pixels
from facecloak.config.compose import resolve_data_path
from facecloak.config.schema import AppConfig
from facecloak.errors import ConfigError, FacecloakError
from facecloak.evaluation.cost import CostLog, memory_source, summarise_costs
from facecloak.evaluation.identification import RANKS, gallery_ranks, identification_summary
from facecloak.evaluation.probes import Probe, Protected
from facecloak.evaluation.protocol import ProtocolItem, load_labelled_folder
from facecloak.evaluation.psr import (
    FaceEmbedding,
    ModelEmbeddings,
    Task,
    max_similarity_to_gallery,
    protection_success,
    similarities_to_original,
)
from facecloak.evaluation.robustness import DEFAULT_TRANSFORMS, apply_transform
from facecloak.faces.crops import detector_from_config
from facecloak.faces.detect import Face
from facecloak.io.images import load_photo, save_png
from facecloak.losses.identity import AdversarialIdentityLoss
from facecloak.models.fr.zoo import load_fr_model
from facecloak.verify.judge import FaceJudge, Role, count_outcomes, face_outcome
from facecloak.verify.metrics import Metric
from facecloak.verify.quality import DEFAULT_METRICS, measure_photo_set, measure_quality
from facecloak.verify.thresholds import Threshold, ThresholdTable, build_threshold_table, far_key

log = logging.getLogger(__name__)

CLEAN = "clean"
PROTECT = "protect"
WARP = "warp"
"""``facecloak protect --method warp`` (the landmark warp), whatever method the configuration names."""
DEFAULT_METHODS = (CLEAN, *sorted(PIXEL_ATTACKS), PROTECT)
METHODS = (*DEFAULT_METHODS, WARP)
ORIGINAL_DIR = "original"
NO_TRANSFORM = "none"
"""Robustness variant name of the protected photo as saved."""
TASKS: tuple[Task, ...] = ("dodging_gallery", "dodging_original")
QUALITY_METRICS = DEFAULT_METRICS
"""Per-photo quality: PSNR, SSIM, MS-SSIM, HaarPSI, GMSD, and LPIPS (unavailable, with the fetch command, without
its weights)."""
SET_QUALITY_METRICS = ("fid", "kid")
"""Set-level quality (one value per method and region); unavailable, with the fetch command, without the weights."""
MIN_PHOTOS_PER_PERSON = 2
"""A probe needs at least one other photo of the same person for gallery dodging to be defined."""


@dataclass(frozen=True)
class EvaluationSettings:
    """What to evaluate: methods, how many people, the pixel baselines' budget, the robustness transforms."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    n_photos: int = 10
    eps_255: float = 8.0
    steps: int = 10
    transforms: tuple[str, ...] = DEFAULT_TRANSFORMS
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown evaluation methods {unknown}; choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods listed twice: {list(self.methods)}")
        if self.n_photos < 1:
            raise ConfigError(f"--n-photos must be at least 1, got {self.n_photos}")


@dataclass
class Gallery:
    """Clean embeddings of every usable labelled photo, per model, and the photos that could not be used."""

    embeddings: dict[str, list[FaceEmbedding]]
    failures: dict[str, str]


# ---------------------------------------------------------------- probes and gallery


def select_probe_items(items: Sequence[ProtocolItem], n_photos: int) -> list[ProtocolItem]:
    """First photo of each of the first ``n_photos`` people (in labels order) who have at least two photos."""
    counts: dict[str | None, int] = {}
    for item in items:
        counts[item.identity] = counts.get(item.identity, 0) + 1
    chosen: dict[str | None, ProtocolItem] = {}
    for item in items:
        if counts[item.identity] >= MIN_PHOTOS_PER_PERSON and item.identity not in chosen:
            chosen[item.identity] = item
    probes = list(chosen.values())[:n_photos]
    if len(probes) < n_photos:
        raise ConfigError(
            f"only {len(probes)} people have >= {MIN_PHOTOS_PER_PERSON} photos; lower --n-photos or add photos"
        )
    return probes


def load_probes_and_gallery(
    items: Sequence[ProtocolItem], n_photos: int, judge: FaceJudge, config: AppConfig
) -> tuple[list[Probe], Gallery]:
    """Detect and embed every labelled photo once; keep the probes' pixels and faces for the methods."""
    wanted = {item.image_id for item in select_probe_items(items, n_photos)}
    gallery = Gallery({model.name: [] for model in judge.models}, {})
    probes: list[Probe] = []
    for item in items:
        try:
            rgb = load_photo(item.path, max_pixels=config.faces.max_pixels).rgb
            faces = judge.detect(rgb)
        except FacecloakError as err:
            gallery.failures[item.image_id] = str(err)
            continue
        if not faces:
            gallery.failures[item.image_id] = "no face detected"
            continue
        for name, vector in judge.embed(rgb, faces[0]).items():
            gallery.embeddings[name].append(FaceEmbedding(item.image_id, vector, item.identity))
        if item.image_id in wanted:
            probes.append(Probe(item, rgb, faces[0]))
    lost = sorted(wanted - {p.image_id for p in probes})
    if lost:
        raise ConfigError(f"no usable face in probe photos {lost}: {[gallery.failures[i] for i in lost]}")
    return probes, gallery


# ---------------------------------------------------------------- the methods


MethodFn = Callable[[Sequence[Probe], AppConfig, EvaluationSettings, Path], dict[str, Protected]]


CLEAN_STAGE = "clean"
ATTACK_STAGE = "attack"


def _measured(stage: str, device: str, protect: Callable[[], np.ndarray]) -> Protected:
    """Run one probe's protection as a single measured stage."""
    costs = CostLog()
    with costs.stage(stage, device) as cost:
        rgb = protect()
    return Protected(rgb, cost.seconds, cost=costs.to_dict())


def _clean(probes: Sequence[Probe], config: AppConfig, settings: EvaluationSettings, out: Path) -> dict[str, Protected]:
    return {p.image_id: _measured(CLEAN_STAGE, config.device, p.rgb.copy) for p in probes}


def _pixel_method(name: str) -> MethodFn:
    def run(probes: Sequence[Probe], config: AppConfig, settings: EvaluationSettings, out: Path) -> dict:
        models = [load_fr_model(m, config.device) for m in config.fr.attacked]
        attack_config = PixelAttackConfig(eps_255=settings.eps_255, steps=settings.steps, seed=settings.seed)
        attack = build_pixel_attack(name, attack_config, AdversarialIdentityLoss(models, "dodge"))
        # The attack's steps run through a Trainer like every other stage (precision, accelerator, loss curves).
        from facecloak.stages.fit import job_trainer_kwargs
        from facecloak.stages.pixel_attack import trainer_perturb

        perturb = functools.partial(
            trainer_perturb, trainer_kwargs=job_trainer_kwargs(config.trainer, torch.device(config.device))
        )
        protect = functools.partial(protect_photo_pixels, perturb=perturb)
        return {
            probe.image_id: _measured(
                ATTACK_STAGE, config.device, functools.partial(protect, probe.rgb, [probe.face], attack)
            )
            for probe in probes
        }

    return run


def _protect(probes: Sequence[Probe], config: AppConfig, settings: EvaluationSettings, out: Path) -> dict:
    # Imported here: the protect pipeline brings the generator and its trainer, which the other methods never need.
    from facecloak.evaluation.metered_protect import protect_probes

    if config.protect.mode != "dodge":
        raise ConfigError("facecloak evaluate judges dodging; drop the protect.mode / --target override")
    return protect_probes(probes, config, out)


def method_runner(name: str) -> MethodFn:
    """How a method turns probes into protected photos (pixel baselines by their registered name)."""
    if name == CLEAN:
        return _clean
    if name == PROTECT:
        return _protect
    if name == WARP:
        return lambda probes, config, settings, out: _protect(
            probes, dataclasses.replace(config, protect=dataclasses.replace(config.protect, method=WARP)), settings, out
        )
    return _pixel_method(name)


# ---------------------------------------------------------------- judging


def _metric(judge: FaceJudge, name: str) -> Metric:
    return cast(Metric, next(m for m in judge.models if m.name == name).entry.metric)


def verdict_thresholds(judge: FaceJudge, thresholds: ThresholdTable, far: float) -> dict[str, Threshold]:
    """Each judged model's threshold at protect's FAR; a model without one gets no per-photo verdict."""
    out = {}
    for model in judge.models:
        try:
            out[model.name] = thresholds.get(model.name, far, model.entry.metric)
        except ConfigError as err:
            log.warning("no per-photo verdict for %s: %s", model.name, err)
    return out


def _rates(
    variant: dict[str, ModelEmbeddings], thresholds: ThresholdTable, far_levels: Sequence[float]
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{task: {model: {far: rate record}}}``; a missing threshold is reported, not fatal."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {task: {} for task in TASKS}
    for model, data in variant.items():
        for far in far_levels:
            try:
                rows = protection_success({model: data}, thresholds, TASKS, far_levels=[far])
            except ConfigError as err:
                for task in TASKS:
                    out[task].setdefault(model, {})[far_key(far)] = {"available": False, "reason": str(err)}
                continue
            for row in rows:
                out[row.task].setdefault(model, {})[far_key(far)] = {"available": True, **row.to_dict()}
    return out


def _tensor01(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def _int_box(face: Face) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (round(v) for v in face.box)
    return x0, y0, x1, y1


def _values(report: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``{region: {metric: value or {"unavailable": reason}}}`` from a quality report."""
    return {
        region: {m: r["value"] if r["available"] else {"unavailable": r["reason"]} for m, r in metrics.items()}
        for region, metrics in report.items()
    }


def _quality(original: np.ndarray, protected: np.ndarray, face: Face) -> dict[str, dict[str, Any]]:
    return _values(measure_quality(_tensor01(original), _tensor01(protected), _int_box(face), QUALITY_METRICS))


def _set_quality(probes: Sequence[Probe], protected: dict[str, Protected]) -> dict[str, dict[str, Any]]:
    """FID and KID of a method's photos against their originals: one value per region for the whole set."""
    outputs = [protected[p.image_id].rgb for p in probes]
    pairs = [(_tensor01(p.rgb), _tensor01(rgb)) for p, rgb in zip(probes, outputs) if rgb is not None]
    boxes = [_int_box(p.face) for p, rgb in zip(probes, outputs) if rgb is not None]
    report = measure_photo_set([x for x, _ in pairs], [y for _, y in pairs], boxes, SET_QUALITY_METRICS)
    return _values(report)


def _mean_quality(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for region in ("face", "photo"):
        out[region] = {}
        for metric in QUALITY_METRICS:
            values = [row["quality"][region][metric] for row in rows]
            numbers = [v for v in values if isinstance(v, float)]
            if len(numbers) == len(values) and numbers:
                out[region][metric] = float(statistics.fmean(numbers))  # identical photos: PSNR +inf, kept so
            else:
                reasons = {v["unavailable"] for v in values if isinstance(v, dict)}
                out[region][metric] = {"unavailable": "; ".join(sorted(reasons)) or "no photos"}
    return out


def _merge_regions(*parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for region, metrics in part.items():
            merged.setdefault(region, {}).update(metrics)
    return merged


def judge_method(
    probes: Sequence[Probe],
    protected: dict[str, Protected],
    gallery: Gallery,
    judge: FaceJudge,
    thresholds: ThresholdTable,
    settings: EvaluationSettings,
    far_levels: Sequence[float],
    verdict_far: float,
) -> dict[str, Any]:
    """Everything measured of one method: verdicts, PSR, identification, per-photo values and ranks, quality, cost.

    Per photo, protect's verdicts at ``verdict_far``; PSR per robustness variant × task × model × FAR;
    identification rank-k per variant × model.
    """
    judged = [p for p in probes if protected[p.image_id].rgb is not None]
    originals = {p.image_id: judge.embed(p.rgb, p.face) for p in judged}
    at_far = verdict_thresholds(judge, thresholds, verdict_far)
    verdict_judge = FaceJudge(
        [m for m in judge.models if m.name in at_far], judge.detector, judge.faces_config, judge.device, judge.roles
    )
    photos: dict[str, dict[str, Any]] = {}
    psr: dict[str, Any] = {}
    identification: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in (NO_TRANSFORM, *settings.transforms):
        embeddings: dict[str, list[FaceEmbedding]] = {m.name: [] for m in judge.models}
        for probe in judged:
            rgb = protected[probe.image_id].rgb
            assert rgb is not None
            rgb = rgb if variant == NO_TRANSFORM else apply_transform(variant, rgb)
            found = judge.locate(rgb, probe.face)
            after = judge.embed(rgb, found or probe.face)  # PSR: a missed face at its original box
            for name, vector in after.items():
                embeddings[name].append(FaceEmbedding(probe.image_id, vector, probe.item.identity))
            entry = photos.setdefault(probe.image_id, {"redetect_miss": {}, "similarity": {}, "identity_rank": {}})
            entry["redetect_miss"][variant] = found is None
            if variant == NO_TRANSFORM:
                original = originals[probe.image_id]
                verdicts = verdict_judge.verdicts(original, original, after if found else None, at_far)
                entry["verdicts"] = {name: v.to_record() for name, v in verdicts.items()}
        data = {
            name: ModelEmbeddings(
                protected=faces,
                originals=[FaceEmbedding(i, o[name], None) for i, o in originals.items()],
                gallery=gallery.embeddings[name],
                metric=_metric(judge, name),
            )
            for name, faces in embeddings.items()
        }
        if judged:
            psr[variant] = _rates(data, thresholds, far_levels)
            identification[variant] = {}
            for name, model_data in data.items():
                ranks = gallery_ranks(model_data.protected, model_data.gallery, model_data.metric)
                identification[variant][name] = identification_summary(ranks)
                for probe, rank in zip(judged, ranks):
                    ranks_of = photos[probe.image_id]["identity_rank"].setdefault(variant, {})
                    ranks_of[name] = None if math.isnan(rank) else int(rank)
                sims = {
                    "dodging_gallery": max_similarity_to_gallery(
                        model_data.protected, model_data.gallery, model_data.metric
                    ),
                    "dodging_original": similarities_to_original(
                        model_data.protected, model_data.originals, model_data.metric
                    ),
                }
                for index, probe in enumerate(judged):
                    per_task = photos[probe.image_id]["similarity"].setdefault(variant, {})
                    for task, values in sims.items():
                        value = float(values[index])
                        per_task.setdefault(task, {})[name] = None if math.isnan(value) else value
    rows = []
    for probe in probes:
        result = protected[probe.image_id]
        row: dict[str, Any] = {
            "image_id": probe.image_id,
            "identity": probe.item.identity,
            "source": str(probe.item.path),
            "box": [float(v) for v in probe.face.box],
            "seconds": result.seconds,
            "cost": result.cost,
        }
        if result.rgb is None:
            row["error"] = result.error
        else:
            row.update(photos[probe.image_id])
            row["quality"] = _quality(probe.rgb, result.rgb, probe.face)
        rows.append(row)
    ok = [row for row in rows if "error" not in row]
    return {
        "n": len(ok),
        "verdicts": count_outcomes(face_outcome(row["verdicts"].values()) for row in ok if row.get("verdicts")),
        "no_face_found": {
            variant: sum(bool(row["redetect_miss"].get(variant)) for row in ok) for variant in psr or (NO_TRANSFORM,)
        },
        "failures": {row["image_id"]: row["error"] for row in rows if "error" in row},
        "seconds_per_photo": float(statistics.fmean(r["seconds"] for r in ok)) if ok else float("nan"),
        "cost": summarise_costs([row["cost"] for row in ok]),
        "psr": psr,
        "identification": identification,
        "quality": _merge_regions(_mean_quality(ok), _set_quality(judged, protected)),
        "photos": rows,
    }


# ---------------------------------------------------------------- the whole run


def photo_path(out_dir: Path, folder: str, image_id: str) -> Path:
    """Where a method's (or the original) photo of ``image_id`` is written: ``out/<folder>/<image_id>.png``."""
    return out_dir / folder / f"{image_id}.png"


def judged_models(config: AppConfig) -> list[str]:
    """Every model the evaluation reports on: attacked first, then held out."""
    return [*config.fr.attacked, *config.fr.held_out]


def evaluate(faces_dir: Path, out_dir: Path, config: AppConfig, settings: EvaluationSettings) -> dict[str, Any]:
    """Run the protocol for every method; write the photos under ``out_dir``; return the report's data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_labelled_folder(faces_dir)
    models = judged_models(config)
    thresholds = build_threshold_table(
        models, resolve_data_path(config.fr.calibration), prefer=cast(Any, config.fr.threshold_source)
    )
    far_levels = list(config.fr.far_levels)
    roles: dict[str, Role] = {
        **{m: "attacked" for m in config.fr.attacked},
        **{m: "held_out" for m in config.fr.held_out},
    }
    judge = FaceJudge(
        [load_fr_model(m, config.device) for m in models],
        detector_from_config(config.faces, config.device),
        config.faces,
        config.device,
        roles,
    )
    probes, gallery = load_probes_and_gallery(list(dataset), settings.n_photos, judge, config)
    log.info("%d probes, %d gallery photos", len(probes), len(gallery.embeddings[models[0]]))
    for probe in probes:
        save_png(_mkparent(photo_path(out_dir, ORIGINAL_DIR, probe.image_id)), probe.rgb)
    methods: dict[str, Any] = {}
    for method in settings.methods:
        log.info("evaluate: %s", method)
        protected = method_runner(method)(probes, config, settings, out_dir / method)
        for image_id, result in protected.items():
            if result.rgb is not None:
                save_png(_mkparent(photo_path(out_dir, method, image_id)), result.rgb)
        methods[method] = judge_method(
            probes, protected, gallery, judge, thresholds, settings, far_levels, config.protect.far
        )
    report: dict[str, Any] = {
        "settings": {**asdict(settings), "faces_dir": str(faces_dir), "device": config.device},
        "models": {"attacked": list(config.fr.attacked), "held_out": list(config.fr.held_out)},
        "metrics": {m.name: m.entry.metric for m in judge.models},
        "verdict_far": far_key(config.protect.far),
        "threshold_source": config.fr.threshold_source,
        "far_levels": [far_key(f) for f in far_levels],
        "identification_ranks": list(RANKS),
        "cost_memory": _memory_sources(methods, config.device),
        "thresholds": {m: t for m, t in thresholds.describe().items() if m in models},
        "probes": [p.image_id for p in probes],
        "gallery": {"n": len(gallery.embeddings[models[0]]), "failures": gallery.failures},
        "methods": methods,
    }
    if config.smoke:
        report["not_results"] = "scale=smoke run: it checks the code path at a tiny size; these numbers are NOT results"
    return report


def _memory_sources(methods: dict[str, Any], device: str) -> str:
    """What the cost table's memory columns measured in this run (the device's method when nothing was measured)."""
    used = {c["memory_source"] for r in methods.values() for c in r["cost"].values() if c["memory_source"]}
    return "; ".join(sorted(used)) or memory_source(device)


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
