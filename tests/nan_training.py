"""train.py with a loss that turns NaN at the step named by SR_LIGHTNING_TEST_NAN_AT_STEP (tests only)."""

import os

from sr_lightning import module
from sr_lightning.cli import main

_original_train_nll = module.OneStepLM._train_nll


def _train_nll_with_nan(self, batch):
    nll_sum, logits, targets = _original_train_nll(self, batch)
    if self.global_step == int(os.environ["SR_LIGHTNING_TEST_NAN_AT_STEP"]):
        nll_sum = nll_sum * float("nan")
    return nll_sum, logits, targets


module.OneStepLM._train_nll = _train_nll_with_nan

if __name__ == "__main__":
    main()
