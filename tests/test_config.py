"""Configs are data: every shipped YAML composes against the schema; bad keys and values fail naming the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from facecloak.config.compose import STANDALONE_DIRS, compose, default_config_dir, to_plain
from facecloak.errors import ConfigError

CONFIG_DIR = default_config_dir()
GROUP_OPTIONS = [
    (group.name, option.stem)
    for group in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in STANDALONE_DIRS)
    for option in sorted(group.glob("*.yaml"))
]


def test_default_config_composes() -> None:
    cfg = compose()
    assert cfg.faces.detector == "mtcnn"
    assert cfg.fr.held_out == ["dlib_native"]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_shipped_config_file_parses_against_the_schema(group: str, option: str) -> None:
    from facecloak.config.compose import GLOBAL_GROUPS

    # Impersonation presets (paper, paper_exact) need a target photo, as a user gives with --target.
    cfg = compose([f"{group}={option}", "protect.target=t.jpg"])
    # Global groups (presets) set values across sections; the others fill their own section.
    assert cfg is not None if group in GLOBAL_GROUPS else getattr(cfg, group) is not None


def test_value_override_and_group_swap() -> None:
    cfg = compose(["fr=paper_loo_irse50", "faces.min_face_size=40", "seed=7"])
    assert cfg.fr.held_out == ["irse50"] and "irse50" not in cfg.fr.attacked
    assert cfg.faces.min_face_size == 40 and cfg.seed == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("faces.min_face_sise=40", "faces.min_face_sise"),
        ("faces.min_face_size=big", "faces.min_face_size"),
        ("faces.min_face_size=2", "faces.min_face_size"),
        ("faces.detector=haar", "faces.detector"),
        ("fr.attacked=[irse5O]", "fr.attacked"),
        ("fr.held_out=[mobilefacenet_casia]", "fr.held_out"),
        ("fr=nonexistent", "group 'fr'"),
        ("device=tpu", "device"),
        ("no_equals_sign", "key=value"),
    ],
)
def test_bad_config_fails_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        compose([override])


def test_presets_set_values_across_sections() -> None:
    offline, paper = compose(["preset=offline"]), compose(["preset=paper", "protect.target=t.jpg"])
    assert offline.generator.weights is None and offline.search.lambda_clip == 0.0
    assert paper.generator.weights == "stylegan2_ffhq_1024" and paper.search.lambda_clip == 0.3
    assert paper.fr.held_out == ["facenet"]
    assert compose(["preset=paper", "protect.target=t.jpg", "search.steps=7"]).search.steps == 7  # overrides win


def test_paper_presets_use_the_reference_values_and_need_a_target() -> None:
    with pytest.raises(ConfigError, match="--target"):
        compose(["preset=paper"])
    paper = compose(["preset=paper", "protect.target=t.jpg"])
    exact = compose(["preset=paper_exact", "protect.target=t.jpg"])
    official = {"clip_loss": "infonce", "clip_templates": "official79", "ensemble_reduce": "sum"}
    for key, value in official.items():
        assert getattr(paper.search, key) == value == getattr(exact.search, key)
    assert paper.search.dodge_objective == "source_minus_target" and not paper.search.early_stop
    assert (paper.fr.preprocess, paper.protect.mode, paper.protect.paste) == ("box", "impersonate", "replace")
    assert (paper.search.clip_input_range, exact.search.clip_input_range) == ("fixed", "official")
    photo = compose(["preset=clip2protect_photo"])
    assert (photo.protect.mode, photo.protect.paste, photo.fr.preprocess) == ("dodge", "delta", "align5")


def test_face_api_port_is_never_attacked_while_dlib_is_held_out() -> None:
    with pytest.raises(ConfigError, match="same network"):
        compose(["fr.attacked=[faceapi_dlib]", "fr.held_out=[dlib_native]"])


def test_smoke_scale_shrinks_map_too() -> None:
    full, smoke = compose(["preset=map_offline"]), compose(["preset=map_offline", "scale=smoke"])
    assert (smoke.map.steps, smoke.map.inversion_steps, smoke.map.unet.resolution) == (3, 4, 32)
    assert smoke.map.steps < full.map.steps and smoke.map.unet.resolution < full.map.unet.resolution
    assert smoke.map.weights == full.map.weights and smoke.fr == full.fr


@pytest.mark.parametrize("preset", ["offline", "offline_ensemble"])
def test_smoke_scale_shrinks_the_chosen_preset_and_keeps_the_rest(preset: str) -> None:
    from facecloak.config.compose import to_plain

    full, smoke = compose([f"preset={preset}"]), compose([f"preset={preset}", "scale=smoke"])
    assert compose([f"preset={preset}", "scale=full"]) == full
    assert (smoke.generator.size, smoke.pivot.steps, smoke.search.steps) == (64, 3, 3)
    assert smoke.generator.size < full.generator.size and smoke.search.steps < full.search.steps
    # Only sizes and step counts change: the preset's models, losses and thresholds stay as chosen.
    assert smoke.fr == full.fr and smoke.search.lambda_adv == full.search.lambda_adv
    assert smoke.search.max_delta == full.search.max_delta
    changed = {
        f"{section}.{key}"
        for section, values in to_plain(full).items()
        if isinstance(values, dict)
        for key in values
        if to_plain(smoke)[section][key] != values[key]
    }
    assert changed <= {
        "generator.size",
        "generator.channel_max",
        "generator.projector",
        "pivot.steps",
        "pivot.loss_size",
        "search.steps",
        "search.layers",
        "map.steps",
        "map.checkpoint_every",
        "map.inversion_steps",
        "map.generation_steps",
        "map.unet",
        "warp.steps",
        "warp.work_size",
        "warp.field_grid",
    }
    # The value overrides still win over the scale.
    assert compose([f"preset={preset}", "scale=smoke", "search.steps=5"]).search.steps == 5


def test_inheriting_presets_equal_the_flat_ones_they_replaced() -> None:
    """`offline_ensemble` = `offline` + what differs, presets select an fr option: the resolved values are unchanged.

    The snapshot holds ``to_plain(compose(["preset=<name>"]))`` of the flat preset files, taken before presets could
    inherit (the paper preset is left out: its values are being changed on purpose).
    """
    snapshot = json.loads((Path(__file__).parent / "data" / "presets_before_defaults_lists.json").read_text())
    for preset, before in snapshot.items():
        now = _flat(json.loads(json.dumps(to_plain(compose([f"preset={preset}"])))))
        # Keys added since the snapshot (new options at their defaults) are not part of the comparison.
        assert {key: now.get(key) for key in _flat(before)} == _flat(before), preset


def _flat(tree: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_a_preset_selects_its_fr_option_and_the_command_line_wins() -> None:
    ensemble = compose(["preset=offline_ensemble"])
    assert ensemble.fr.attacked == ["mobilefacenet_casia", "faceres", "faceres_deep", "mobileface_human"]
    assert ensemble.search.max_delta == 0.125 and ensemble.generator.size == 128  # its own value, offline's value
    chosen = compose(["preset=offline_ensemble", "fr=offline"])
    assert chosen.fr.attacked == ["mobilefacenet_casia", "faceres"] and chosen.search.max_delta == 0.125
    assert compose(["fr=paper_loo_facenet"]).fr == compose(["fr=paper"]).fr


def test_trainer_and_logger_groups() -> None:
    assert compose(["trainer=deterministic"]).trainer.deterministic is True
    assert compose(["trainer=gpu"]).trainer.precision == "bf16-mixed"
    assert compose(["logger=csv"]).logger.kind == "csv" and compose(["logger=none"]).logger.kind == "none"
    assert compose().trainer == compose(["trainer=default"]).trainer


@pytest.mark.parametrize(
    ("group", "text", "message"),
    [
        ("preset", "defaults:\n  - loop\n", "includes itself"),
        ("preset", "defaults:\n  - nowhere\n", "not an option of 'preset'"),
        ("preset", "defaults:\n  - fr: nowhere\n", "not an option of 'fr'"),
        ("fr", "defaults:\n  - faces: default\n", "only presets select other groups"),
    ],
)
def test_bad_defaults_lists_fail_naming_the_file(tmp_path: Path, group: str, text: str, message: str) -> None:
    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    (config_dir / group / "loop.yaml").write_text(text)
    with pytest.raises(ConfigError, match=f"{group}/loop.yaml.*{message}"):
        compose([f"{group}=loop"], config_dir=config_dir)
