"""The run's configuration: compose (Hydra), a closed schema checked before torch is imported,
the targets' signatures checked right after, and what may change between restarts."""

from lit_continual.config.compose import compose, prepare
from lit_continual.config.errors import EXIT_CONFIG_ERROR, ConfigError
from lit_continual.config.restart import check_unchanged

__all__ = ["EXIT_CONFIG_ERROR", "ConfigError", "check_unchanged", "compose", "prepare"]
