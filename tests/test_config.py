"""Configs are data: every shipped YAML composes against the schema; bad keys and values fail naming the key."""

from __future__ import annotations

import pytest

from facecloak.config.compose import STANDALONE_DIRS, compose, default_config_dir
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

    cfg = compose([f"{group}={option}"])
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
    offline, paper = compose(["preset=offline"]), compose(["preset=paper"])
    assert offline.generator.weights is None and offline.search.lambda_clip == 0.0
    assert paper.generator.weights == "stylegan2_ffhq_1024" and paper.search.lambda_clip == 0.3
    assert paper.fr.held_out == ["facenet"]
    assert compose(["preset=paper", "search.steps=7"]).search.steps == 7  # overrides win over presets


def test_face_api_port_is_never_attacked_while_dlib_is_held_out() -> None:
    with pytest.raises(ConfigError, match="same network"):
        compose(["fr.attacked=[faceapi_dlib]", "fr.held_out=[dlib_native]"])


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
        "warp.steps",
        "warp.work_size",
        "warp.field_grid",
    }
    # The value overrides still win over the scale.
    assert compose([f"preset={preset}", "scale=smoke", "search.steps=5"]).search.steps == 5
