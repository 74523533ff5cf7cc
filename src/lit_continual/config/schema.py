"""The closed schema of our keys: a type and bounds for each, checked before torch is imported.

Each group is a dataclass whose fields are the group's keys (the values live in conf/*.yaml,
the one source of defaults). Open groups (`OPEN = True`) also take keys of their own
`_target_`, which are checked against its signature once it is imported (lit_continual/components.py).
config/validate.py walks a composed config against these classes.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

DTYPES = ("float32", "bfloat16", "float16")
# Lightning 2.6's precision values (lightning.fabric.plugins.precision.precision), spelled here
# so that a bad one is refused before torch is imported.
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true", "64", "32", "16", "bf16")
FORMATS = ("auto", "text", "prompt_completion", "messages")
# Trainer arguments the daemon sets itself (components.trainer passes them at call time).
TRAINER_OWNED = ("max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "barebones",
                 "enable_checkpointing", "limit_train_batches", "limit_val_batches", "limit_test_batches",
                 "limit_predict_batches", "val_check_interval", "check_val_every_n_epoch",
                 "num_sanity_val_steps", "use_distributed_sampler", "plugins", "logger", "callbacks",
                 "default_root_dir", "log_every_n_steps", "reload_dataloaders_every_n_epochs",
                 "fast_dev_run", "overfit_batches", "strategy", "devices", "num_nodes")


def key(check: typing.Callable[[Any], str | None] | None = None, *, optional: bool = False) -> Any:
    """A config key: `check` returns what is wrong with a value (None if fine); an optional key
    may be absent."""
    return field(metadata={"check": check, "optional": optional})


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def at_least(low: float) -> typing.Callable[[float], str | None]:
    return lambda value: None if value >= low else f"must be >= {low}"


def fraction(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def below_one(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def one_of(*choices: str) -> typing.Callable[[str], str | None]:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def true(value: bool) -> str | None:
    return None if value is True else "must be true (the daemon binds the rest at call time)"


def not_empty(value: list) -> str | None:
    return None if value else "must list at least one item"


def cron(value: str | None) -> str | None:
    """null, or a cron expression croniter accepts (5 fields, local time)."""
    if value is None:
        return None
    from croniter import croniter

    return None if croniter.is_valid(str(value)) else "must be null or a cron expression such as \"0 3 * * *\""


def cron_or_never(value: str | None) -> str | None:
    return None if value == "never" else cron(value)


def prompts(value: object) -> str | None:
    """A list of prompt strings, or the path of a JSONL file of prompts."""
    if isinstance(value, str):
        return None if value.strip() else "must be a list of prompt strings or the path of a JSONL file of prompts"
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return None
    return "must be a list of prompt strings or the path of a JSONL file of prompts"


def port(value: int | None) -> str | None:
    return None if value is None or 0 <= value <= 65535 else "must be null (off), 0 (any free port) or 1-65535"


@dataclass
class Run:
    allow_config_change: bool = key()


@dataclass
class Lora:
    r: int = key(positive)
    alpha: float = key(positive)
    dropout: float = key(below_one)
    target_modules: list[str] = key(not_empty)


@dataclass
class Data:
    source: str = key(one_of("inbox", "file"))
    path: str | None = key()
    batch_size: int = key(positive)
    max_length: int = key(at_least(2))
    shuffle: bool = key()
    format: str = key(one_of(*FORMATS))
    text_field: str = key()
    prompt_field: str = key()
    completion_field: str = key()
    messages_field: str = key()
    packing: bool = key()
    max_bad_fraction: float = key(fraction)
    max_line_bytes: int = key(positive)
    replay_fraction: float = key(below_one)
    replay_buffer_size: int = key(positive)


@dataclass
class Optim:
    """A torch.optim class, bound to the adapter's parameters at call time."""
    OPEN: ClassVar[bool] = True
    _target_: str = key()
    _partial_: bool = key(true)
    lr: float = key(positive)


@dataclass
class Scheduler:
    """A pure function of the global step (and of the file being trained, for a schedule that
    takes `file`) that multiplies optim.lr. The presets' keys (lit_continual/schedule.py);
    compose.py also checks decay_start >= warmup_steps."""
    OPEN: ClassVar[bool] = True
    _target_: str = key()
    _partial_: bool = key(true)
    warmup_steps: int = key(at_least(0), optional=True)
    timescale: int | None = key(positive, optional=True)
    decay_start: int = key(at_least(0), optional=True)
    decay_steps: int = key(positive, optional=True)
    floor: float = key(fraction, optional=True)


@dataclass
class Trainer:
    """lightning.pytorch.Trainer arguments (plus num_threads, ours)."""
    OPEN: ClassVar[bool] = True
    _target_: str = key()
    accelerator: str = key()
    precision: Any = key(lambda value: None if str(value) in PRECISIONS else f"must be null or one of "
                         f"{', '.join(PRECISIONS)}")
    accumulate_grad_batches: int = key(positive)
    gradient_clip_val: float | None = key(at_least(0))
    num_threads: int = key(positive)


@dataclass
class ModelCheckpointKeys:
    every_n_train_steps: int = key(positive)
    save_top_k: int = key(positive)


@dataclass
class Callbacks:
    """The core checkpointer's keys, then any number of `name: {_target_: ...}` callbacks."""
    OPEN: ClassVar[bool] = True
    model_checkpoint: ModelCheckpointKeys = key()


@dataclass
class Checkpoint:
    every_n_steps: int | None = key(positive)
    keep: int | None = key(positive)
    log_history_max: int = key(positive)
    min_free_mb: float = key(at_least(0))


@dataclass
class Logging:
    every_n_steps: int = key(positive)
    progress_bar: bool = key()
    keep_days: float = key(positive)


@dataclass
class Daemon:
    settle_seconds: float = key(at_least(0))
    poll_seconds: float = key(positive)
    exit_when_idle: bool = key()
    skip_duplicates: bool = key()
    retry_initial_seconds: float = key(positive)
    retry_max_seconds: float = key(positive)
    max_nonfinite: int = key(positive)
    max_crashes: int = key(positive)
    keep_failed_days: float = key(positive)


@dataclass
class Snapshot:
    schedule: str | None = key(cron)
    keep_days: float = key(positive)


@dataclass
class Consolidate:
    schedule: str | None = key(cron_or_never)
    keep: int = key(positive)
    rebase_every_files: int | None = key(at_least(1))
    rewarm_steps: int = key(at_least(0))


@dataclass
class Eval:
    every_n_steps: int | None = key(positive)
    batch_size: int | None = key(positive)
    max_examples: int | None = key(positive)
    sample_prompts: Any = key(prompts)
    sample_every_n_steps: int | None = key(positive)
    sample_max_new_tokens: int = key(positive)
    holdout_fraction: float = key(below_one)
    holdout_max: int = key(positive)
    max_probes: int = key(positive)


@dataclass
class Metrics:
    port: int | None = key(port)
    host: str = key()


@dataclass
class AnyModel:
    """A model loader this package does not know: its keys are checked against its signature."""
    OPEN: ClassVar[bool] = True
    _target_: str = key()
    name: str = key()


@dataclass
class TinyModel:
    _target_: str = key()
    name: str = key()
    hidden_size: int = key(positive)
    intermediate_size: int = key(positive)
    num_hidden_layers: int = key(positive)
    num_attention_heads: int = key(positive)
    initializer_range: float = key(positive)
    max_position_embeddings: int = key(positive)
    seed: int = key()


@dataclass
class HFModel:
    _target_: str = key()
    name: str = key()
    path: str = key()
    dtype: str = key(one_of(*DTYPES))
    trust_remote_code: bool = key()


@dataclass
class SmolLM2Model:
    _target_: str = key()
    name: str = key()
    cache_dir: str = key()
    dtype: str = key(one_of(*DTYPES))
    trust_remote_code: bool = key()


MODELS = {"lit_continual.models.tiny.load": TinyModel, "lit_continual.models.hf.load": HFModel,
          "lit_continual.models.smollm2.load": SmolLM2Model}


@dataclass
class Root:
    base_dir: str | None = key()
    seed: int = key()
    run: Run = key()
    model: AnyModel = key()
    lora: Lora = key()
    data: Data = key()
    optim: Optim = key()
    scheduler: Scheduler = key()
    trainer: Trainer = key()
    callbacks: Callbacks = key()
    logger: dict | None = key(optional=True)
    checkpoint: Checkpoint = key()
    logging: Logging = key()
    eval: Eval = key()
    daemon: Daemon = key()
    snapshot: Snapshot = key()
    consolidate: Consolidate = key()
    metrics: Metrics = key()
