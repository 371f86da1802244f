"""Throughput of JAX against PyTorch: ``flax-resnet-bench throughput``, as a script (``python bench/throughput.py --help``).

The code is ``flax_resnet.bench.throughput``.
"""

import sys

from flax_resnet.bench.throughput import main

if __name__ == "__main__":
  sys.exit(main())
