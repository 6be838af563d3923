"""train.py with a loss that turns NaN at the step named by SR_LIGHTNING_TEST_NAN_AT_STEP (tests only)."""

import os

from sr_lightning import module
from sr_lightning.cli import main

_original_step = module.OneStepLM._step


def _step_with_nan(self, batch, stage):
    nll_sum, logits, targets = _original_step(self, batch, stage)
    if stage == "train" and self.global_step == int(os.environ["SR_LIGHTNING_TEST_NAN_AT_STEP"]):
        nll_sum = nll_sum * float("nan")
    return nll_sum, logits, targets


module.OneStepLM._step = _step_with_nan

if __name__ == "__main__":
    main()
