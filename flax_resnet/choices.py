"""The vocabularies of the model's and the trainer's options, in a module that imports
nothing: ``Config`` checks a run's settings against them without loading JAX (grain's worker
processes import the config's module, and their start-up time counts)."""

NORMS = ("batch", "frozen_batch", "group")
STEMS = ("imagenet", "cifar")
# timm's stems inside the ImageNet one: "" a 7x7 conv, "deep" three 3x3 convs, "deep_tiered" the
# same with a narrower first conv
STEM_TYPES = ("", "deep", "deep_tiered")
ATTN_LAYERS = ("se", "eca")  # timm's channel attention in each residual block (or None)
# timm's anti-aliasing where a block strides (or None): a 2x2 average pool, or BlurPool2d's
# fixed 3x3 binomial filter
AA_LAYERS = ("avg", "blur")
DEFAULT_CHANNELS = (64, 128, 256, 512)  # torchvision's stage widths; a shorter net takes a prefix
MOMENTS = ("two_pass", "one_pass")  # BatchNorm's batch statistics
BACKWARDS = ("autodiff", "fused")  # BatchNorm's gradient
REMATS = ("none", "block", "stage")  # activation checkpointing
OPTIMIZERS = ("sgd", "adamw")  # what ``training.optimiser.transform``'s optimizer may name
INTERPOLATIONS = ("bilinear", "bicubic")  # the random resized crop's, the policies' and eval's
# per-image policies (torchvision's names): TrivialAugmentWide, RandAugment, AutoAugment's
# ImageNet policy, AugMix
AUTO_AUGMENTS = ("none", "ta_wide", "ra", "imagenet", "augmix")
EMA_STYLES = ("warmup", "torchvision")  # the EMA's decay rule (``training.steps``)
LR_UPDATES = ("step", "epoch")  # how often the learning rate changes
