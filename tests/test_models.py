"""A run's model from its config: the head kept, or drawn afresh, when starting from a
checkpoint."""

import dataclasses

import jax
import numpy as np
from flax import nnx

import flax_resnet
from flax_resnet.training.config import Config
from flax_resnet.training.models import model_spec, run_model

TINY = Config(
  arch="resnet18",
  layers=(1, 1),
  channels=(8, 16),
  stem="cifar",
  num_classes=3,
  dtype="float32",
  seed=1,
)


def _saved(tmp_path, num_classes: int = 3):
  """A checkpoint of TINY's network (seed 7, so no tensor equals a seed-1 draw), its head
  replaced by one for ``num_classes`` (0: headless)."""
  arch, options = model_spec(TINY)
  model = flax_resnet.registry.build_model(arch, dict(options, rngs=nnx.Rngs(7)))
  if num_classes != 3:
    model.reset_classifier(num_classes, rngs=nnx.Rngs(8))
  flax_resnet.save(
    model, tmp_path / "init", {"arch": arch, "options": dict(options, num_classes=num_classes)}
  )
  return model, str(tmp_path / "init")


def _fresh_fc():
  return nnx.to_pure_dict(nnx.state(run_model(TINY)))["fc"]


def _pure(model):
  return nnx.to_pure_dict(nnx.state(model))


def _assert_tree_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_init_from_keeps_the_head_of_as_many_classes(tmp_path):
  source, path = _saved(tmp_path)
  model = run_model(dataclasses.replace(TINY, init_from=path))
  _assert_tree_equal(_pure(model), _pure(source))


def test_reset_head_draws_a_fresh_head_over_the_source_backbone(tmp_path):
  source, path = _saved(tmp_path)
  model = _pure(run_model(dataclasses.replace(TINY, init_from=path, reset_head=True)))
  theirs = _pure(source)
  _assert_tree_equal(model["fc"], _fresh_fc())
  assert not np.array_equal(model["fc"]["kernel"], theirs["fc"]["kernel"])
  _assert_tree_equal(
    {k: v for k, v in model.items() if k != "fc"}, {k: v for k, v in theirs.items() if k != "fc"}
  )


def test_a_headless_checkpoint_starts_a_run_with_a_fresh_head(tmp_path):
  source, path = _saved(tmp_path, num_classes=0)
  model = _pure(run_model(dataclasses.replace(TINY, init_from=path)))
  _assert_tree_equal(model["fc"], _fresh_fc())
  _assert_tree_equal({k: v for k, v in model.items() if k != "fc"}, _pure(source))


def test_custom_depths_keep_the_architectures_groups_and_widths():
  cfg = dataclasses.replace(TINY, arch="resnext50_32x4d", layers=(1, 1), channels=(64, 128))
  arch, options = model_spec(cfg)
  assert arch is None
  assert (options["block"], options["groups"], options["width_per_group"]) == ("bottleneck", 32, 4)
  assert options["layers"] == (1, 1) and options["channels"] == (64, 128)
