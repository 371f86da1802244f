"""ResNet-18 with the CIFAR stem on CIFAR-10 (32x32): pad-and-crop + flip, SGD, cosine.

    d=$(mktemp -d) && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C "$d"
    flax-resnet-train --config cifar10_resnet18 --workdir runs/cifar10 \
        --set data_dir=$d/cifar10-jpeg
"""

from flax_resnet.training.config import Config


def get_config() -> Config:
  return Config(
    arch="resnet18",
    num_classes=10,
    stem="cifar",
    image_size=32,
    eval_resize=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    train_split="train",
    eval_split="test",
    global_batch=256,
    epochs=40,
    lr=0.2,
    weight_decay=5e-4,
    nesterov=True,
    warmup_epochs=1.0,
    workers=4,
    log_every=50,
  )
