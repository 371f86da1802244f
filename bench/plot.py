"""Images/s against batch size, as a PNG: ``flax-resnet-bench plot``, as a script (``python bench/plot.py --help``).

The code is ``flax_resnet.bench.plot``.
"""

import sys

from flax_resnet.bench.plot import main

if __name__ == "__main__":
  sys.exit(main())
