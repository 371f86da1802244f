"""Train or fine-tune a model: ``flax-resnet-train``, as a script (``python train/train.py --help``).

The code is ``flax_resnet.training.trainer``; ``commands.train`` parses the arguments before
importing JAX.
"""

import sys

from flax_resnet.training.commands import train as main

if __name__ == "__main__":
  sys.exit(main())
