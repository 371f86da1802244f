"""Optimiser, loss and step functions of train/."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flax_resnet as fr
from train.steps import cross_entropy, decay_mask, eval_step, make_optimizer, train_step


def test_weight_decay_applies_to_kernels_only():
  model = fr.ResNet18(num_classes=3)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat, _ = jax.tree_util.tree_flatten_with_path(decay_mask(params))
  decayed = sorted(".".join(str(getattr(k, "key", k)) for k in p) for p, v in flat if v)
  assert "conv1.kernel" in decayed and "fc.kernel" in decayed
  assert not any(name.endswith(("scale", "bias")) for name in decayed)
  assert len(decayed) == 21  # 20 convs (incl. 3 projections) + fc


def test_label_smoothing_matches_torch():
  torch = pytest.importorskip("torch", reason="compares with torch's loss")
  logits = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
  labels = np.array([0, 3, 6, 2, 2])
  ours = float(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1))
  theirs = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                             label_smoothing=0.1).item()
  assert ours == pytest.approx(theirs, rel=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_train_steps_fit_a_fixed_batch(optimizer):
  model = fr.ResNet("basic", (1, 1), channels=(8, 16), stem="cifar", num_classes=4,
                    rngs=nnx.Rngs(0))
  opt = make_optimizer(model, 0.05 if optimizer == "sgd" else 3e-3, optimizer=optimizer)
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  y = jnp.arange(8) % 4
  losses = [float(train_step(model, opt, x, y)["loss"]) for _ in range(30)]
  assert losses[-1] < 0.5 * losses[0]
  model.eval()
  metrics = eval_step(model, x, y)
  assert int(metrics["top1"]) >= 6 and int(metrics["top5"]) == 8


def test_unknown_optimizer_is_rejected():
  with pytest.raises(ValueError, match="optimizer"):
    make_optimizer(fr.ResNet18(num_classes=2), 0.1, optimizer="lamb")
