"""``python -m flax_resnet.bench NAME [ARGS]``: ``flax-resnet-bench``
(``flax_resnet.commands.bench``)."""

import sys

from flax_resnet.commands.bench import main

if __name__ == "__main__":
  sys.exit(main())
