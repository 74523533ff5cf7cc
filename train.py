"""Train on one file (or the inbox) as the next segment of a continual run.

    python train.py data=inbox_file data.path=FILE base_dir=DIR [overrides]

Without base_dir the run lives in the Hydra job's output directory.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lit_continual.config import EXIT_CONFIG_ERROR, ConfigError
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


if __name__ == "__main__":
    main()
