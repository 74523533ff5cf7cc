"""Train on one file (or the inbox) as the next segment of a continual run.

    python train.py data=inbox_file data.path=FILE base_dir=DIR [overrides]

Without base_dir the run lives in the Hydra job's output directory. Configuration errors
exit 2 (Hydra alone would make every error exit 1).
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lit_continual.config import EXIT_CONFIG_ERROR, ConfigError
from lit_continual.config.compose import as_added, compose_with
from lit_continual.run import train


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


def overrides_for_hydra(args: list[str]) -> list[str]:
    """Compose once ourselves, so that a bad override is exit 2 with our message (a typo'd key
    names the closest known one) instead of Hydra's exit 1, and keys added to open groups
    (`trainer.deterministic=true`) reach Hydra as `++key=value`. With Hydra's own flags (-m,
    --cfg, -cd, ...) or a search path our compose cannot see the job, so open-group keys are
    passed as `++` and Hydra judges the rest; the run itself still checks the result."""
    if any(a.startswith("-") or a.startswith("hydra.searchpath") for a in args):
        return [as_added(a) for a in args]
    mine = [a for a in args if not a.startswith("hydra.")]
    try:
        _, given = compose_with(mine)
    except ConfigError as err:
        print(f"train.py: configuration error: {err}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    return given + [a for a in args if a.startswith("hydra.")]


if __name__ == "__main__":
    sys.argv[1:] = overrides_for_hydra(sys.argv[1:])
    main()
