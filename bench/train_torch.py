"""The PyTorch reference trainer: ``flax-resnet-bench train-torch``, as a script (``python bench/train_torch.py --help``).

The code is ``flax_resnet.bench.train_torch``.
"""

import sys

from flax_resnet.bench.train_torch import main

if __name__ == "__main__":
  sys.exit(main())
