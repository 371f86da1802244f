"""Top kernels of JAX train steps: ``flax-resnet-bench kernels``, as a script (``python bench/kernels.py --help``).

The code is ``flax_resnet.bench.kernels``.
"""

import sys

from flax_resnet.bench.kernels import main

if __name__ == "__main__":
  sys.exit(main())
