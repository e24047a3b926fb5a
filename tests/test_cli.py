"""The command line: weights registry commands, align and embed on real photos, clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facecloak.cli.main import main, split_overrides


def test_split_overrides_keeps_options_and_paths() -> None:
    plain, overrides = split_overrides(["align", "a.jpg", "--out=x", "faces.min_face_size=40", "fr=paper"])
    assert plain == ["align", "a.jpg", "--out=x"]
    assert overrides == ["faces.min_face_size=40", "fr=paper"]


def test_weights_list_and_path(capsys) -> None:
    assert main(["weights", "list", "--kind", "face_recognition"]) == 0
    listing = capsys.readouterr().out
    assert "irse50" in listing and "faceres" in listing and "present" in listing and "missing" in listing
    assert main(["weights", "path", "faceres"]) == 0
    paths = capsys.readouterr().out.split()
    assert [Path(p).name for p in paths] == ["faceres.json", "faceres.bin"]


def test_weights_verify_present_files(capsys) -> None:
    assert main(["weights", "verify", "faceres", "mtcnn"]) == 0
    out = capsys.readouterr().out
    assert out.count("OK") == 5


def test_missing_weights_give_the_fetch_command(capsys, tmp_path: Path) -> None:
    assert main(["weights", "path", "stylegan2_ffhq_1024", "--cache-dir", str(tmp_path)]) == 2
    assert "facecloak weights fetch stylegan2_ffhq_1024" in capsys.readouterr().err


def test_bad_override_names_the_key(capsys, faces_dir: Path, tmp_path: Path) -> None:
    photo = faces_dir / "_multi" / "couple.jpg"
    assert main(["align", str(photo), "--out", str(tmp_path), "faces.min_face_sise=30"]) == 2
    assert "faces.min_face_sise" in capsys.readouterr().err


def test_align_every_face_and_keep_going_after_bad_files(faces_dir: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "crops"
    code = main(["align", str(faces_dir / "_multi" / "couple.jpg"), str(broken), "--out", str(out)])
    assert code == 0
    records = json.loads((out / "align.json").read_text())
    faces = [r for r in records if "crop" in r]
    assert len(faces) == 2 and all(Path(r["crop"]).exists() for r in faces)
    assert any("error" in r and r["photo"] == str(broken) for r in records)


def test_align_ffhq_for_the_generator(faces_dir: Path, tmp_path: Path) -> None:
    photo = next((faces_dir / "jack_dorsey").glob("*.jpg"))
    assert main(["align", str(photo), "--out", str(tmp_path), "--template", "ffhq", "faces.ffhq_size=256"]) == 0
    record = json.loads((tmp_path / "align.json").read_text())[0]
    from PIL import Image

    assert Image.open(record["crop"]).size == (256, 256)
    assert len(record["matrix"]) == 2


@pytest.mark.parametrize("model", ["mobilefacenet_casia", "dlib_native"])
def test_embed_same_person_more_similar_than_others(faces_dir: Path, tmp_path: Path, model: str) -> None:
    same = sorted((faces_dir / "katy_perry").glob("*.jpg"))[:2]
    other = sorted((faces_dir / "jeff_bezos").glob("*.jpg"))[:1]
    out = tmp_path / "emb.json"
    assert main(["embed", *map(str, same + other), "--models", model, "--out", str(out)]) == 0
    result = json.loads(out.read_text())["models"][model]
    sims = result["similarity"]
    assert sims[0][1] > sims[0][2] and sims[0][1] > sims[1][2]
    # In the model's own metric (dlib: Euclidean distance, smaller = more alike) the ordering is the same.
    sign = -1 if result["metric"] == "euclidean" else 1
    values = [[sign * v for v in row] for row in result["values"]]
    assert result["metric"] == ("euclidean" if model == "dlib_native" else "cosine")
    assert values[0][1] > values[0][2] and values[0][1] > values[1][2]


STAGE1_TINY = [
    "generator.size=32",
    "generator.channel_max=16",
    "generator.projector.steps=3",
    "generator.projector.n_mean_latent=100",
    "pivot.steps=3",
    "pivot.loss_size=32",
    "trainer.progress_bar=false",
]


def test_invert_and_tune_every_face_of_a_full_photo(faces_dir: Path, tmp_path: Path) -> None:
    from facecloak.config.compose import compose
    from facecloak.protect.pipeline import build_generator
    from facecloak.stages.artifacts import list_artifacts, load_artifact

    photo = faces_dir / "_multi" / "couple.jpg"
    assert main(["invert", str(photo), "--out", str(tmp_path / "inv"), *STAGE1_TINY]) == 0
    assert len(list((tmp_path / "inv").glob("*_face*.safetensors"))) == 2
    assert main(["tune", str(photo), "--out", str(tmp_path / "tune"), *STAGE1_TINY]) == 0
    ids = list_artifacts(tmp_path / "tune")
    assert len(ids) == 2 and all("_face" in i for i in ids)
    base, _ = build_generator(compose(STAGE1_TINY).generator)
    stage2 = load_artifact(tmp_path / "tune", ids[0], base)
    assert stage2.pivot.shape == (base.n_latent, base.config.style_dim)


def test_tune_aligned_crops(tmp_path: Path, faces_dir: Path) -> None:
    assert (
        main(
            [
                "align",
                str(faces_dir / "_multi" / "couple.jpg"),
                "--out",
                str(tmp_path / "a"),
                "--template",
                "ffhq",
                "faces.ffhq_size=64",
            ]
        )
        == 0
    )
    crops = sorted((tmp_path / "a").glob("*.png"))
    assert main(["tune", *map(str, crops), "--aligned", "--out", str(tmp_path / "t"), *STAGE1_TINY]) == 0
    assert len(list((tmp_path / "t").glob("*_tuned.png"))) == 2
