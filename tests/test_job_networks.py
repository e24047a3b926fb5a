"""A protect job builds each frozen network once, not once per face (VGG/LPIPS loads cost seconds and ~0.5 GB)."""

from __future__ import annotations

import shutil
from pathlib import Path

from facecloak.cli.main import main
from facecloak.inversion import projector
from facecloak.losses import perceptual
from facecloak.stages import pivot_tuning

TINY = ["preset=offline", "scale=smoke", "trainer.progress_bar=false", "logger.kind=none"]


def test_perceptual_distance_is_built_once_per_job(faces_dir: Path, tmp_path: Path, monkeypatch) -> None:
    built: list[str] = []
    real = perceptual.build_perceptual

    def counting(kind: str, *args, **kwargs):
        built.append(kind)
        return real(kind, *args, **kwargs)

    for module in (perceptual, projector, pivot_tuning):
        monkeypatch.setattr(module, "build_perceptual", counting)
    photos = []
    for person, name in (("jack_dorsey", "img16.jpg"), ("katy_perry", "img26.jpg")):
        photos.append(tmp_path / f"{person}.jpg")
        shutil.copy(faces_dir / person / name, photos[-1])
    out = tmp_path / "out"
    assert main(["protect", *map(str, photos), "--out", str(out), *TINY, "generator.inversion=projector"]) == 0
    assert len(list(out.glob("*_before_after.png"))) == 2
    # projector and pivot tuning ask for the same kind here, so one build serves both stages of both faces
    assert len(built) == len(set(built)) == 1, built
