"""Train, validate or test the one-step model: ``python train.py fit --config configs/onestep-tiny.yaml``.

A thin LightningCLI entry point; every option is in the YAML configs and ``--help``.
"""

from sr_lightning.cli import main

if __name__ == "__main__":
    main()
