"""A narrow ResNet (CIFAR stem, 16-32-64 channels, one block a stage): the accuracy-parity
benchmark of the trainer against PyTorch's reference (BENCHMARKS.md, "Accuracy parity", which
trains it on a 10,000-image subset of the train split: about 2 minutes on 2 CPU cores, 110 s
alone on 2026-11-28). On the whole train split, as below, its 3,120 steps took 25-50 minutes on
2 cores, as issue 32 measured them.

    d=$(mktemp -d) && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C "$d"
    flax-resnet-train --config cifar10_tiny --workdir runs/tiny-jax \
        --set data_dir=$d/cifar10-jpeg --set seed=0
    flax-resnet-bench train-torch --config cifar10_tiny --workdir runs/tiny-torch \
        --set data_dir=$d/cifar10-jpeg --set seed=0
    flax-resnet-plot --workdir runs/tiny-jax runs/tiny-torch --out tiny.png

float32, SGD with Nesterov momentum, one warm-up epoch then cosine, weight decay on kernels.
"""

from flax_resnet.training.config import Config


def get_config() -> Config:
  return Config(
    arch="resnet18",
    num_classes=10,
    stem="cifar",
    layers=(1, 1, 1),
    channels=(16, 32, 64),
    image_size=32,
    eval_resize=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    train_split="train",
    eval_split="test",
    dtype="float32",
    global_batch=128,
    epochs=8,
    lr=0.4,
    weight_decay=5e-4,
    nesterov=True,
    warmup_epochs=1.0,
    workers=0,
    log_every=50,
  )
