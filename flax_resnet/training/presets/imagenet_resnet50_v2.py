"""ResNet-50 on ImageNet with torchvision's V2 recipe, the one behind ``IMAGENET1K_V2``
(80.858% top-1). torchvision's reference trainer ran it on 8 GPUs as

    torchrun --nproc_per_node=8 train.py --model resnet50 --batch-size 128 --lr 0.5 \\
      --lr-scheduler cosineannealinglr --lr-warmup-epochs 5 --lr-warmup-method linear \\
      --auto-augment ta_wide --epochs 600 --random-erase 0.1 --weight-decay 0.00002 \\
      --norm-weight-decay 0.0 --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 \\
      --train-crop-size 176 --model-ema --val-resize-size 232 --ra-sampler --ra-reps 4

and here, on 8 devices (a GPU host or a TPU slice) and ImageFolder (or shards) at DIR:

    flax-resnet-train --config imagenet_resnet50_v2 --workdir runs/in1k-v2 \\
        --set data_dir=DIR

Flag by flag (torchvision's defaults for the flags it does not give):
  --model resnet50                 arch="resnet50"
  --batch-size 128 on 8 GPUs       global_batch=1024; bn_stats="per_device" (each GPU's
                                   BatchNorm saw its 128 images: 8 devices give the same groups)
  --lr 0.5 (for the 1024 images)   lr=0.125 (this trainer's lr is per 256 images: x 1024/256)
  --momentum 0.9, --opt sgd        optimizer="sgd", momentum=0.9, nesterov=False
  --lr-scheduler cosineannealinglr cosine to 0 at epochs (lr_min 0), lr_update="epoch": torchvision
                                   steps its schedulers once per epoch
  --lr-warmup-epochs 5             warmup_epochs=5
  --lr-warmup-method linear        the only warm-up here
  --lr-warmup-decay 0.01 (default) lr_warmup_decay=0.01
  --auto-augment ta_wide           auto_augment="ta_wide"
  --epochs 600                     epochs=600
  --random-erase 0.1               random_erase=0.1
  --weight-decay 0.00002           weight_decay=2e-5
  --norm-weight-decay 0.0          norm_weight_decay=0.0; bias_weight_decay=None (not given:
                                   fc's bias decays by weight_decay)
  --label-smoothing 0.1            label_smoothing=0.1
  --mixup-alpha 0.2                mixup_alpha=0.2
  --cutmix-alpha 1.0               cutmix_alpha=1.0
  --train-crop-size 176            image_size=176
  --model-ema (decay 0.99998,      ema_decay=0.99998, ema_steps=32, ema_style="torchvision"
    steps 32)
  --val-resize-size 232            eval_resize=232
  --val-crop-size 224 (default)    eval_crop=224
  --interpolation bilinear         interpolation="bilinear"
  --ra-sampler --ra-reps 4         ra_reps=4 (the device count is the replica count)
  --clip-grad-norm (none)          clip_grad_norm=0
  no --amp                         dtype="float32"; on GPUs XLA's default precision, like cuDNN's
                                   default TF32, multiplies in reduced precision.

Not reproduced, and why:
  - The random numbers: NumPy's and JAX's generators draw the augmentations, the order and the
    MixUp/CutMix parameters, not torch's; the distributions are the same (tests/test_augment.py,
    tests/test_mix.py, tests/test_sampler.py check them).
  - The sampler's epoch holds len(train) // 256 * 256 images split over the devices, as
    RASampler's; torchvision's DataLoader also yields a last partial batch when a replica's share
    does not divide by 128, which is dropped here (ImageNet's 1,281,167 images give 1,251 full
    batches of 128 per GPU: none is dropped).
  - On other than 8 devices, BatchNorm's groups, MixUp/CutMix's groups and the sampler's replicas
    follow the device count, as torchvision's follow the GPU count.
"""

from flax_resnet.training.config import Config


def get_config() -> Config:
  return Config(
    arch="resnet50",
    num_classes=1000,
    train_split="train",
    eval_split="val",
    dtype="float32",
    bn_stats="per_device",
    image_size=176,
    eval_resize=232,
    eval_crop=224,
    interpolation="bilinear",
    auto_augment="ta_wide",
    random_erase=0.1,
    ra_reps=4,
    global_batch=1024,
    epochs=600,
    optimizer="sgd",
    lr=0.125,
    momentum=0.9,
    weight_decay=2e-5,
    norm_weight_decay=0.0,
    bias_weight_decay=None,
    warmup_epochs=5.0,
    lr_warmup_decay=0.01,
    lr_update="epoch",
    label_smoothing=0.1,
    mixup_alpha=0.2,
    cutmix_alpha=1.0,
    ema_decay=0.99998,
    ema_steps=32,
    ema_style="torchvision",
    workers=16,
    log_every=100,
  )
