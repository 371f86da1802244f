"""Benchmarks: ``flax-resnet-bench NAME ...`` (or ``python bench/NAME.py``); figures in
BENCHMARKS.md."""
