"""CPU inference of the served forms: ``flax-resnet-bench serve``, as a script (``python bench/serve.py --help``).

The code is ``flax_resnet.bench.serve``.
"""

import sys

from flax_resnet.bench.serve import main

if __name__ == "__main__":
  sys.exit(main())
