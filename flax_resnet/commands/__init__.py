"""Every command's ``main``: each parses its arguments, calls the library (or the training
package) and prints, saying the library's errors with the command's flags.
``flax-resnet-convert`` (torchvision -> flax), ``flax-resnet-flax2torch`` (flax -> torchvision;
its old name ``flax-resnet-export`` still works), ``flax-resnet-predict``, ``flax-resnet-train``,
``flax-resnet-train-export`` (training checkpoint -> model), ``flax-resnet-plot``,
``flax-resnet-shards`` and ``flax-resnet-bench``."""
