"""A flax-resnet checkpoint to a torchvision state dict: ``flax-resnet-flax2torch`` (its old
name ``flax-resnet-export`` still works), as a script (``python convert/flax2torch.py --help``).

The code is ``flax_resnet.commands.flax2torch``.
"""

import sys

from flax_resnet.commands.flax2torch import main

if __name__ == "__main__":
  sys.exit(main())
