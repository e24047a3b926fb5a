"""Run a protection job over many photos: skip finished ones, record failures, keep going, check completeness.

Photos go to the protector in batches of ``protect.batch_faces`` (their faces share the stages' runs); each photo is
still recorded on its own, so a rerun skips the photos of a batch that were recorded and redoes the others.

Under torchrun or SLURM each rank protects its own round-robin share of the photos (a photo's result depends only
on the seed and the photo, so it is the same with any number of ranks); every output is written once, by the rank
that owns the photo. The ranks meet at a final barrier, after which rank 0 writes ``summary.json`` and says which
photos are missing if a rank crashed — the job checks its own completeness instead of trusting exit codes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from facecloak.config.compose import to_plain
from facecloak.config.schema import AppConfig
from facecloak.errors import FacecloakError
from facecloak.protect.job import (
    DONE,
    FAILED,
    STAGE_DIR_NAME,
    JobManifest,
    config_fingerprint,
    file_sha256,
    write_json_atomic,
)
from facecloak.protect.pipeline import image_id_for

log = logging.getLogger(__name__)
SUMMARY_NAME = "summary.json"


def result_affecting_config(config: AppConfig) -> dict[str, Any]:
    """The resolved config minus settings that do not change results (logging, progress bars, rank layout)."""
    plain = to_plain(config)
    plain.pop("logger", None)
    # Only the running method's sections count (a job's fingerprint must not change with the other method's).
    unused = ("generator", "pivot", "search") if config.protect.method == "map" else ("map",)
    for section in unused:
        plain.pop(section, None)
    for key in ("progress_bar", "devices", "num_nodes", "strategy", "log_every_n_steps", "barrier_timeout_s"):
        plain.get("trainer", {}).pop(key, None)
    # The kind of device changes the numbers; which GPU a rank got does not.
    plain["device"] = str(plain["device"]).partition(":")[0]
    return plain


def run_protect_job(photos: Sequence[Path], out_dir: Path, config: AppConfig, restart: bool = False) -> dict:
    """Protect every photo; a rerun of the same command resumes, a changed config is refused."""
    from facecloak.runtime.devices import configure_backends, describe
    from facecloak.runtime.distributed import job_ranks
    from facecloak.runtime.trainer import own_logging_rank

    with job_ranks(config.trainer.barrier_timeout_s) as ranks:
        out_dir.mkdir(parents=True, exist_ok=True)
        affecting = result_affecting_config(config)
        fingerprint = config_fingerprint(affecting)
        # Rank 0 opens (or restarts) the job before any other rank reads it.
        if ranks.is_main:
            manifest = JobManifest.open(out_dir, fingerprint, restart=restart, config=affecting)
        ranks.barrier(config.trainer.barrier_timeout_s)
        if not ranks.is_main:
            manifest = JobManifest.open(out_dir, fingerprint)
        ids = {image_id_for(p): p for p in photos}
        mine = ranks.share(sorted(ids))
        rank_config = replace(config, device=ranks.device(config.device))
        trainer = rank_config.trainer
        if ranks.is_main:
            log.info(describe(torch.device(rank_config.device)))
        configure_backends(
            torch.device(rank_config.device), trainer.allow_tf32, trainer.cudnn_benchmark, trainer.deterministic
        )
        with own_logging_rank():
            _protect_share(mine, ids, out_dir, rank_config, manifest, ranks)
        missing_ranks = ranks.barrier(config.trainer.barrier_timeout_s)
        summary = _summary(manifest, ids, out_dir, missing_ranks, config.smoke)
        if ranks.is_main:
            write_json_atomic(out_dir / SUMMARY_NAME, summary)
    return summary


def _protect_share(
    mine: list[str], ids: dict[str, Path], out_dir: Path, config: AppConfig, manifest: JobManifest, ranks: Any
) -> None:
    """Protect this rank's photos, with one progress bar and (when configured) one W&B run."""
    from facecloak.protect.methods import build_protector
    from facecloak.runtime.progress import JobProgress
    from facecloak.runtime.trainer import build_logger, closing_logger

    pending = unfinished(manifest, mine)
    if len(pending) < len(mine):
        skipped = len(mine) - len(pending)
        log.info("%d of %d photo(s) already protected in %s: skipping them", skipped, len(mine), out_dir)
    trainer = config.trainer
    progress = JobProgress(len(mine), trainer.progress_bar, ranks.rank, ranks.world_size, trainer.log_every_n_steps)
    progress.bar.update(len(mine) - len(pending))
    logger = None
    if pending:
        run_name = f"protect-{out_dir.name}-rank{ranks.rank}"
        logger = build_logger(config.logger, run_name, to_plain(config), out_dir.name, default_dir=out_dir / "logs")
    try:
        with closing_logger(logger):
            # Set-up errors (missing weights, bad target photo) stop the job at once instead of failing every photo.
            protector = build_protector(config, out_dir / STAGE_DIR_NAME, logger, [progress]) if pending else None
            shown_notes: set[str] = set()
            # Batches are fixed groups of this rank's photos, whatever is already done, so a resumed job batches the
            # unfinished photos of a group as the killed run did.
            size, todo = config.protect.batch_faces, set(pending)
            position = {image_id: k for k, image_id in enumerate(pending)}  # the step each photo is logged at
            groups = [[i for i in mine[start : start + size] if i in todo] for start in range(0, len(mine), size)]
            for batch in ([(ids[image_id], image_id) for image_id in group] for group in groups if group):
                progress.start_photo(_batch_name([path for path, _ in batch]))
                assert protector is not None
                outcomes = protector.protect_photos(batch, out_dir)
                ids_of = [image_id for _, image_id in batch]
                # Each photo is recorded on its own, with its batch: a kill between two records reopens the batch.
                for (path, image_id), outcome in zip(batch, outcomes):
                    if isinstance(outcome, FacecloakError):
                        log.warning("%s: %s", path, outcome)
                        manifest.record(image_id, FAILED, source=str(path), error=str(outcome))
                    else:
                        outputs = dict(outcome["outputs"])
                        outputs.update({f"{k}_sha256": file_sha256(Path(v)) for k, v in outcome["outputs"].items()})
                        manifest.record(
                            image_id, DONE, source=str(path), outputs=outputs, record=f"{image_id}.json", batch=ids_of
                        )
                        _log_photo(logger, position[image_id], outcome)
                        log.info("%s", photo_line(path, outcome, shown_notes))
                    progress.finish_photo()
    finally:
        progress.close()


def unfinished(manifest: JobManifest, mine: Sequence[str]) -> list[str]:
    """The photos of ``mine`` to protect: those not done, and the batch-mates of a photo a kill left unrecorded.

    A batch's photos are recorded one after another; a kill in between leaves some recorded and some not. The whole
    batch is then redone, so its faces are batched as before and give the same bits (recorded outputs are rewritten
    with identical bytes); a photo merely added to the job never reopens finished batches.
    """
    entries = manifest.photos
    cut_short = {i for i in mine if any(mate not in entries for mate in entries.get(i, {}).get("batch", []))}
    return [i for i in mine if i in cut_short or not manifest.is_done(i)]


def _batch_name(paths: Sequence[Path]) -> str:
    """What the progress bar shows for a batch of photos: the first one's name, and how many go with it."""
    return paths[0].name if len(paths) == 1 else f"{paths[0].name} +{len(paths) - 1}"


def photo_line(path: Path, record: dict[str, Any], shown: set[str]) -> str:
    """One console line per finished photo: where its faces are, where the output went; each new note once."""
    faces = record["faces"]
    where = ", ".join("({:.0f},{:.0f})-({:.0f},{:.0f})".format(*f["box"]) for f in faces)
    found = record.get("faces_found", len(faces))
    line = f"{path.name}: {found} face(s) found, {len(faces)} protected at {where} -> {record['outputs']['photo']}"
    line += f" ({record['seconds']:.0f} s)"
    notes = [n for n in record.get("notes", []) if n not in shown]
    shown.update(notes)
    return "\n".join([line, *(f"  note: {note}" for note in notes)])


def _log_photo(logger: Any, index: int, record: dict[str, Any]) -> None:
    """Per-photo numbers for the W&B run (similarities and verdicts; never the image)."""
    if logger is None:
        return
    metrics: dict[str, float] = {"photo/index": index, "photo/seconds": float(record["seconds"])}
    for face in record["faces"]:
        for model, verdict in face.get("fr", {}).items():
            metrics[f"photo/face{face['face']}/{model}/protected"] = float(verdict["verdict"] == "protected")
            if verdict["after"] is not None:
                metrics[f"photo/face{face['face']}/{model}/after"] = verdict["after"]
    logger.log_metrics(metrics)


def _summary(manifest: JobManifest, ids: dict[str, Path], out_dir: Path, missing_ranks: list[int], smoke: bool) -> dict:
    """Counts, the verdicts of every protected face, failures and — if a rank crashed — the photos nobody finished.

    ``all_photos_processed`` says every photo was handled (done or failed), never that any face is protected: the
    ``verdicts`` section says that.
    """
    import json

    from facecloak.protect.verdict_table import verdict_summary

    entries = manifest.photos
    incomplete = sorted(i for i in ids if entries.get(i, {}).get("state") not in (DONE, FAILED))
    done = sorted(i for i in ids if entries.get(i, {}).get("state") == DONE)
    records = [json.loads((out_dir / entries[i]["record"]).read_text()) for i in done]
    summary = {
        "out_dir": str(out_dir),
        "counts": manifest.summary(sorted(ids)),
        "verdicts": verdict_summary(records, smoke),
        "failed": {i: e.get("error") for i, e in entries.items() if i in ids and e["state"] == FAILED},
        "photos": {i: str(p) for i, p in ids.items()},
        "all_photos_processed": not incomplete,
    }
    if incomplete:
        summary["incomplete"] = incomplete
        summary["missing_ranks"] = missing_ranks
        log.error("%d photo(s) unfinished (ranks missing: %s); rerun to resume", len(incomplete), missing_ranks)
    return summary
