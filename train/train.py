"""Train or fine-tune a model: ``flax-resnet-train``, as a script (``python train/train.py --help``).

The code is ``flax_resnet.commands.train``, over ``flax_resnet.training.trainer``.
"""

import sys

from flax_resnet.commands.train import main

if __name__ == "__main__":
  sys.exit(main())
