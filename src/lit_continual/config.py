"""Compose the Hydra config (for the CLI) and validate it before anything heavy runs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).parent / "conf"
ROOT_CONFIG = "train"

EXIT_CONFIG_ERROR = 2


class ConfigError(ValueError):
    """A bad configuration value; the message names the key. Exits with code 2."""


def compose(overrides: list[str]) -> DictConfig:
    """Build the run config from conf/ plus Hydra overrides, as `train.py` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=ROOT_CONFIG, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"bad override: {err}") from err


def _require(cfg: DictConfig, key: str, ok: bool, what: str) -> None:
    if not ok:
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        raise ConfigError(f"{key}={value!r}: {what}")


def validate(cfg: DictConfig) -> None:
    """Check every value the run depends on; raise ConfigError naming the first bad key."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"{sorted(missing)[0]} must be set")
    _require(cfg, "base_dir", cfg.base_dir is not None, "must be set")
    _require(cfg, "data.batch_size", _pos_int(cfg.data.batch_size), "must be a positive integer")
    _require(cfg, "data.max_length", _pos_int(cfg.data.max_length) and cfg.data.max_length >= 2,
             "must be an integer >= 2")
    _require(cfg, "data.max_bad_fraction", _number(cfg.data.max_bad_fraction)
             and 0 <= cfg.data.max_bad_fraction <= 1, "must be in [0, 1]")
    _require(cfg, "data.max_line_bytes", _pos_int(cfg.data.max_line_bytes), "must be a positive integer")
    _require(cfg, "daemon.max_nonfinite", _pos_int(cfg.daemon.max_nonfinite), "must be a positive integer")
    _require(cfg, "daemon.max_crashes", _pos_int(cfg.daemon.max_crashes), "must be a positive integer")
    _require(cfg, "daemon.retry_initial_seconds", _number(cfg.daemon.retry_initial_seconds)
             and 0 < cfg.daemon.retry_initial_seconds <= cfg.daemon.retry_max_seconds,
             "must be a positive number <= daemon.retry_max_seconds")
    _require(cfg, "checkpoint.min_free_mb", _number(cfg.checkpoint.min_free_mb) and cfg.checkpoint.min_free_mb >= 0,
             "must be a number >= 0")
    from lit_continual.data.records import FORMATS

    _require(cfg, "data.format", cfg.data.format in FORMATS, f"must be one of {', '.join(FORMATS)}")
    _require(cfg, "data.source", cfg.data.source in ("inbox", "file"), "must be inbox or file")
    if cfg.data.source == "file":
        _require(cfg, "data.path", bool(cfg.data.path) and Path(cfg.data.path).is_file(),
                 "must name an existing file")
    _require(cfg, "trainer.accumulate_grad_batches", _pos_int(cfg.trainer.accumulate_grad_batches),
             "must be a positive integer")
    _require(cfg, "trainer.num_threads", _pos_int(cfg.trainer.num_threads), "must be a positive integer")
    _require(cfg, "checkpoint.every_n_steps", _pos_int(cfg.checkpoint.every_n_steps),
             "must be a positive integer")
    _require(cfg, "checkpoint.keep", _pos_int(cfg.checkpoint.keep), "must be a positive integer")
    _require(cfg, "checkpoint.log_history_max", _pos_int(cfg.checkpoint.log_history_max),
             "must be a positive integer")
    _require(cfg, "logging.every_n_steps", _pos_int(cfg.logging.every_n_steps), "must be a positive integer")
    _require(cfg, "optim.lr", _number(cfg.optim.lr) and cfg.optim.lr > 0, "must be a positive number")
    _require(cfg, "scheduler.warmup_steps", isinstance(cfg.scheduler.warmup_steps, int)
             and cfg.scheduler.warmup_steps >= 0, "must be an integer >= 0")
    _require(cfg, "lora.r", _pos_int(cfg.lora.r), "must be a positive integer")
    _require(cfg, "lora.dropout", _number(cfg.lora.dropout) and 0 <= cfg.lora.dropout < 1, "must be in [0, 1)")
    _require(cfg, "lora.target_modules", len(cfg.lora.target_modules) > 0, "must list at least one module")
    _require(cfg, "daemon.settle_seconds", _number(cfg.daemon.settle_seconds) and cfg.daemon.settle_seconds >= 0,
             "must be a number >= 0")
    _require(cfg, "daemon.poll_seconds", _number(cfg.daemon.poll_seconds) and cfg.daemon.poll_seconds > 0,
             "must be a positive number")
    _require(cfg, "model.name", cfg.model.name in ("tiny", "hf", "smollm2"), "must be tiny, hf or smollm2")
    if cfg.model.name == "smollm2":
        from lit_continual.models.smollm2 import gguf_path

        if not (Path(cfg.model.cache_dir).expanduser() / "config.json").is_file():
            gguf_path()  # raises ConfigError with the install command
    if cfg.model.name == "hf":
        _require(cfg, "model.path", Path(str(cfg.model.path)).is_dir(),
                 "must be an existing local Hugging Face model directory (hub ids are never downloaded)")


RUN_DEFINING = ("model", "lora", "seed", "data.batch_size", "data.max_length", "data.shuffle",
                "data.format", "data.text_field", "data.prompt_field", "data.completion_field",
                "data.messages_field", "data.max_line_bytes", "data.packing", "trainer.accumulate_grad_batches")
ADJUSTABLE = ("optim", "scheduler", "trainer.gradient_clip_val", "trainer.precision")


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _within(key: str, groups: tuple[str, ...]) -> bool:
    return any(key == g or key.startswith(g + ".") for g in groups)


def check_unchanged(saved: dict, cfg: DictConfig) -> None:
    """Refuse a restart whose config differs from the run's (stored in its checkpoint).

    Keys present on only one side are ignored (a newer version may add keys with the old
    behaviour as default); operational keys (daemon.*, logging.*, checkpoint.*) may change.
    """
    old, new = _flatten(saved), _flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = [k for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]
    fixed = [k for k in changed if _within(k, RUN_DEFINING)]
    adjustable = [k for k in changed if _within(k, ADJUSTABLE)]

    def describe(keys: list[str]) -> str:
        return ", ".join(f"{k} ({old[k]!r} -> {new[k]!r})" for k in keys)

    if fixed:
        raise ConfigError(f"the run in {cfg.base_dir} was started with other values for keys that define "
                          f"it: {describe(fixed)}. Start a new base dir to change them.")
    if adjustable and not cfg.run.allow_config_change:
        raise ConfigError(f"the run in {cfg.base_dir} was trained with other values: {describe(adjustable)}. "
                          "Set run.allow_config_change=true to accept them.")


def _pos_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
