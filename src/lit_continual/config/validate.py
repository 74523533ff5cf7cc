"""Walk a composed config against the closed schema (config/schema.py): every unknown,
missing, mistyped or out-of-bounds key is reported at once, naming the key."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from lit_continual.config.errors import ConfigError, did_you_mean
from lit_continual.config.schema import MODELS, TRAINER_OWNED, AnyModel, Callbacks, Root, Trainer


def check(config: dict) -> None:
    """Raise ConfigError naming every key of `config` (a resolved container) that is unknown,
    missing, of the wrong type or out of bounds."""
    problems: list[str] = []
    _check_node(config, Root, "", problems)
    if problems:
        raise ConfigError("; ".join(problems))


def known_keys(schema: type, path: str = "") -> list[str]:
    """Every dotted key the schema names (for messages and the restart classification)."""
    keys = []
    for f in dataclasses.fields(schema):
        hint = typing.get_type_hints(schema)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += known_keys(hint, f"{path}{f.name}.")
        else:
            keys.append(path + f.name)
    return keys


def _check_node(node: Any, schema: type, path: str, problems: list[str]) -> None:
    if schema is AnyModel and isinstance(node, dict):
        schema = MODELS.get(node.get("_target_"), AnyModel)
    if not isinstance(node, dict):
        problems.append(f"{path.rstrip('.')} must be a group of keys, not {node!r}")
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    if not getattr(schema, "OPEN", False):
        problems += [f"unknown key {path}{name}{did_you_mean(path + name, list(fields))}"
                     for name in node if name not in fields]
    for name, f in fields.items():
        try:
            _check_key(node, name, f, hints[name], path, problems)
        except ConfigError as err:
            problems.append(str(err))
    if schema is Trainer:
        problems += [f"{path}{name} cannot be set: the daemon sets it (it carries the run's exact steps, "
                     "checkpoints and data position)" for name in node if name in TRAINER_OWNED]
    if schema is Callbacks:
        problems += _missing_targets(node, path, skip=("model_checkpoint",))
    if "logger" in fields and node.get("logger"):
        problems += _missing_targets(node["logger"], "logger.", skip=())


def _check_key(node: dict, name: str, f: dataclasses.Field, hint: Any, path: str, problems: list[str]) -> None:
    full = path + name
    if name not in node:
        if not f.metadata["optional"]:
            raise ConfigError(f"{full} must be set")
        return
    value = node[name]
    _check_type(full, value, hint)
    if dataclasses.is_dataclass(hint):
        _check_node(value, hint, full + ".", problems)
    problem = f.metadata["check"](value) if f.metadata["check"] and value is not None else None
    if problem:
        raise ConfigError(f"{full}={value!r}: {problem}")


def _check_type(full: str, value: Any, hint: Any) -> None:
    if value == "???":
        raise ConfigError(f"{full} must be set")
    if hint is Any or dataclasses.is_dataclass(hint):
        return
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return
        hint = next(a for a in args if a is not type(None))
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str), dict: isinstance(value, dict),
          }.get(hint)
    if typing.get_origin(hint) is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        what = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                dict: "a group of keys"}.get(hint, "a list of strings")
        raise ConfigError(f"{full}={value!r}: must be {what}")


def _missing_targets(node: dict, path: str, skip: tuple[str, ...]) -> list[str]:
    return [f"{path}{name} must be a group with a `_target_` (a class to build), got {value!r}"
            for name, value in node.items()
            if name not in skip and (not isinstance(value, dict) or not isinstance(value.get("_target_"), str))]
