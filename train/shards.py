"""ImageFolder -> ArrayRecord shards: ``flax-resnet-shards``, as a script (``python train/shards.py --help``).

The code is ``flax_resnet.commands.shards`` (the writer: ``flax_resnet.training.shards``).
"""

import sys

from flax_resnet.commands.shards import main

if __name__ == "__main__":
  sys.exit(main())
