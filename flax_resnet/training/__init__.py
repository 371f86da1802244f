"""The trainer: the run's ``Config`` and its presets, the Grain input pipeline, the jitted
steps, the model from the config, checkpoints, metrics and the loop. Its commands
(``flax-resnet-train``, ``flax-resnet-train-export``, ``flax-resnet-plot``) are in
``flax_resnet.commands``.

The library (``flax_resnet``'s own modules) never imports this package.
"""
