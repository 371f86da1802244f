"""Peak memory of a command: ``flax-resnet-bench peak-rss``, as a script (``python bench/peak_rss.py --help``).

The code is ``flax_resnet.bench.peak_rss``.
"""

import sys

from flax_resnet.bench.peak_rss import main

if __name__ == "__main__":
  sys.exit(main())
