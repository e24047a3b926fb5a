"""`facecloak evaluate` end to end on two people of the shared faces, with a tiny protect generator and 2 PGD steps."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from facecloak.cli.main import main
from facecloak.errors import ConfigError
from facecloak.evaluation.harness import NO_TRANSFORM, TASKS, photo_path, select_probe_items
from facecloak.evaluation.protocol import ProtocolItem
from facecloak.evaluation.robustness import DEFAULT_TRANSFORMS
from test_protect import TINY as PROTECT_TINY

N_PEOPLE = 2
PHOTOS_PER_PERSON = 2
METHODS = ("clean", "pgd", "protect")
TINY = PROTECT_TINY[1:]  # the preset comes from evaluate's own --preset option


def _small_labelled_folder(faces_dir: Path, dest: Path) -> Path:
    """The first photos of the first people with enough photos, copied with their own labels.csv."""
    with (faces_dir / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_person: dict[str, list[str]] = {}
    for row in rows:
        by_person.setdefault(row["identity"], []).append(row["path"])
    chosen = [(p, paths[:PHOTOS_PER_PERSON]) for p, paths in by_person.items() if len(paths) >= PHOTOS_PER_PERSON]
    with (dest / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["identity", "path"])
        for person, paths in chosen[:N_PEOPLE]:
            for relative in paths:
                (dest / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(faces_dir / relative, dest / relative)
                writer.writerow([person, relative])
    return dest


@pytest.fixture(scope="module")
def run(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    faces = _small_labelled_folder(faces_dir, tmp_path_factory.mktemp("faces"))
    out = tmp_path_factory.mktemp("evaluate")
    argv = ["evaluate", "--faces", str(faces), "--out", str(out), "--methods", *METHODS]
    code = main([*argv, "--n-photos", str(N_PEOPLE), "--steps", "2", *TINY])
    report = json.loads((out / "report.json").read_text())
    return {"code": code, "out": out, "report": report}


def test_writes_every_report_file_and_photo(run: dict) -> None:
    assert run["code"] == 0
    out: Path = run["out"]
    for name in ("report.json", "report.md", "psr_vs_threshold.png", "grid.png"):
        assert (out / name).stat().st_size > 0, name
    report = run["report"]
    assert len(report["probes"]) == N_PEOPLE
    for method in ("original", *METHODS):
        for image_id in report["probes"]:
            assert photo_path(out, method, image_id).is_file(), (method, image_id)


def _cells(report: dict, method: str, variant: str = NO_TRANSFORM) -> list[dict]:
    psr = report["methods"][method]["psr"][variant]
    return [cell for task in TASKS for levels in psr[task].values() for cell in levels.values()]


def test_clean_photos_never_dodge_and_rates_are_rates(run: dict) -> None:
    report = run["report"]
    models = [*report["models"]["attacked"], *report["models"]["held_out"]]
    for task in TASKS:
        assert sorted(report["methods"]["clean"]["psr"][NO_TRANSFORM][task]) == sorted(models)
    clean = _cells(report, "clean")
    assert len(clean) == len(TASKS) * len(models) * len(report["far_levels"])
    assert all(cell["available"] and cell["total"] == N_PEOPLE and cell["rate"] == 0.0 for cell in clean)
    for method in METHODS:
        for variant in (NO_TRANSFORM, *DEFAULT_TRANSFORMS):
            assert all(0.0 <= cell["rate"] <= 1.0 for cell in _cells(report, method, variant)), (method, variant)


def test_robustness_quality_and_cost_are_reported(run: dict) -> None:
    report = run["report"]
    for method in METHODS:
        result = report["methods"][method]
        assert set(result["psr"]) == {NO_TRANSFORM, *DEFAULT_TRANSFORMS}
        assert result["n"] == N_PEOPLE and not result["failures"]
        assert result["seconds_per_photo"] >= 0
        for photo in result["photos"]:
            assert set(photo["similarity"]) == {NO_TRANSFORM, *DEFAULT_TRANSFORMS}
    clean, pgd = report["methods"]["clean"]["quality"], report["methods"]["pgd"]["quality"]
    assert math.isinf(clean["face"]["psnr"]) and clean["photo"]["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert 20 < pgd["face"]["psnr"] < pgd["photo"]["psnr"]  # the budget is spent on the face only
    assert report["methods"]["pgd"]["seconds_per_photo"] > 0


def test_markdown_has_the_papers_table_layout(run: dict) -> None:
    markdown = (run["out"] / "report.md").read_text()
    report = run["report"]
    header = next(line for line in markdown.splitlines() if line.startswith("| method | "))
    for model in [*report["models"]["attacked"], *report["models"]["held_out"]]:
        assert model in header
    assert f"{report['models']['held_out'][0]} (held out)" in header
    for method in METHODS:
        assert f"| {method} |" in markdown
    assert "| method | none | " + " | ".join(DEFAULT_TRANSFORMS) + " |" in markdown


def test_probes_are_first_photos_of_people_with_two_or_more() -> None:
    items = [
        ProtocolItem(image_id, Path(f"{image_id}.jpg"), person, "t")
        for image_id, person in [("a/1", "a"), ("b/1", "b"), ("b/2", "b"), ("c/1", "c"), ("c/2", "c")]
    ]
    assert [i.image_id for i in select_probe_items(items, 2)] == ["b/1", "c/1"]
    with pytest.raises(ConfigError, match="only 2 people"):
        select_probe_items(items, 3)
