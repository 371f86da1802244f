"""Every command's ``main``: each parses its arguments, calls the library (or the training
package) and prints. ``flax-resnet-convert`` (torchvision -> flax), ``flax-resnet-export``
(flax -> torchvision), ``flax-resnet-train``, ``flax-resnet-train-export`` (training
checkpoint -> model), ``flax-resnet-plot`` and ``flax-resnet-bench``."""
