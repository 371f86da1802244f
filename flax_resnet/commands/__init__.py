"""The converter commands: ``flax-resnet-convert`` (torchvision -> flax) and
``flax-resnet-export`` (flax -> torchvision). They parse, call the library and print."""
