"""``python -m aom_model.train``: the pretraining entry point (what ``torchrun`` launches)."""

import sys

from aom_model.train.main import main

if __name__ == "__main__":
    sys.exit(main())
