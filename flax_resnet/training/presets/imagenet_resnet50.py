"""ResNet-50 on ImageNet with torchvision's V1 recipe: SGD momentum 0.9, lr 0.1 per 256
images, weight decay 1e-4, 90 epochs, batch 256; cosine decay where torchvision steps
the rate down 10x every 30 epochs. For TPU pods and multi-GPU hosts: raise global_batch
with the device count (the learning rate follows it).

    flax-resnet-train --config imagenet_resnet50 --workdir runs/in1k \
        --set data_dir=/data/imagenet --set global_batch=1024 --set workers=16
"""

from flax_resnet.training.config import Config


def get_config() -> Config:
  return Config(
    arch="resnet50",
    num_classes=1000,
    image_size=224,
    eval_resize=256,
    train_split="train",
    eval_split="val",
    global_batch=256,
    epochs=90,
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    workers=16,
    log_every=100,
  )
