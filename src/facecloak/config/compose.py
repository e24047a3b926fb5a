"""Compose a run configuration from YAML config groups, command-line overrides and the typed schema.

``configs/config.yaml`` names one option per group in its ``defaults`` list (e.g. ``fr: offline`` reads
``configs/fr/offline.yaml``). Overrides are ``group=option`` to swap a group file or ``dotted.key=value`` to set
a value; every key and value is then checked against :class:`facecloak.config.schema.AppConfig`.

A group file may start with its own ``defaults`` list, so a preset says only what differs:

- a plain entry names another option of the same group, merged first (``offline_ensemble`` lists ``offline``);
- a ``group: option`` entry in a preset (or scale) selects an option of another group instead of re-setting that
  group's keys (``fr: offline``); a group chosen on the command line still wins.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from facecloak.config.schema import AppConfig
from facecloak.errors import ConfigError
from facecloak.runtime.devices import local_rank_from_env, resolve_device

CONFIG_DIR_ENV = "FACECLOAK_CONFIG_DIR"
# Groups whose files hold values for the whole config (not only their own section), merged after the others in this
# order: a preset, then a scale (``scale=smoke`` shrinks whichever preset was chosen).
GLOBAL_GROUPS = ("preset", "scale")
# Folders of configs/ that are not groups of the run config: sweep definitions have their own schema
# (facecloak.sweep.spec) and are passed to `facecloak sweep` as files.
STANDALONE_DIRS = ("sweep",)


def default_config_dir() -> Path:
    """``$FACECLOAK_CONFIG_DIR``, else the repository's ``configs/`` next to ``src/``."""
    env = os.environ.get(CONFIG_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[3] / "configs"


def _load_yaml(path: Path) -> DictConfig:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    loaded = OmegaConf.load(path)
    assert isinstance(loaded, DictConfig)
    return loaded


def _group_options(config_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _load_option(
    config_dir: Path, group: str, option: str, groups: dict[str, str], chosen: list[str], seen: tuple[str, ...] = ()
) -> DictConfig:
    """One group file with its ``defaults`` list applied: same-group bases merged first, other groups selected."""
    node = _load_yaml(config_dir / group / f"{option}.yaml")
    where = f"{group}/{option}.yaml"
    merged: DictConfig = OmegaConf.create()
    for item in node.pop("defaults", []):
        base_group, base = (group, str(item)) if isinstance(item, str) else next(iter(dict(item).items()))
        base_group, base = str(base_group), str(base)
        if base not in _group_options(config_dir, base_group):
            options = _group_options(config_dir, base_group)
            raise ConfigError(f"{where}: defaults entry '{base}' is not an option of '{base_group}'; one of {options}")
        if base_group == group:
            if base == option or base in seen:
                raise ConfigError(f"{where}: defaults entry '{base}' includes itself ({' -> '.join((*seen, option))})")
            merged.merge_with(_load_option(config_dir, group, base, groups, chosen, (*seen, option)))
        elif group not in GLOBAL_GROUPS:
            raise ConfigError(f"{where}: only presets select other groups; '{base_group}: {base}' cannot be used here")
        elif base_group not in chosen:
            groups[base_group] = base
    result = OmegaConf.merge(merged, node)
    assert isinstance(result, DictConfig)
    return result


def _split_overrides(overrides: list[str], groups: dict[str, str], config_dir: Path) -> tuple[list[str], list[str]]:
    """Apply ``group=option`` overrides to ``groups`` in place; return (groups chosen explicitly, value overrides)."""
    values, chosen = [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        key, value = item.split("=", 1)
        if key in groups or (config_dir / key).is_dir():
            options = _group_options(config_dir, key)
            if value not in options:
                raise ConfigError(f"config group '{key}' has no option '{value}'; choose one of {options}")
            groups[key] = value
            chosen.append(key)
        else:
            values.append(item)
    return chosen, values


def compose_dict(
    overrides: list[str] | None = None, config_dir: Path | None = None, config_name: str = "config"
) -> DictConfig:
    """Merge the primary config, its group files and the overrides onto the schema; checks keys and types."""
    config_dir = config_dir or default_config_dir()
    primary = _load_yaml(config_dir / f"{config_name}.yaml")
    defaults = primary.pop("defaults", [])
    groups: dict[str, str] = {}
    for item in defaults:
        ((group, option),) = dict(item).items()
        groups[str(group)] = str(option)
    chosen, value_overrides = _split_overrides(list(overrides or []), groups, config_dir)
    global_files: dict[str, DictConfig] = {}

    def group_file(group: str) -> DictConfig:
        if group in global_files:
            return global_files[group]
        return _load_option(config_dir, group, groups[group], groups, chosen)

    # Precedence, lowest first: schema defaults, group files, primary values, presets (global groups), groups the
    # user chose on the command line (so `fr=paper_loo_irse50` wins over a preset's fr section), value overrides.
    try:
        # Global files first: their defaults lists may select the options of the other groups.
        global_files.update({g: group_file(g) for g in GLOBAL_GROUPS if g in groups})
        merged = OmegaConf.structured(AppConfig)
        for group in groups:
            if group not in GLOBAL_GROUPS:
                merged = OmegaConf.merge(merged, {group: group_file(group)})
        merged = OmegaConf.merge(merged, primary)
        for group in GLOBAL_GROUPS:
            if group in groups:
                merged = OmegaConf.merge(merged, group_file(group))
        for group in chosen:
            if group not in GLOBAL_GROUPS:
                merged = OmegaConf.merge(merged, {group: group_file(group)})
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(value_overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from err
    assert isinstance(merged, DictConfig)
    return merged


def compose(
    overrides: list[str] | None = None, config_dir: Path | None = None, config_name: str = "config"
) -> AppConfig:
    """The validated run configuration as typed objects (value ranges checked too)."""
    merged = compose_dict(overrides, config_dir, config_name)
    try:
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from err
    assert isinstance(obj, AppConfig)
    # One device policy: 'auto'/'cuda' become this rank's concrete device here, so every consumer agrees.
    obj.device = str(resolve_device(obj.device, local_rank_from_env()))
    return obj


def resolve_data_path(path: str | None) -> Path | None:
    """A path from a config: as given if it exists, else relative to the repository (so presets work anywhere)."""
    if path is None:
        return None
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return default_config_dir().parent / candidate


def to_plain(config: AppConfig | DictConfig) -> dict[str, Any]:
    """A plain, resolved dict (for JSON records, hashing and W&B)."""
    node = config if isinstance(config, DictConfig) else OmegaConf.structured(config)
    plain = OmegaConf.to_container(node, resolve=True)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items()}


def _explain(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    first = str(err).splitlines()[0]
    return f"config key '{key}': {first}" if key else f"config error: {first}"
