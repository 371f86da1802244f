"""Export a training checkpoint as a model checkpoint: ``flax-resnet-train-export``, as a script (``python train/export.py --help``).

The code is ``flax_resnet.commands.train_export``, over ``flax_resnet.training.export``.
"""

import sys

from flax_resnet.commands.train_export import main

if __name__ == "__main__":
  sys.exit(main())
