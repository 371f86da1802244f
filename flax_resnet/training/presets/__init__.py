"""The training presets, each a module with ``get_config()`` and its command in its docstring.

``flax-resnet-train --config NAME`` takes a preset by its module's name (``cifar10_tiny``),
or any preset file by its path (``config.load_preset``). This package is never imported: the
presets are run from their files.
"""
