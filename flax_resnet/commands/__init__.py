"""The commands of the port: ``flax-resnet-convert`` (torchvision -> flax, ``convert.py``),
``flax-resnet-flax2torch`` (flax -> torchvision, ``flax2torch.py``; its old name
``flax-resnet-export`` still works) and ``flax-resnet-predict`` (``predict.py``). They parse,
call the library and print."""
