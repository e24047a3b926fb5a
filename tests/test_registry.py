"""Weights registry: every entry is complete, shared files verify, fetch is atomic and checksum-guarded."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from facecloak.errors import ConfigError, CorruptWeightsError, MissingWeightsError
from facecloak.registry import store
from facecloak.registry.entries import KINDS, Source, WeightsFile, get_entry, load_registry
from facecloak.registry.fetchers import extract_member, fetch_url

PAPER_MODELS = (
    "stylegan2_ffhq_1024",
    "e4e_ffhq_encode",
    "clip_vit_b32_openai",
    "ir152",
    "irse50",
    "facenet",
    "mobile_face",
    "ddpm_celebahq_256",
    "insightface_buffalo_l",
)


def test_registry_lists_papers_and_offline_models() -> None:
    registry = load_registry()
    for name in (
        *PAPER_MODELS,
        "mobilefacenet_casia",
        "faceres",
        "faceres_deep",
        "mobileface_human",
        "faceapi_dlib",
        "dlib_native",
        "mtcnn",
        "emotion_fer2013",
        "facemesh",
    ):
        assert name in registry
    for entry in registry.values():
        assert entry.kind in KINDS and entry.licence and entry.description and entry.files
        assert all(f.sources for f in entry.files), f"{entry.name} has a file without a source"
        if entry.kind == "face_recognition":
            pre = entry.preprocessing
            assert pre.input_size and pre.template and pre.color in ("RGB", "BGR"), entry.name


def test_paper_thresholds_are_data_with_source() -> None:
    irse50 = get_entry("irse50")
    assert irse50.thresholds is not None
    assert irse50.thresholds.far == {"0.1": 0.144840, "0.01": 0.241045, "0.001": 0.312703}
    assert "AMT-GAN" in irse50.thresholds.source


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"Known models: .*irse50"):
        get_entry("irse5O")


def test_shared_weights_resolve_and_verify(weights_dir: Path) -> None:
    sums = dict(line.split()[::-1] for line in (weights_dir / "SHA256SUMS").read_text().splitlines())
    registered = set()
    for entry in load_registry().values():
        for file in entry.files:
            shipped = sums.get(f"./{file.path}")
            if shipped is None:
                continue
            assert file.sha256 == shipped, f"registry checksum of {file.path} differs from SHA256SUMS"
            status = store.file_status(file)
            assert status.present and status.verified, file.path
            registered.add(f"./{file.path}")
    unregistered = set(sums) - registered
    assert all("blazeface" in name for name in unregistered), unregistered  # BlazeFace is not used by facecloak


def test_installed_package_files_resolve() -> None:
    paths = store.resolve("mtcnn")
    assert [p.name for p in paths] == ["pnet.pt", "rnet.pt", "onet.pt"]
    assert store.resolve_one("dlib_landmarks68").name == "shape_predictor_68_face_landmarks.dat"


def test_missing_weights_error_names_file_and_fetch_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FACECLOAK_SHARED", str(tmp_path / "nowhere"))
    with pytest.raises(MissingWeightsError, match=r"stylegan2-ffhq-config-f\.pt.*facecloak weights fetch"):
        store.resolve("stylegan2_ffhq_1024", cache_dir=tmp_path)


def test_corrupt_cached_file_is_reported(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FACECLOAK_SHARED", str(tmp_path / "nowhere"))
    entry = get_entry("mobilefacenet_casia")
    bad = tmp_path / entry.files[0].path
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the checkpoint")
    with pytest.raises(CorruptWeightsError, match=r"SHA-256.*facecloak weights fetch mobilefacenet_casia"):
        store.resolve("mobilefacenet_casia", cache_dir=tmp_path)


def _local_source_file(tmp_path: Path, payload: bytes) -> tuple[Source, str]:
    origin = tmp_path / "origin.bin"
    origin.write_bytes(payload)
    return Source(type="url", url=origin.as_uri()), hashlib.sha256(payload).hexdigest()


def test_fetch_verifies_then_renames_atomically(tmp_path: Path, monkeypatch) -> None:
    """The real url fetcher on a file:// URL: no network, same code path."""
    monkeypatch.setenv("FACECLOAK_SHARED", str(tmp_path / "nowhere"))
    source, digest = _local_source_file(tmp_path, b"weights" * 1000)
    file = WeightsFile(path="demo/model.bin", sources=(source,), sha256=digest)
    entry = replace(get_entry("mobilefacenet_casia"), name="demo", files=(file,))
    monkeypatch.setitem(load_registry(), "demo", entry)
    cache = tmp_path / "cache"
    [path] = store.fetch("demo", cache_dir=cache)
    assert path == cache / "demo/model.bin" and store.sha256_of(path) == digest
    assert not list(path.parent.glob(".*part*")), "temporary file left behind"


def test_fetch_with_wrong_checksum_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FACECLOAK_SHARED", str(tmp_path / "nowhere"))
    source, _ = _local_source_file(tmp_path, b"tampered")
    file = WeightsFile(path="demo/model.bin", sources=(source,), sha256="0" * 64)
    entry = replace(get_entry("mobilefacenet_casia"), name="demo", files=(file,))
    monkeypatch.setitem(load_registry(), "demo", entry)
    cache = tmp_path / "cache"
    with pytest.raises(MissingWeightsError, match=r"SHA-256"):
        store.fetch("demo", cache_dir=cache)
    assert not (cache / "demo").exists() or not any((cache / "demo").iterdir())


def test_fetch_member_of_archive(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "assets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("assets/models/irse50.pth", b"abc")
    dest = tmp_path / "irse50.pth"
    fetch_url(Source(type="url", url=archive.as_uri(), archive="assets.zip", member="irse50.pth"), dest)
    assert dest.read_bytes() == b"abc"
    with pytest.raises(MissingWeightsError, match="not inside"):
        extract_member(archive, "ir152.pth", tmp_path / "x")
