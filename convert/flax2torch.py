"""A flax-resnet checkpoint to a torchvision state dict: ``flax-resnet-export``, as a script (``python convert/flax2torch.py --help``).

The code is ``flax_resnet.commands.export``.
"""

import sys

from flax_resnet.commands.export import main

if __name__ == "__main__":
  sys.exit(main())
