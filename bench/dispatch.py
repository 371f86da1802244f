"""Host time per train step: ``flax-resnet-bench dispatch``, as a script (``python bench/dispatch.py --help``).

The code is ``flax_resnet.bench.dispatch``.
"""

import sys

from flax_resnet.bench.dispatch import main

if __name__ == "__main__":
  sys.exit(main())
