"""Shared fixtures: 8 virtual CPU devices, the real data beside the checkout; the slow tests."""

import os
from pathlib import Path

# Must be set before jax is imported anywhere: sharding tests use 8 virtual devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

# The long tests, marked `slow`: `python -m pytest -n 2 -m "not slow"` is the day-to-day subset
# (README, "Tests"); CI runs everything. A module, or module::test (all its parameters): those
# that train, convert or run commands, and every test over about 5 s in `--durations=0` on 2
# busy cores (2026-11-30).
SLOW = frozenset(
  {
    "test_bench.py",
    "test_convert_cli.py",
    "test_damage.py",
    # Each export compiles the model in float32 and float64 and runs two batches (5-80 s);
    # the fast subset keeps the flags, the refusals and the old command line.
    "test_deploy.py::test_an_onnx_export_records_its_preprocessing_and_class_names_and_computes_the_model",
    "test_deploy.py::test_a_stablehlo_export_has_a_symbolic_batch_and_computes_the_model",
    "test_deploy.py::test_resnet50_exports_with_batchnorm_folded_or_kept",
    "test_deploy.py::test_a_resnext_and_a_timm_family_member_export_verified",
    "test_deploy.py::test_a_fine_tuned_ten_class_checkpoint_exports_with_its_class_names",
    "test_deploy.py::test_float16_onnx_is_held_to_the_models_own_float16_error",
    "test_deploy.py::test_an_export_that_does_not_compute_the_model_is_not_written",
    "test_deploy.py::test_force_replaces_an_earlier_export_but_nothing_else",
    "test_deploy.py::test_predict_on_onnxruntime_prints_the_classes_jax_prints",
    # Cheap itself (a fresh venv with onnxruntime and numpy alone), but it needs an export.
    "test_deploy.py::test_an_onnx_export_runs_in_a_fresh_venv_with_only_onnxruntime_and_numpy",
    "test_deploy.py::test_a_stablehlo_export_loads_in_a_fresh_venv_with_only_jax_and_flatbuffers",
    "test_docs.py::test_every_flag_of_every_command_is_in_its_section_of_the_commands_page",
    "test_help.py::test_the_pytorch_reference_trainer_s_help_names_only_files_the_wheel_ships",
    "test_mix.py::test_a_resumed_training_run_mixes_as_the_uninterrupted_one",
    "test_mix.py::test_a_resumed_run_mixes_as_the_uninterrupted_one",
    "test_mix.py::test_accuracy_counts_the_mixed_images_logits_against_the_original_labels",
    "test_mix.py::test_each_device_shard_is_mixed_as_one_group_whatever_the_sharding",
    "test_mix.py::test_cutmix_box_sizes_are_distributed_as_torchvision_make_params",
    "test_mix.py::test_mixup_and_cutmix_are_chosen_with_torchvision_probabilities",
    "test_mix.py::test_mixup_lambda_is_distributed_as_torchvision_beta_draws",
    "test_mix.py::test_mixup_lambda_takes_the_values_next_to_1_as_often_as_torchvisions_and_never_0_or_1",
    "test_sampler.py::test_a_resume_mid_epoch_gives_the_next_batches",
    "test_parity.py",
    "test_timm_every.py",
    "test_pretrained.py",
    "test_readme.py",
    "test_recipe_parity.py",
    "test_suite.py",
    "test_train.py",
    "test_timm_hub.py::test_a_conversion_of_other_weights_than_the_hub_caches_now_is_refused",
    "test_timm_hub.py::test_a_first_call_without_the_timm_extra_is_one_import_error_naming_it",
    "test_timm_hub.py::test_a_second_call_needs_neither_torch_nor_timm",
    "test_timm_hub.py::test_a_training_run_from_timms_weights_needs_neither_torch_nor_timm",
    "test_timm_hub.py::test_bad_timm_weights_for_the_trainer_are_one_line_naming_the_field",
    "test_timm_hub.py::test_hub_weights_convert_once_and_compute_timms_logits",
    "test_timm_hub.py::test_other_num_classes_give_a_fresh_head_and_keep_the_backbone",
    "test_timm_hub.py::test_the_converter_verifies_a_timm_file_against_timm_in_float64",
    "test_timm_hub.py::test_the_trainer_starts_from_timms_hub_weights_with_a_fresh_head",
    "test_timm.py::test_a_folded_timm_model_is_as_exact_as_timm",
    "test_timm.py::test_a_saved_timm_architecture_loads_back_with_its_weights",
    "test_timm.py::test_average_pool_shortcuts_on_odd_sizes_match_timms_ceil_mode",
    "test_timm.py::test_deep_registered_architecture_has_timms_keys_shapes_and_parameter_count",
    "test_timm.py::test_eval_logits_and_features_match_timm",
    "test_timm.py::test_round_trip_loads_into_timm_strictly_and_bit_exact",
    "test_timm.py::test_timm_knobs_on_custom_nets_match_timm",
    "test_timm.py::test_train_mode_logits_gradients_and_statistics_equal_timm_in_float64_on_each_family",
    "test_timm.py::test_a_folded_net_of_each_family_folds_every_norm_and_is_as_exact_as_timm",
    "test_timm_hub.py::test_fine_tuning_from_timms_weights_keeps_the_frozen_stages_and_trains_the_rest",
    "test_timm_rs.py::test_resnest_dropblock_drops_where_timms_does_given_the_same_seeds",
    "test_timm_resnest.py::test_a_folded_resnest_folds_the_split_attentions_norms_and_is_as_exact_as_timm",
    "test_timm_resnest.py::test_deep_resnest_architecture_has_timms_keys_shapes_and_parameter_count",
    "test_timm_resnest.py::test_resnest_eval_logits_and_features_match_timm",
    "test_timm_resnest.py::test_resnest_options_on_custom_nets_match_timm",
    "test_timm_resnest.py::test_resnest_train_mode_logits_gradients_and_statistics_equal_timm_in_float64",
    "test_timm_aa.py::test_eval_logits_and_features_match_timm_in_float64",
    "test_timm_aa.py::test_blur_anti_aliasing_on_odd_sizes_matches_timm",
    "test_timm_aa.py::test_an_odd_size_under_average_pool_anti_aliasing_is_refused_in_one_line_as_timm_refuses_it",
    "test_timm_aa.py::test_anti_aliasing_on_custom_nets_matches_timm",
    "test_timm_aa.py::test_a_folded_anti_aliased_net_is_as_exact_as_timm",
    "test_timm_aa.py::test_train_mode_logits_and_gradients_equal_timm_in_float64",
    "test_timm_rs.py::test_eval_logits_equal_timm_in_float64",
    "test_timm_rs.py::test_custom_nets_with_the_new_options_match_their_timm_twin",
    "test_timm_rs.py::test_float32_logits_and_features_are_as_close_to_float64_as_timms",
    "test_timm_rs.py::test_resnet_rs_train_mode_logits_and_gradients_equal_timm_in_float64",
    "test_timm_rs.py::test_the_pruned_widths_are_timms_pruning_descriptions",
    "test_timm_rs.py::test_in_eval_mode_drop_path_and_dropblock_change_nothing",
    "test_timm_rs.py::test_rates_of_zero_build_and_train_the_net_without_them",
    "test_timm_rs.py::test_in_train_mode_the_drops_change_the_output_and_each_call_draws_anew",
    "test_timm_rs.py::test_dropblock_masks_drop_as_often_as_timms_gamma_says",
    "test_timm_rs.py::test_dropblock_modules_draw_their_seeds_at_timms_gamma",
    "test_timm_rs.py::test_a_custom_pruned_net_runs_and_round_trips_through_the_inference",
    "test_timm_rs.py::test_a_run_trains_with_drop_path_and_dropblock_and_its_ema",
    "test_timm_rs.py::test_dropblock_on_a_net_of_two_stages_is_refused_naming_both_fields",
    "test_model.py::test_batch_groups_normalise_each_group_with_its_own_statistics",
    "test_model.py::test_batchnorm_uses_biased_variance_to_normalise_and_unbiased_for_running_var",
    "test_model.py::test_bfloat16_compute_keeps_float32_params_and_statistics",
    "test_model.py::test_bfloat16_folded_model_matches_the_unfolded_one",
    "test_model.py::test_dropout_is_active_only_in_train_mode",
    "test_model.py::test_every_architecture_builds_and_runs",
    "test_model.py::test_float64_params_keep_float64_statistics",
    "test_model.py::test_frozen_batchnorm_trains_nothing_and_ignores_train_mode",
    "test_model.py::test_group_norm_variant_runs",
    "test_model.py::test_jitted_eval_leaves_statistics_and_train_step_updates_them",
    "test_model.py::test_reset_classifier_gives_a_fresh_head_or_none_and_keeps_the_backbone",
    "test_predict.py::test_a_decompression_bomb_is_refused_in_one_line",
    "test_preprocess.py::test_arrays_equal_torchvision_transform",
    "test_preprocess.py::test_converted_model_top5_equals_torchvision_on_its_own_pipeline",
    "test_timm_transforms.py::test_each_family_tags_transform_at_train_and_test_size_equals_timms",
    "test_timm_transforms.py::test_predict_applies_the_timm_transform_its_checkpoints_metadata_records",
    "test_timm_transforms.py::test_predict_names_an_image_too_thin_for_the_border_resize_and_predicts_the_others",
    "test_timm_transforms.py::test_a_checkpoint_whose_metadata_names_an_unknown_crop_mode_is_refused_in_one_line",
    "test_shards.py::test_a_garbled_record_is_skipped_counted_and_logged_once_like_a_bad_image",
    "test_shards.py::test_a_damaged_shard_index_is_one_line_and_exit_2_from_the_trainer",
    "test_shards.py::test_a_damaged_classes_file_is_one_line_and_exit_2_from_the_converter",
    "test_steps.py::test_accumulation_normalises_each_micro_batch_with_its_own_statistics",
    "test_steps.py::test_activation_checkpointing_gives_the_same_loss_and_gradients",
    "test_steps.py::test_backbone_learning_rate_multiplier_scales_every_update_but_the_heads",
    "test_steps.py::test_clipping_scales_the_gradient_to_the_global_norm_as_torch_defines_it",
    "test_steps.py::test_four_micro_batches_of_8_take_the_step_of_one_batch_of_32",
    "test_steps.py::test_frozen_parts_keep_every_bit_of_their_params_and_statistics",
    "test_steps.py::test_per_device_statistics_do_not_depend_on_the_sharding",
    "test_steps.py::test_train_step_on_the_split_state_equals_nnx_jit_on_the_objects",
    "test_steps.py::test_train_steps_fit_a_fixed_batch",
  }
)

DATA_ENV = "FLAX_RESNET_DATA"


@pytest.fixture(scope="session", autouse=True)
def caches_in_the_session_folder(tmp_path_factory):
  """Every cache of ours and torch's (XLA's compilation cache, weights, torch.hub, inductor) in the
  session's temporary folder, which pytest removes after a green run (pyproject.toml,
  tmp_path_retention_policy): the suite writes nothing in ~/.cache, nor in /tmp, where a
  ``flax_resnet`` folder would shadow the package for scripts run from there. xdist's
  workers share one, beside their own folders, so that each program is compiled once."""
  base = tmp_path_factory.getbasetemp()
  cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "cache"
  cache.mkdir(exist_ok=True)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XDG_CACHE_HOME", str(cache))
    patch.setenv("TORCH_HOME", str(cache / "torch"))
    patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache / "torchinductor"))  # else /tmp's
    yield cache


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  """Marks the tests of ``SLOW``."""
  for item in items:
    test = item.nodeid.split("[")[0].rsplit("/", 1)[-1]
    if test in SLOW or test.split("::")[0] in SLOW:
      item.add_marker(pytest.mark.slow)


DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
  """``$FLAX_RESNET_DATA`` or ``../shared/data``; missing data fails under CI=true."""
  path = Path(os.environ.get(DATA_ENV, DEFAULT_DATA))
  if not path.is_dir():
    message = f"data directory {path} not found (set {DATA_ENV} to the shared data folder)"
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(message)
    pytest.skip(message)
  return path
