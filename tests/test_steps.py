"""Optimiser, loss and step functions of train/."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import flax_resnet as fr
from flax_resnet.training.batch import normalize
from flax_resnet.training.config import Config
from flax_resnet.training.models import freeze_norms, part_of
from flax_resnet.training.optimiser import (
  clip_by_global_norm,
  decay_group,
  ema_update_args,
  make_optimizer,
  schedule,
  transform,
)
from flax_resnet.training.steps import (
  PLAIN,
  cross_entropy,
  ema_update,
  eval_step,
  train_step,
)


def _groups(params, norm_weight_decay, bias_weight_decay) -> dict[str, str]:
  flat, _ = jax.tree_util.tree_flatten_with_path(
    decay_group(params, norm_weight_decay, bias_weight_decay)
  )
  return {".".join(str(getattr(k, "key", k)) for k in p): g for p, g in flat}


def test_weight_decay_applies_to_kernels_only():
  model = fr.ResNet18(num_classes=3)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  groups = _groups(params, 0.0, 0.0)  # the defaults
  decayed = sorted(name for name, g in groups.items() if g == "other")
  assert "conv1.kernel" in decayed and "fc.kernel" in decayed
  assert not any(name.endswith(("scale", "bias")) for name in decayed)
  assert len(decayed) == 21  # 20 convs (incl. 3 projections) + fc


def test_weight_decay_groups_are_torchvisions_set_weight_decay():
  params = nnx.to_pure_dict(nnx.state(fr.ResNet18(num_classes=3), nnx.Param))
  # V2's norm_weight_decay 0 and no bias_weight_decay: fc's bias decays with the kernels
  v2 = _groups(params, 0.0, None)
  assert v2["fc.bias"] == "other" and v2["bn1.bias"] == v2["layer1.0.bn2.scale"] == "norm"
  assert v2["layer2.0.downsample.1.scale"] == "norm"  # the projection's BatchNorm
  # "bias" is matched first, also in a norm layer
  both = _groups(params, 0.0, 0.0)
  assert both["fc.bias"] == both["bn1.bias"] == "bias" and both["bn1.scale"] == "norm"
  assert set(_groups(params, None, None).values()) == {"other"}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_default_decay_is_the_kernel_mask_with_the_same_state(optimizer):
  model, (x, y) = _tiny(), _batch()
  grads, params = _grads(model, x, y), nnx.to_pure_dict(nnx.state(model, nnx.Param))

  def kernels(tree):  # the mask before decay groups: checkpoints hold its state
    return jax.tree_util.tree_map_with_path(lambda p, v: p[-1].key == "kernel", tree)

  before = (
    optax.chain(optax.add_decayed_weights(0.1, kernels), optax.sgd(0.5, momentum=0.9))
    if optimizer == "sgd"
    else optax.adamw(0.5, weight_decay=0.1, mask=kernels)
  )
  tx = transform(0.5, optimizer=optimizer, weight_decay=0.1)
  ours, theirs = tx.init(params), before.init(params)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for _ in range(2):
    a, ours = tx.update(grads, ours, params)
    b, theirs = before.update(grads, theirs, params)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      assert np.array_equal(np.asarray(u), np.asarray(v))  # every bit


def test_label_smoothing_matches_torch():
  torch = pytest.importorskip("torch", reason="compares with torch's loss")
  logits = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
  labels = np.array([0, 3, 6, 2, 2])
  ours = float(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1))
  theirs = torch.nn.functional.cross_entropy(
    torch.from_numpy(logits), torch.from_numpy(labels), label_smoothing=0.1
  ).item()
  assert ours == pytest.approx(theirs, rel=1e-6)


def _train(model, opt, x, y, steps: int) -> list[float]:
  """``steps`` train_steps on the split (model, opt), written back into them; the losses."""
  model.train()
  graphdef, state = nnx.split((model, opt))
  losses = []
  for _ in range(steps):
    state, metrics = train_step(graphdef, state, x, y)
    losses.append(float(metrics["loss"]))
  nnx.update((model, opt), state)
  return losses


def _tiny(seed: int = 0) -> fr.ResNet:
  return fr.ResNet(
    "basic", (1, 1), channels=(8, 16), stem="cifar", num_classes=4, rngs=nnx.Rngs(seed)
  )


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_train_steps_fit_a_fixed_batch(optimizer):
  model = _tiny()
  opt = make_optimizer(model, 0.05 if optimizer == "sgd" else 3e-3, optimizer=optimizer)
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  y = jnp.arange(8) % 4
  losses = _train(model, opt, x, y, 30)
  assert losses[-1] < 0.5 * losses[0]
  model.eval()
  metrics = eval_step(*nnx.split(model), x, y)
  assert int(metrics["top1"]) >= 6 and int(metrics["top5"]) == 8


def test_train_step_on_the_split_state_equals_nnx_jit_on_the_objects():
  from flax_resnet.bench.dispatch import nnx_train_step

  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3)) * 2 + 0.5
  y = jnp.arange(8) % 4
  ours, theirs = _tiny(), _tiny()
  ours_opt, theirs_opt = make_optimizer(ours, 0.1), make_optimizer(theirs, 0.1)
  before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(theirs))]
  losses = _train(ours, ours_opt, x, y, 3)
  theirs.train()
  expected = [float(nnx_train_step(theirs, theirs_opt, x, y)["loss"]) for _ in range(3)]
  np.testing.assert_allclose(losses, expected, rtol=1e-6)
  after = jax.tree.leaves(nnx.state(theirs))
  assert all(not np.array_equal(a, b) for a, b in zip(before, after))  # params and statistics
  assert int(ours_opt.step[...]) == int(theirs_opt.step[...]) == 3
  for a, b in zip(
    jax.tree.leaves(nnx.state((ours, ours_opt))),
    jax.tree.leaves(nnx.state((theirs, theirs_opt))),
    strict=True,
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_unknown_optimizer_is_rejected():
  with pytest.raises(ValueError, match="optimizer"):
    make_optimizer(fr.ResNet18(num_classes=2), 0.1, optimizer="lamb")


def test_per_device_statistics_do_not_depend_on_the_sharding():
  """batch_groups = devices on a sharded batch equals the same groups computed on one device."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))

  def run(sharded: bool, groups: int):
    model = fr.ResNet(
      "basic", (1, 1), channels=(8, 16), stem="cifar", num_classes=4, rngs=nnx.Rngs(0)
    )
    model.set_attributes(batch_groups=groups, raise_if_not_found=False)
    opt = make_optimizer(model, 0.1)
    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3)) * 2 + 0.5
    y = jnp.arange(8) % 4
    if sharded:
      for obj in (model, opt):
        nnx.update(obj, jax.device_put(nnx.state(obj), NamedSharding(mesh, P())))
      x, y = jax.device_put((x, y), NamedSharding(mesh, P("data")))
    _train(model, opt, x, y, 3)
    return jax.tree.leaves(nnx.state(model))

  per_device, one_device = run(True, 4), run(False, 4)
  for a, b in zip(per_device, one_device, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  global_stats = run(True, 1)
  assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(per_device, global_stats)) > 1e-3


def test_ema_moves_towards_the_weights_with_a_warming_up_decay():
  new = {"w": jnp.ones(3)}
  first = ema_update({"w": jnp.zeros(3)}, new, 0, 0.999)  # decay (1 + 0) / (10 + 0) = 0.1
  np.testing.assert_allclose(np.asarray(first["w"]), 0.9, rtol=1e-6)
  late = ema_update({"w": jnp.zeros(3)}, new, 100_000, 0.999)  # past the warm-up: decay 0.999
  np.testing.assert_allclose(np.asarray(late["w"]), 0.001, rtol=1e-4)


def test_ema_without_warm_up_moves_by_its_decay_and_copies_at_zero():
  new = {"w": jnp.ones(3)}
  moved = ema_update({"w": jnp.full(3, 5.0)}, new, 0, 0.75, warmup=False)  # donated
  np.testing.assert_allclose(np.asarray(moved["w"]), 0.75 * 5 + 0.25, rtol=1e-6)
  copied = ema_update({"w": jnp.full(3, 5.0)}, new, 0, 0.0, warmup=False)
  assert np.array_equal(np.asarray(copied["w"]), np.ones(3))


def _ema_moves(changes: dict, steps: int, steps_per_epoch: int) -> list:
  cfg = dataclasses.replace(Config(ema_decay=0.99, global_batch=8, epochs=4), **changes)
  return [ema_update_args(cfg, k, steps_per_epoch) for k in range(steps)]


def test_ema_moves_after_every_ema_steps_th_batch_of_an_epoch_counting_its_updates():
  moves = _ema_moves({"ema_steps": 2}, 10, 5)  # batches 0, 2, 4 of each epoch of 5
  assert [k for k, m in enumerate(moves) if m] == [0, 2, 4, 5, 7, 9]
  assert [m["step"] for m in moves if m] == [0, 1, 2, 3, 4, 5]  # the warm-up counts updates
  assert all(m["decay"] == 0.99 and "warmup" not in m for m in moves if m)


def test_torchvisions_ema_copies_through_the_warm_up_then_decays_by_its_adjusted_rate():
  changes = {"ema_style": "torchvision", "ema_decay": 0.9375, "ema_steps": 2, "warmup_epochs": 1.0}
  decays = [m and m["decay"] for m in _ema_moves(changes, 10, 5)]
  # alpha = min(1, (1 - 0.9375) * 8 * 2 / 4) = 0.25 (exact in binary); epoch 0's updates are
  # reset, so the next update, epoch 1's first, copies too
  assert decays == [0.0, None, 0.0, None, 0.0, 0.0, None, 0.75, None, 0.75]
  moves = _ema_moves(changes, 10, 5)
  assert all(m["warmup"] is False for m in moves if m)
  no_warmup = _ema_moves({"ema_style": "torchvision", "ema_decay": 0.5}, 3, 3)
  assert [m["decay"] for m in no_warmup] == [0.0, 0.0, 0.0]  # alpha capped at 1: copies


def test_a_per_epoch_rate_is_the_epoch_formula_of_the_steps_epoch():
  cfg = Config(lr=0.256, global_batch=256, epochs=4, warmup_epochs=2.0, lr_warmup_decay=0.01)
  by_epoch = schedule(dataclasses.replace(cfg, lr_update="epoch"), 3)
  rates = [float(by_epoch(k)) for k in range(12)]
  expected = [0.01 * 0.256, 0.505 * 0.256, 0.256, 0.5 * 0.256]  # warm-up, then cosine over 2
  np.testing.assert_allclose(rates, np.repeat(expected, 3), rtol=1e-6, atol=1e-9)
  by_step = schedule(cfg, 3)  # the warm-up over 6 steps, from 0.01 of the peak
  # optax adds the peak back to (start - peak) * fraction: float32 rounding of the peak's scale
  assert float(by_step(0)) == pytest.approx(0.01 * 0.256, abs=1e-7)
  assert float(by_step(3)) == pytest.approx(0.505 * 0.256, abs=1e-7)
  assert float(by_step(0)) != pytest.approx(0.0, abs=1e-3 * 0.256)  # not from 0


def test_on_device_normalisation_equals_torchvision_to_tensor_and_normalize():
  tf = pytest.importorskip("torchvision.transforms.functional", reason="compares with torchvision")
  from PIL import Image

  mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)
  pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  ours = np.asarray(normalize(jnp.asarray(pixels), mean, std))
  theirs = np.stack(
    [
      tf.normalize(tf.to_tensor(Image.fromarray(p)), mean, std).permute(1, 2, 0).numpy()
      for p in pixels
    ]
  )
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_a_progress_line_comes_every_thirty_seconds_between_logged_steps(tmp_path, capsys):
  from flax_resnet.training.metrics import LOG_SECONDS, Progress

  progress = Progress(tmp_path, global_batch=8, log_every=1000, total_steps=10)
  progress.step(1, {"loss": jnp.float32(2.5), "top1": jnp.int32(3)}, skipped=0)
  assert capsys.readouterr().out == ""
  progress.last -= LOG_SECONDS  # half a minute without a line
  progress.step(2, {"loss": jnp.float32(2.25), "top1": jnp.int32(5)}, skipped=0)
  assert capsys.readouterr().out.startswith("step 2/10 loss 2.3750 top1 0.5000")  # both steps
  progress.close()
  # The time-driven line stays out of metrics.jsonl, which must not depend on speed.
  assert not (tmp_path / "metrics.jsonl").exists()


def test_a_run_without_eval_plots_its_losses_and_says_no_eval_yet(tmp_path, recwarn):
  from flax_resnet.commands.plot import main
  from flax_resnet.training.metrics import append_metric

  for step, loss in [(4, 2.3), (8, 2.1)]:
    append_metric(tmp_path / "metrics.jsonl", step, "train/loss", loss)
  assert main(["--workdir", str(tmp_path)]) == 0
  assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
  assert not [w for w in recwarn if "legend" in str(w.message).lower()]


def _grads(model, x, y):
  """The loss's gradient with respect to the model's Params, the model left as it was."""
  model = nnx.clone(model)
  model.train()
  return nnx.to_pure_dict(nnx.grad(lambda m: cross_entropy(m(x), y))(model))


def _batch():
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3)) * 2 + 0.5
  return x, jnp.arange(8) % 4


def test_clipping_scales_the_gradient_to_the_global_norm_as_torch_defines_it():
  model, (x, y) = _tiny(), _batch()
  grads, params = _grads(model, x, y), nnx.to_pure_dict(nnx.state(model, nnx.Param))
  norm = float(optax.tree.norm(grads))
  # torch's clip_grad_norm_ divides by the norm plus 1e-6
  for max_norm, factor in [(1e-3, 1e-3 / (norm + 1e-6)), (10 * norm, 1.0)]:  # clipped, then not
    tx = transform(1.0, momentum=0.0, weight_decay=0.0, clip_grad_norm=max_norm)
    updates, _ = tx.update(grads, tx.init(params), params)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
      np.testing.assert_allclose(np.asarray(u), -np.asarray(g) * factor, rtol=1e-6, atol=1e-12)
  assert norm > 1e-2  # so that 1e-3 clips


def test_clipping_equals_torchs_clip_grad_norm_in_float64():
  from torch_reference import torch

  rng = np.random.default_rng(0)
  grads = [rng.standard_normal(s) * 1e-3 for s in [(3, 4), (5,), (2, 2, 2)]]
  for max_norm in [1e-4, 1e-2]:  # clipped, then not (the norm is ~5e-3)
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for t, g in zip(tensors, grads):
      t.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    with jax.enable_x64(True):
      ours, _ = clip_by_global_norm(max_norm).update([jnp.asarray(g) for g in grads], None)
      for a, t in zip(ours, tensors, strict=True):
        # one formula in float64: torch sums its per-tensor norms' squares, we the elements'
        np.testing.assert_allclose(np.asarray(a), t.grad.numpy(), rtol=1e-14, atol=0)


def _changed(before, model) -> set[str]:
  """The top-level parts (``part_of``) of the model whose Params or statistics differ
  from ``before`` (a flat dict of arrays) in any bit."""
  after = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
  return {part_of(p) for p in before if not np.array_equal(before[p], after[p])}


def _snapshot(model) -> dict:
  return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


@pytest.mark.parametrize(
  "frozen",
  [("stem", "layer1"), ("layer2",), ("stem", "layer1", "layer2")],
  ids=["stem and layer1", "layer2", "linear probe"],
)
@pytest.mark.parametrize("differentiated", ["all", "trainable"])
def test_frozen_parts_keep_every_bit_of_their_params_and_statistics(frozen, differentiated):
  model, (x, y) = _tiny(), _batch()
  # decay and momentum on: a frozen parameter must get neither
  opt = make_optimizer(model, 0.1, weight_decay=0.1, frozen=frozen)
  before = _snapshot(model)
  model.train()
  freeze_norms(model, frozen)
  graphdef, state = nnx.split((model, opt))
  # "all": the optimiser alone freezes, the backward pass spans everything
  skip = frozen if differentiated == "trainable" else ()
  for _ in range(3):
    state, _ = train_step(graphdef, state, x, y, spec=dataclasses.replace(PLAIN, frozen=skip))
  nnx.update((model, opt), state)
  assert _changed(before, model) == {"stem", "layer1", "layer2", "fc"} - set(frozen)


@pytest.mark.parametrize("accumulate_steps", [1, 2])
def test_the_backward_pass_stops_where_nothing_before_it_trains(accumulate_steps):
  x, y = _batch()

  def convolutions(frozen, only_forward=False):
    model = _tiny()
    opt = make_optimizer(model, 0.1, frozen=frozen)
    model.train()
    freeze_norms(model, frozen)
    graphdef, state = nnx.split((model, opt))
    if only_forward:
      jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)[0](x))(state)
    else:
      jaxpr = jax.make_jaxpr(
        lambda s: train_step.__wrapped__(
          graphdef,
          s,
          x,
          y,
          spec=dataclasses.replace(PLAIN, accumulate_steps=accumulate_steps, frozen=frozen),
        )
      )(state)
    return _count(jaxpr.jaxpr, ("conv_general_dilated",))

  forward = convolutions((), only_forward=True)
  probe = convolutions(("stem", "layer1", "layer2"))
  assert probe == forward < convolutions(("stem", "layer1")) < convolutions(())


def test_freezing_a_part_the_model_lacks_is_refused():
  with pytest.raises(
    ValueError, match="cannot freeze layer3: the model's parts are stem, layer1, layer2"
  ):
    make_optimizer(_tiny(), 0.1, frozen=("layer3",))


def test_backbone_learning_rate_multiplier_scales_every_update_but_the_heads():
  model, (x, y) = _tiny(), _batch()
  grads, params = _grads(model, x, y), nnx.to_pure_dict(nnx.state(model, nnx.Param))

  def updates(mult):
    tx = transform(0.5, momentum=0.0, weight_decay=0.0, backbone_lr_mult=mult)
    updates = tx.update(grads, tx.init(params), params)[0]
    return dict(jax.tree_util.tree_flatten_with_path(updates)[0])

  full, tenth = updates(1.0), updates(0.1)
  assert {part_of(p) for p in full} == {"stem", "layer1", "layer2", "fc"}
  for path, u in full.items():
    factor = 1.0 if part_of(path) == "fc" else 0.1
    # SGD without momentum or decay: the update is -lr * mult * gradient, exactly
    np.testing.assert_allclose(np.asarray(tenth[path]), np.asarray(u) * factor, rtol=1e-7, atol=0)
    assert np.any(np.asarray(u) != 0), path


def _accumulated_run(accumulate_steps: int, dtype, norm: str = "frozen_batch", steps: int = 3):
  """Losses and final state of ``steps`` train_steps on a batch of 32 taken in
  ``accumulate_steps`` micro-batches; SGD with Nesterov momentum and weight decay."""
  model = fr.ResNet(
    "basic",
    (1, 1),
    channels=(8, 16),
    stem="cifar",
    num_classes=4,
    norm=norm,
    param_dtype=dtype,
    rngs=nnx.Rngs(0),
  )
  opt = make_optimizer(model, 0.2, nesterov=True, weight_decay=1e-2)
  model.train()
  graphdef, state = nnx.split((model, opt))
  x = jax.random.normal(jax.random.key(1), (32, 16, 16, 3), dtype) * 2 + 0.5
  y = jnp.arange(32) % 4
  losses = []
  for _ in range(steps):
    spec = dataclasses.replace(PLAIN, accumulate_steps=accumulate_steps)
    state, metrics = train_step(graphdef, state, x, y, spec=spec)
    losses.append(np.asarray(metrics["loss"]))
    assert int(metrics["top5"]) == 32
  return np.array(losses), [
    np.asarray(v) for v in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state)[0]))
  ]


def _relative(a, b) -> float:
  return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-30)


def test_four_micro_batches_of_8_take_the_step_of_one_batch_of_32():
  # float64 and frozen BatchNorm (no batch statistics): equal but for the order of sums.
  with jax.enable_x64(True):
    whole, accumulated = _accumulated_run(1, jnp.float64), _accumulated_run(4, jnp.float64)
    assert whole[0].dtype == np.float64
  assert _relative(accumulated[0], whole[0]) < 1e-10
  for a, b in zip(accumulated[1], whole[1], strict=True):
    assert _relative(a, b) < 1e-10
  # float32: the same within rounding of the sums
  whole, accumulated = _accumulated_run(1, jnp.float32), _accumulated_run(4, jnp.float32)
  np.testing.assert_allclose(accumulated[0], whole[0], rtol=1e-5)
  for a, b in zip(accumulated[1], whole[1], strict=True):
    assert _relative(a, b) < 1e-5


def test_accumulation_normalises_each_micro_batch_with_its_own_statistics():
  whole, accumulated = (
    _accumulated_run(1, jnp.float32, "batch"),
    _accumulated_run(4, jnp.float32, "batch"),
  )
  assert _relative(accumulated[0], whole[0]) > 1e-3  # other statistics: another step


def _loss_and_grads(remat: str):
  """Loss, gradients and updated BatchNorm statistics of a train-mode forward and
  backward pass with activation checkpointing ``remat``; the count of checkpointed
  calls in its program."""
  model = fr.ResNet(
    "basic", (2, 1), channels=(8, 16), stem="cifar", num_classes=4, rngs=nnx.Rngs(0)
  )
  model.remat = remat
  x, y = _batch()

  def loss_and_grads(state):
    m = nnx.merge(graphdef, state)
    m.train()
    loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(m)
    return loss, grads, nnx.state(m, nnx.BatchStat)

  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(loss_and_grads)(state)
  checkpoints = _count_checkpoints(jaxpr.jaxpr)
  loss, grads, stats = jax.jit(loss_and_grads)(state)
  return loss, jax.tree.leaves(grads), jax.tree.leaves(stats), checkpoints


def _count_checkpoints(jaxpr) -> int:
  """The ``jax.checkpoint`` calls in ``jaxpr``, nested programs included."""
  return _count(jaxpr, ("checkpoint", "remat2"))  # the name varies with JAX


def _count(jaxpr, primitives: tuple[str, ...]) -> int:
  """The calls of ``primitives`` in ``jaxpr``, nested programs included."""
  from jax.extend import core

  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name in primitives
    for sub in jax.tree.leaves(
      list(eqn.params.values()), is_leaf=lambda x: isinstance(x, (core.Jaxpr, core.ClosedJaxpr))
    ):
      if isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)):
        count += _count(getattr(sub, "jaxpr", sub), primitives)
  return count


@pytest.mark.parametrize("remat, calls", [("block", 3), ("stage", 2)])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(remat, calls):
  loss, grads, stats, none = _loss_and_grads("none")
  remat_loss, remat_grads, remat_stats, checkpoints = _loss_and_grads(remat)
  assert none == 0 and checkpoints == calls  # each block (stage) recomputed in the backward
  # Recomputation runs the forward's operations again, which XLA may fuse and so round
  # otherwise: float32 rounding of sums of ~1e3 terms, relative 1e-6 of the largest.
  # (On the 2-core CPU of this project's tests they come out bit-equal.)
  assert abs(float(remat_loss) - float(loss)) <= 1e-6 * abs(float(loss))
  for a, b in zip([*remat_grads, *remat_stats], [*grads, *stats], strict=True):
    assert _relative(np.asarray(a), np.asarray(b)) <= 1e-6


def test_an_unknown_remat_is_refused():
  model = _tiny()
  model.remat = "layer"
  with pytest.raises(ValueError, match="remat must be one of"):
    model(jnp.zeros((1, 16, 16, 3)))


def test_a_per_epoch_schedule_whose_warm_up_fills_every_epoch_is_refused():
  from flax_resnet.training import config as config_lib

  with pytest.raises(ValueError, match=r"warmup_epochs=5.0 with lr_update='epoch'.*epochs=5"):
    config_lib.override(config_lib.Config(epochs=5), ["lr_update=epoch", "warmup_epochs=5"])
  config_lib.override(config_lib.Config(epochs=5), ["lr_update=step", "warmup_epochs=5"])


def test_a_step_spec_names_every_setting_and_refuses_a_missing_one():
  from flax_resnet.training.steps import StepSpec

  with pytest.raises(TypeError, match="mixing"):
    StepSpec(label_smoothing=0.1, norm=None, accumulate_steps=1, frozen=())
  with pytest.raises(TypeError):
    StepSpec(0.1, None, 1, (), None)  # keywords only: no silent order
  spec = dataclasses.replace(PLAIN, frozen=("stem",))
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.frozen = ()
  assert hash(spec) == hash(dataclasses.replace(PLAIN, frozen=("stem",))) and spec != PLAIN


@pytest.mark.parametrize(
  "change, message",
  [
    ({"frozen": ["stem"]}, "StepSpec frozen must be a tuple, got list"),
    ({"norm": [(0.5,), (0.25,)]}, "StepSpec norm must be a tuple, got list"),
    ({"accumulate_steps": 0}, "StepSpec accumulate_steps must be >= 1, got 0"),
  ],
)
def test_a_step_spec_refuses_what_the_jitted_step_cannot_take(change, message):
  with pytest.raises((TypeError, ValueError), match=message):
    dataclasses.replace(PLAIN, **change)


def test_a_runs_step_spec_is_read_from_its_config():
  from flax_resnet.training import config as config_lib
  from flax_resnet.training.batch import Mix
  from flax_resnet.training.steps import StepSpec, step_spec

  cfg = config_lib.Config(label_smoothing=0.1, accumulate_steps=2, cutmix_alpha=1.0, seed=3)
  assert step_spec(cfg, ("stem",), 4) == StepSpec(
    label_smoothing=0.1,
    norm=(tuple(cfg.mean), tuple(cfg.std)),
    accumulate_steps=2,
    frozen=("stem",),
    mixing=Mix(cfg.num_classes, 0.0, 1.0, 4, 3),
  )
  assert step_spec(config_lib.Config(), (), 1).mixing is None


def test_the_training_model_is_built_with_every_option_the_run_sets_on_it():
  from flax_resnet.training import config as config_lib
  from flax_resnet.training.models import training_model

  sets = ["layers=1,1", "channels=8,16", "num_classes=4", "stem=cifar", "dtype=float32"]
  sets += ["freeze=stem", "remat=block", "bn_stats=per_device", "bn_moments=one_pass"]
  model = training_model(config_lib.override(config_lib.Config(), sets), devices=2)
  assert model.remat == "block"
  assert model.bn1.use_running_average  # the frozen stem's norm: its running statistics
  norms = [m for _, m in nnx.iter_graph(model.layer1) if isinstance(m, fr.model.BatchNorm)]
  assert norms and not any(m.use_running_average for m in norms)  # train mode elsewhere
  assert {m.batch_groups for m in norms} == {2} and {m.moments for m in norms} == {"one_pass"}
