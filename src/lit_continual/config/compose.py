"""Compose the Hydra config and make it valid before anything heavy runs (no torch import).

`compose` is what the CLI uses; `train.py` composes through `@hydra.main` and both end in
`prepare`, which turns old alias keys into their current ones, checks the closed schema and
the files the config names, and never writes anything.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from lit_continual.config import schema, validate
from lit_continual.config.errors import ConfigError, did_you_mean

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
ROOT_CONFIG = "train"


def groups() -> dict[str, list[str]]:
    """Each config group and its options (conf/<group>/<option>.yaml), the default first."""
    chosen = defaults()
    return {d.name: sorted((p.stem for p in d.glob("*.yaml")), key=lambda o: (o != chosen.get(d.name), o))
            for d in sorted(CONF_DIR.iterdir()) if d.is_dir()}


def defaults() -> dict[str, str | None]:
    """The option each group takes unless told otherwise (the root config's defaults list)."""
    listed = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{ROOT_CONFIG}.yaml")).get("defaults", [])
    return {k: v for item in listed if isinstance(item, dict) for k, v in item.items()}


# Groups whose keys are the keywords of a `_target_`: a key no YAML lists may be added.
OPEN_GROUPS = ("optim", "scheduler", "trainer", "logger", "callbacks", "model")


def compose(overrides: list[str]) -> DictConfig:
    """Build the run config from conf/ plus Hydra overrides, as `train.py` would."""
    return compose_with(overrides)[0]


def compose_with(overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """(config, the overrides as given to Hydra). A key of an open group that no YAML lists
    (`trainer.deterministic=true`) is passed as `++key=value` (add or override); any other
    unknown key is refused with the closest known one, never with Hydra's advice to add it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    given = [_null_group(item) for item in overrides]
    while True:
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                return hydra_compose(config_name=ROOT_CONFIG, overrides=given), given
        except (HydraException, OmegaConfBaseException, ValueError) as err:  # ValueError: e.g. `group=null`
            found = re.search(r"Could not override '([^']+)'", str(err))
            position = _position(given, found.group(1)) if found else None
            if position is None:
                raise ConfigError(_explain(str(err))) from err
            given[position] = "++" + given[position]


def _null_group(item: str) -> str:
    """`logger=null` (the template's way to turn a group off) is Hydra's `~logger`."""
    name, _, value = item.partition("=")
    return f"~{name}" if value == "null" and name in groups() else item


def as_added(item: str) -> str:
    """`item` as Hydra should get it when our compose cannot run first (train.py with Hydra's
    own flags): `logger=null` -> `~logger`, a key of an open group -> `++key=value`."""
    item = _null_group(item)
    key = item.split("=", 1)[0]
    if "=" in item and "." in key and not key.startswith(("+", "~")) and _is_open(key):
        return "++" + item
    return item


def _is_open(key: str) -> bool:
    return key.split(".")[0] in OPEN_GROUPS and not key.startswith("callbacks.model_checkpoint.")


def _position(overrides: list[str], key: str) -> int | None:
    """Where `key=...` is in `overrides`, if it is a key of an open group that may be added."""
    if not _is_open(key):
        return None
    return next((i for i, item in enumerate(overrides) if item.split("=", 1)[0] == key), None)


def _explain(message: str) -> str:
    """Hydra's message, minus its advice to add unknown keys with `+` (they are refused)."""
    found = re.search(r"Could not override '([^']+)'", message)
    if found:
        name = found.group(1)
        return f"unknown key {name}{did_you_mean(name, _siblings(name))}"
    return message.split("\nConfig search path")[0].replace("\n\t", " ").replace("\n", " ").strip()


def _siblings(name: str) -> list[str]:
    prefix = name.rpartition(".")[0]
    keys = validate.known_keys(schema.Root)
    return [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == prefix]


def prepare(cfg: DictConfig, check_paths: bool = True) -> DictConfig:
    """Normalize aliases, check the schema and (unless told not to: `--cfg` previews configs
    for other machines) the paths; ConfigError names the bad keys."""
    cfg = cfg.copy()
    with open_dict(cfg):
        _apply_aliases(cfg)
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # a bad interpolation: ${oc.env:...} without the variable, ...
        raise ConfigError(f"cannot resolve the config: {err}") from err
    validate.check(container)
    _check_consistent(cfg)
    if check_paths:
        _check_paths(cfg)
    return cfg


def _apply_aliases(cfg: DictConfig) -> None:
    """checkpoint.every_n_steps/keep -> callbacks.model_checkpoint.*; scheduler.name -> _target_."""
    saving = cfg.get("callbacks", {}).get("model_checkpoint")
    alias = cfg.get("checkpoint", {})
    if saving is not None:
        for old, new in (("every_n_steps", "every_n_train_steps"), ("keep", "save_top_k")):
            value = alias.get(old)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"checkpoint.{old}={value!r}: must be an integer >= 1")
                saving[new] = value
    scheduler = cfg.get("scheduler")
    if scheduler is not None and "name" in scheduler:
        name = scheduler.pop("name")
        if name not in groups()["scheduler"]:
            raise ConfigError(f"scheduler.name={name!r}: unknown schedule; choose scheduler=<one of "
                              f"{', '.join(groups()['scheduler'])}> or set scheduler._target_")
        # The old name is the preset's: its `_target_` comes from conf/scheduler/<name>.yaml.
        scheduler["_target_"] = OmegaConf.load(CONF_DIR / "scheduler" / f"{name}.yaml")._target_
        scheduler.setdefault("_partial_", True)


def _check_consistent(cfg: DictConfig) -> None:
    if cfg.data.source == "inbox" and cfg.data.path is not None:
        raise ConfigError(f"data.path={cfg.data.path!r} is set but data.source=inbox (the daemon trains "
                          "the inbox and would ignore it): add data=inbox_file to train on that one file")
    if cfg.data.source == "file" and not cfg.data.path:
        raise ConfigError("data.path must be set with data=inbox_file (the file to train on)")
    start, warmup = cfg.scheduler.get("decay_start"), cfg.scheduler.get("warmup_steps")
    if start is not None and warmup is not None and start < warmup:
        raise ConfigError(f"scheduler.decay_start={start}: must be >= scheduler.warmup_steps ({warmup}); "
                          "the cooldown starts once the warmup is over")
    if cfg.daemon.retry_initial_seconds > cfg.daemon.retry_max_seconds:
        raise ConfigError(f"daemon.retry_initial_seconds={cfg.daemon.retry_initial_seconds}: must be <= "
                          f"daemon.retry_max_seconds ({cfg.daemon.retry_max_seconds})")


def _check_paths(cfg: DictConfig) -> None:
    if cfg.base_dir is None:
        raise ConfigError("base_dir must be set (--base-dir DIR, or base_dir=DIR with train.py)")
    base = Path(cfg.base_dir).expanduser()
    if base.exists() and not base.is_dir():
        raise ConfigError(f"base_dir={cfg.base_dir!r}: is not a directory")
    if cfg.data.source == "file" and not Path(cfg.data.path).expanduser().is_file():
        raise ConfigError(f"data.path={cfg.data.path!r}: must name an existing file")
    target = cfg.model._target_
    if target == "lit_continual.models.hf.load":
        path = Path(str(cfg.model.path)).expanduser()
        if not (path / "config.json").is_file():
            what = "is not a directory" if not path.is_dir() else "has no config.json"
            raise ConfigError(f"model.path={cfg.model.path!r}: {what}; it must be a local Hugging Face "
                              "model directory (hub ids are never downloaded)")
    if target == "lit_continual.models.smollm2.load":
        if not (Path(cfg.model.cache_dir).expanduser() / "config.json").is_file():
            from lit_continual.models.smollm2 import gguf_path

            gguf_path()  # raises ConfigError with the install command
