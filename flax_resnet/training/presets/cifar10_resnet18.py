"""ResNet-18 with the CIFAR stem on CIFAR-10 (32x32): pad-and-crop + flip, then torchvision's
TrivialAugmentWide and random erasing, label smoothing, torchvision's EMA; SGD, cosine.

    d=$(mktemp -d) && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C "$d"
    flax-resnet-train --config cifar10_resnet18 --workdir runs/cifar10 \
        --set data_dir=$d/cifar10-jpeg

Sized for 5 minutes on one H100. The 40-epoch crop-and-flip run of 2026-11-27 spent about
60 s starting, 90 s training (about 22,000 img/s) and 110 s at its 40 epoch ends (evaluation
and checkpoint, 2.75 s each). Here the epoch ends are cheap: evaluation and checkpoint every
5 epochs (975 steps of 256), 10 in all. TrivialAugmentWide and erasing cost the host about
0.45 core-ms an image against 0.32 for crop and flip on the project's CPU (BENCHMARKS.md
"Augmentation cost"): 22,000 img/s needs about 10 cores, and 12 workers leave a margin. 50
epochs then take about 60 + 50 x 2.3 + 10 x 2.75 = 200 s, and 255 s should the pipeline hold
only 15,000 img/s.
MixUp and CutMix are left off: they pay off over hundreds of epochs, not 50.
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
    auto_augment="ta_wide",
    random_erase=0.1,
    global_batch=256,
    epochs=50,
    lr=0.2,
    weight_decay=5e-4,
    nesterov=True,
    warmup_epochs=1.0,
    label_smoothing=0.1,
    # torchvision's --model-ema rule: 1 - (1 - 0.9998) * 256 * 32 / 50 = 0.967 every 32 steps,
    # about 5 epochs of memory; a copy of the weights through the warm-up epoch
    ema_decay=0.9998,
    ema_steps=32,
    ema_style="torchvision",
    workers=12,
    eval_every_epochs=5,
    checkpoint_every=975,
    log_every=50,
  )
