"""torchvision weights to a flax-resnet checkpoint: ``flax-resnet-convert``, as a script (``python convert/torch2flax.py --help``).

The code is ``flax_resnet.commands.convert``.
"""

import sys

from flax_resnet.commands.convert import main

if __name__ == "__main__":
  sys.exit(main())
