"""What a job sets up once and per rank: frozen networks built once per job, loss curves logged on every rank."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from facecloak.cli.main import main
from facecloak.inversion import projector
from facecloak.losses import perceptual
from facecloak.stages import pivot_tuning

TINY = ["preset=offline", "scale=smoke", "trainer.progress_bar=false", "generator.inversion=projector"]


@pytest.fixture(scope="module")
def rank_one_job(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two photos protected by a process that Lightning believes is rank 1 (RANK=1, as under torchrun)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    root = tmp_path_factory.mktemp("rank_one_job")
    built: list[str] = []
    real = perceptual.build_perceptual

    def counting(kind: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(kind)
        return real(kind, *args, **kwargs)

    photos = []
    for person, name in (("jack_dorsey", "img16.jpg"), ("katy_perry", "img26.jpg")):
        photos.append(root / f"{person}.jpg")
        shutil.copy(faces_dir / person / name, photos[-1])
    with pytest.MonkeyPatch.context() as patch:
        for module in (perceptual, projector, pivot_tuning):
            patch.setattr(module, "build_perceptual", counting)
        patch.setattr(rank_zero_only, "rank", 1)
        logs = root / "logs"
        code = main(
            [
                "protect",
                *map(str, photos),
                "--out",
                str(root / "out"),
                *TINY,
                "logger.kind=csv",
                f"logger.save_dir={logs}",
            ]
        )
        rank_after = rank_zero_only.rank  # type: ignore[attr-defined]
    return {"code": code, "out": root / "out", "logs": logs, "built": built, "rank_after": rank_after}


def test_perceptual_distance_is_built_once_per_job(rank_one_job: dict) -> None:
    assert rank_one_job["code"] == 0
    assert len(list(rank_one_job["out"].glob("*_before_after.png"))) == 2
    # projector and pivot tuning ask for the same kind here: one build serves both stages of both faces
    assert rank_one_job["built"] == ["msssim"]


def test_every_rank_logs_its_loss_curves(rank_one_job: dict) -> None:
    metrics = list(rank_one_job["logs"].rglob("metrics.csv"))
    assert metrics, "the rank-1 process logged nothing"
    keys = {key for path in metrics for row in csv.DictReader(path.open()) for key, value in row.items() if value}
    assert {"tune/loss", "search/loss"} <= keys
    assert rank_one_job["rank_after"] == 1  # the process's own rank is restored after the job
