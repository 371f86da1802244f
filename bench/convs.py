"""Per-convolution forward and gradient times: ``flax-resnet-bench convs``, as a script (``python bench/convs.py --help``).

The code is ``flax_resnet.bench.convs``.
"""

import sys

from flax_resnet.bench.convs import main

if __name__ == "__main__":
  sys.exit(main())
