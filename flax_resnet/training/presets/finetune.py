"""Fine-tune torchvision's weights on an ImageFolder data set with a new head.

    flax-resnet-train --config finetune --workdir runs/ft \
        --set init_from=torchvision:IMAGENET1K_V2 --set data_dir=/data/flowers --set num_classes=102

or from a converted folder (`flax-resnet-convert --weights ... --out ckpt/resnet50`):
`--set init_from=ckpt/resnet50`. `freeze=stem,layer1`, `linear_probe=true`,
`backbone_lr_mult=0.1`, `accumulate_steps=4`, `remat=block` and `clip_grad_norm=1.0` are
documented in flax_resnet/training/config.py's Config.

`--set freeze_bn=true` keeps BatchNorm on its ImageNet statistics (for small batches).

Sized for a GPU. On a CPU it needs 11-12 GB of host memory (measured: ResNet-50 at 224, batch 64,
8 workers) and the trainer prints its estimate at start; `--set global_batch=16 --set workers=2`
needs about 4 GB.
"""

from flax_resnet.training.config import Config


def get_config() -> Config:
  return Config(
    arch="resnet50",
    num_classes=10,
    image_size=224,
    eval_resize=232,
    train_split="train",
    eval_split="val",
    global_batch=64,
    epochs=10,
    lr=0.01,
    weight_decay=1e-4,
    warmup_epochs=0.5,
    label_smoothing=0.1,
    workers=8,
    log_every=20,
  )
