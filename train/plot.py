"""Loss and accuracy curves of a run: ``flax-resnet-plot``, as a script (``python train/plot.py --help``).

The code is ``flax_resnet.commands.plot``, over ``flax_resnet.training.plot``.
"""

import sys

from flax_resnet.commands.plot import main

if __name__ == "__main__":
  sys.exit(main())
