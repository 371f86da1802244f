"""The trainer: config presets, the Grain input pipeline, the jitted steps, checkpoints of a
run, and its commands (``flax-resnet-train``, ``flax-resnet-train-export``, ``flax-resnet-plot``).

The library (``flax_resnet``'s own modules) never imports this package.
"""
