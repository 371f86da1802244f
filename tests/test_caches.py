"""The command-line tools' persistent compilation cache; the suite's own caches."""

import os
import subprocess
import sys

SNIPPET = (
  "from flax_resnet.caches import enable_compilation_cache; import jax; "
  "print(enable_compilation_cache()); "
  "print(jax.config.jax_persistent_cache_min_compile_time_secs)"
)


def _run(**env):
  clean = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  done = subprocess.run(
    [sys.executable, "-c", SNIPPET],
    env={**clean, **env},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  return done.stdout.split()


def test_cache_defaults_to_the_user_cache_folder_and_keeps_every_program(tmp_path):
  assert _run(XDG_CACHE_HOME=str(tmp_path)) == [str(tmp_path / "flax_resnet" / "xla"), "0.0"]


def test_cache_keeps_a_folder_chosen_through_jax_compilation_cache_dir(tmp_path):
  chosen = str(tmp_path / "mine")
  assert _run(XDG_CACHE_HOME=str(tmp_path), JAX_COMPILATION_CACHE_DIR=chosen)[0] == chosen


def test_the_suite_keeps_every_cache_in_its_own_temporary_folder(tmp_path_factory):
  import tomllib
  from pathlib import Path

  from flax_resnet.caches import cache_dir
  from flax_resnet.pretrained import weights_dir

  session = tmp_path_factory.getbasetemp()
  session = session.parent if os.environ.get("PYTEST_XDIST_WORKER") else session
  for folder in (cache_dir("xla"), weights_dir(), Path(os.environ["TORCH_HOME"])):
    assert folder.is_relative_to(session), folder
  # ... which pytest removes after a green run, keeping a failed run's folders, the last only
  ini = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
  options = ini["tool"]["pytest"]["ini_options"]
  assert options["tmp_path_retention_policy"] == "failed"
  assert options["tmp_path_retention_count"] == 1
