"""Train on one file (or the inbox) as the next segment of a continual run.

    python train.py data=inbox_file data.path=FILE base_dir=DIR [overrides]

Without base_dir the run lives in the Hydra job's output directory. Configuration errors
exit 2 (Hydra alone would make every error exit 1).
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lit_continual.config import EXIT_CONFIG_ERROR, ConfigError, compose
from lit_continual.config.compose import open_overrides
from lit_continual.run import train

# Hydra's own flags that run no job, and the multirun switch (its sweeps compose per job).
NO_JOB = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")
MULTIRUN = ("-m", "--multirun")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    if cfg.base_dir is None:
        with open_dict(cfg):
            cfg.base_dir = HydraConfig.get().runtime.output_dir
    try:
        code = train(cfg)
    except ConfigError as err:
        print(f"train.py: configuration error: {err}", file=sys.stderr)
        code = EXIT_CONFIG_ERROR
    if code:
        sys.exit(code)


def _check_before_hydra(args: list[str]) -> None:
    """Compose once ourselves so that a bad override is exit 2 with our message (a typo'd key
    names the closest known one), not Hydra's exit 1."""
    if any(a in NO_JOB or a in MULTIRUN for a in args):
        return
    try:
        compose([a for a in args if not a.startswith("hydra.") and not a.startswith("-")])
    except ConfigError as err:
        print(f"train.py: configuration error: {err}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)


if __name__ == "__main__":
    sys.argv[1:] = open_overrides(sys.argv[1:])
    _check_before_hydra(sys.argv[1:])
    main()
