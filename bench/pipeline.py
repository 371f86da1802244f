"""Images/s of the input pipeline: ``flax-resnet-bench pipeline``, as a script (``python bench/pipeline.py --help``).

The code is ``flax_resnet.bench.pipeline``.
"""

import sys

from flax_resnet.bench.pipeline import main

if __name__ == "__main__":
  sys.exit(main())
