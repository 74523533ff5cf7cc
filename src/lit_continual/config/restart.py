"""What may change between two processes of one run: every key is run-defining, adjustable or
operational. The run's config is stored in each checkpoint (run_config.json)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from lit_continual.config.errors import ConfigError

# Never change within a run: the adapter, the data order or the optimizer state depend on them.
RUN_DEFINING = ("model", "lora", "seed", "data.batch_size", "data.max_length", "data.shuffle",
                "data.format", "data.text_field", "data.prompt_field", "data.completion_field",
                "data.messages_field", "data.max_line_bytes", "data.packing", "trainer.accumulate_grad_batches",
                "optim._target_", "optim._partial_")
# Where and how the run is watched, saved and fed: change freely.
OPERATIONAL = ("base_dir", "run", "daemon", "logging", "eval", "checkpoint", "callbacks", "logger",
               "snapshot", "consolidate", "metrics",
               "data.source", "data.path", "data.max_bad_fraction", "trainer.num_threads",
               "trainer.accelerator", "trainer._target_", "trainer.enable_progress_bar",
               "trainer.enable_model_summary")
# Change the numbers of the training itself: accepted with run.allow_config_change=true. (The
# probes, replay and rebasing change what new files train, never what was trained: the split of
# each file, the reservoir and the base generations made so far are in the run state.)
ADJUSTABLE = ("optim", "scheduler", "trainer", "eval.holdout_fraction", "eval.holdout_max",
              "data.replay_fraction", "data.replay_buffer_size", "consolidate.rebase_every_files",
              "consolidate.rewarm_steps")


# Keys added since runs were first saved, with the value that does what a run without them did.
BEFORE_THEY_EXISTED = {"eval.holdout_fraction": 0, "eval.holdout_max": 200, "data.replay_fraction": 0,
                       "data.replay_buffer_size": 10000, "consolidate.rebase_every_files": None,
                       "consolidate.rewarm_steps": 20}

ABSENT = "(absent)"  # how a key one side does not have is shown and compared


def classify(key: str) -> str | None:
    """'run-defining', 'operational' or 'adjustable' for a dotted key (None: unclassified).
    The most specific entry wins (`eval.holdout_fraction` is adjustable, the rest of `eval` operational)."""
    found = [(len(k), name) for name, keys in (("run-defining", RUN_DEFINING), ("operational", OPERATIONAL),
                                               ("adjustable", ADJUSTABLE))
             for k in keys if key == k or key.startswith(k + ".")]
    return max(found)[1] if found else None


def migrate(saved: dict) -> dict:
    """A run config saved by an older version, in today's keys (old runs used AdamW and named
    their schedule), so that a change of optimizer class or schedule is still caught."""
    saved = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    optim, scheduler, model = saved.get("optim"), saved.get("scheduler"), saved.get("model")
    if isinstance(optim, dict) and "_target_" not in optim:
        optim.update(_target_="torch.optim.AdamW", _partial_=True)
    if isinstance(scheduler, dict) and "name" in scheduler:
        name = scheduler.pop("name")
        scheduler.update(_target_=f"lit_continual.schedule.{name}", _partial_=True)
        if name == "constant" and scheduler.get("warmup_steps") == 0:
            del scheduler["warmup_steps"]  # today's constant preset has no warmup key: the same schedule
    if isinstance(model, dict) and "_target_" not in model and "name" in model:
        model["_target_"] = f"lit_continual.models.{model['name']}.load"
    for dotted, value in BEFORE_THEY_EXISTED.items():
        group, name = dotted.split(".")
        if isinstance(saved.setdefault(group, {}), dict):
            saved[group].setdefault(name, value)
    return saved


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _same_target(key: str, old: object, new: object) -> bool:
    """`torch.optim.AdamW` and `torch.optim.adamw.AdamW` name the same class."""
    if not key.endswith("._target_"):
        return False
    from hydra.utils import get_object

    try:
        return get_object(str(old)) is get_object(str(new))
    except Exception:
        return False


def check_unchanged(saved: dict, cfg: DictConfig) -> None:
    """Refuse a restart whose config differs from the run's (stored in its checkpoint).

    A run-defining or adjustable key present on one side only (`trainer.deterministic=true`
    added, `optim.nesterov` dropped) is a change too; an older run's config is first read in
    today's keys (`migrate`). Operational keys may come and go.
    """
    old, new = _flatten(migrate(saved)), _flatten(OmegaConf.to_container(cfg, resolve=True))
    keys = sorted(old.keys() | new.keys())
    changed = [k for k in keys if old.get(k, ABSENT) != new.get(k, ABSENT)
               and not (k in old and k in new and _same_target(k, old[k], new[k]))]
    fixed = [k for k in changed if classify(k) == "run-defining"]
    adjustable = [k for k in changed if classify(k) == "adjustable"]

    def describe(keys: list[str]) -> str:
        return ", ".join(f"{k} ({old.get(k, ABSENT)!r} -> {new.get(k, ABSENT)!r})" for k in keys)

    if fixed:
        raise ConfigError(f"the run in {cfg.base_dir} was started with other values for keys that define "
                          f"it: {describe(fixed)}. Start a new base dir to change them.")
    if adjustable and not cfg.run.allow_config_change:
        raise ConfigError(f"the run in {cfg.base_dir} was trained with other values: {describe(adjustable)}. "
                          "Set run.allow_config_change=true to accept them.")
