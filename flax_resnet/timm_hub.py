"""timm's pretrained weights from the Hugging Face hub cache, in one call:
``load_pretrained_timm("timm/resnet50d.ra4_e3600_r224_in1k")``.

The first call for a repository gets its ``model.safetensors`` and ``config.json`` through
``huggingface_hub`` (downloading them into its cache, or, with ``HF_HUB_OFFLINE=1``, finding
them there), checks the weights' SHA-256 against the name of the blob they are stored as (the
hub's content hash), reads the architecture, class names and eval preprocessing from
``config.json``, converts the weights, verifies them against timm in float64 as
``flax-resnet-convert`` does, and keeps the checkpoint in ``$FLAX_RESNET_WEIGHTS`` (or
``~/.cache/flax_resnet/weights``) as ``hf-hub--OWNER--NAME``, saying each stage on stderr.
Later calls only read that checkpoint: no torch, no timm, no network; where the hub cache
holds the repository's weights, their hash must still be the one converted.

``huggingface_hub`` reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` when it is first imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flax_resnet.errors import MissingExtra, one_line
from flax_resnet.files import sha256
from flax_resnet.port.state_dict import ConversionError
from flax_resnet.preprocess import EvalTransform, timm_data_config
from flax_resnet.pretrained import Say, check_incomplete_entry, saving, weights_dir, with_head

if TYPE_CHECKING:
  from flax_resnet.model import ResNet
  from flax_resnet.saved_model import Metadata

HUB_PREFIX = "hf-hub:"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")


class HubFileMissing(ConversionError):
  """``file`` of ``repo`` is not in the hub cache and could not be downloaded; ``place`` is
  the repository's folder in the hub cache, where a copy fetched elsewhere goes."""

  def __init__(self, repo: str, file: str, place: Path, offline: bool):
    why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
    super().__init__(
      f"{repo}: {file} is not in the Hugging Face hub cache and {why}: download it where the "
      f"hub is reachable (hf download {repo} {WEIGHTS_FILE} {CONFIG_FILE}) and place that "
      f"cache's {place.name} folder at {place}"
    )
    self.repo, self.file, self.place = repo, file, place


def _hub() -> Any:
  """``huggingface_hub``, or ``MissingExtra`` naming the extra that installs it."""
  try:
    import huggingface_hub
  except ModuleNotFoundError as e:
    raise MissingExtra(
      f"timm's weights from the Hugging Face hub need huggingface_hub, and {e.name} is not "
      "installed: pip install 'flax-resnet[timm]'"
    ) from None
  return huggingface_hub


def split_repo(repo_id: str) -> tuple[str, str | None]:
  """``("timm/resnet50d.a1_in1k", None)`` from ``"hf-hub:timm/resnet50d.a1_in1k"``; a
  revision after ``@`` as timm spells it; a ``ValueError`` for what names no repository."""
  repo, _, revision = repo_id.removeprefix(HUB_PREFIX).partition("@")
  if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo) or ".." in repo:
    raise ValueError(
      f"repo_id={repo_id!r}: expected a Hugging Face hub repository such as "
      "'timm/resnet50d.ra4_e3600_r224_in1k' (or 'hf-hub:' before it)"
    )
  return repo, revision or None


def entry_path(repo: str, revision: str | None) -> Path:
  """Where the converted checkpoint of ``repo`` (at ``revision``) is kept."""
  name = "hf-hub--" + repo.replace("/", "--") + (f"@{revision}" if revision else "")
  return weights_dir() / name.replace(os.sep, "_")


def hub_folder(repo: str) -> Path:
  """The repository's folder in the hub cache (``models--OWNER--NAME``)."""
  hub = _hub()
  from huggingface_hub.file_download import repo_folder_name

  return Path(hub.constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def hub_file(repo: str, file: str, revision: str | None) -> Path:
  """``file`` of ``repo`` in the hub cache (its snapshot's link), downloaded there first when
  the hub is reachable and it is not there yet (``hf_hub_download``)."""
  hub = _hub()
  try:
    return Path(hub.hf_hub_download(repo, file, revision=revision))
  except hub.errors.LocalEntryNotFoundError:
    raise HubFileMissing(repo, file, hub_folder(repo), hub.constants.is_offline_mode()) from None
  except (hub.errors.EntryNotFoundError, OSError, ValueError) as e:
    raise ConversionError(f"{repo}: cannot get {file} from the hub ({one_line(e)})") from None


def blob_hash(path: Path) -> str | None:
  """The name of the blob that hub-cache file ``path`` links to, which is the hub's hash of
  its bytes (SHA-256 for weights, git's SHA-1 for small files); None for a copy."""
  if not path.is_symlink():
    return None
  blob = Path(os.path.realpath(path))
  return blob.name if blob.parent.name == "blobs" else None


def checked_hash(path: Path, repo: str) -> str:
  """The SHA-256 of hub-cache file ``path``, checked against its blob's name; a
  ``ConversionError`` in one line naming the blob otherwise."""
  name = blob_hash(path)
  if name is None:
    raise ConversionError(
      f"{path}: not a link to a blob named by its hash (a copy?): the hub's hash of {repo}'s "
      "file cannot be checked; remove it and download it again with huggingface_hub"
    )
  blob = Path(os.path.realpath(path))
  if _SHA256.match(name):
    digest = sha256(blob)
  elif _GIT_SHA1.match(name):
    data = blob.read_bytes()  # a small file kept in git, named by git's blob hash
    digest = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
  else:
    raise ConversionError(f"{blob}: a blob whose name is not a SHA-256 or git SHA-1")
  if digest != name:
    raise ConversionError(
      f"{blob}: its bytes hash to {digest}, not to its name, the hub's content hash of {repo}'s "
      f"{path.name}: a damaged or altered file; remove it and download it again"
    )
  return digest


def read_config(path: Path) -> dict[str, Any]:
  """timm's ``config.json``: ``architecture``, ``num_classes``, ``label_names`` and the
  ``pretrained_cfg`` (a legacy config is all one dict, as timm reads it); a
  ``ConversionError`` naming the file and key otherwise."""
  try:
    config = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConversionError(f"{path}: not a JSON config ({one_line(e)})") from None
  if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
    raise ConversionError(f"{path}: no 'architecture' naming timm's model")
  cfg = config.get("pretrained_cfg", config)
  if not isinstance(cfg, dict):
    raise ConversionError(f"{path}: 'pretrained_cfg' is not an object")
  return {**config, "pretrained_cfg": cfg}


def transform_of(cfg: dict[str, Any], where: Path) -> EvalTransform:
  """timm's eval preprocessing for a ``pretrained_cfg`` at its test size, as timm's
  ``validate.py`` evaluates and publishes (``resolve_data_config(use_test_size=True)``, then
  ``create_transform``: ``crop_pct``, ``crop_mode``, interpolation, mean/std); a
  ``ConversionError`` naming the file and the field it cannot use."""
  try:
    return EvalTransform.from_timm(**timm_data_config(cfg, use_test_size=True))
  except ValueError as e:
    raise ConversionError(f"{where}: pretrained_cfg: {one_line(e)}") from None


def label_names(config: dict[str, Any]) -> list[str] | None:
  """The classes' names, in the head's order, where ``config.json`` gives one per class."""
  names = config.get("label_names", config["pretrained_cfg"].get("label_names"))
  if isinstance(names, dict):  # timm's id -> name, for ids with gaps
    names = [names.get(str(i), names.get(i)) for i in range(len(names))]
  count = config.get("num_classes", config["pretrained_cfg"].get("num_classes"))
  if not isinstance(names, list) or len(names) != count:
    return None
  return [str(n) for n in names] if all(n is not None for n in names) else None


# What metadata.json's source keeps of the pretrained_cfg: the data config and the licence.
_CFG_KEPT = (
  "input_size",
  "test_input_size",
  "crop_pct",
  "test_crop_pct",
  "crop_mode",
  "interpolation",
  "mean",
  "std",
  "license",
)


def load_pretrained_timm(
  repo_id: str, arch: str | None = None, **options: Any
) -> tuple[ResNet, Metadata]:
  """(model in eval mode, its ``Metadata``) for timm's weights in hub repository ``repo_id``
  (``"timm/resnet50d.ra4_e3600_r224_in1k"``, ``"hf-hub:..."``, ``"...@REVISION"``).

  ``arch`` defaults to ``config.json``'s; the file must be of it. ``metadata.transform`` is
  timm's eval preprocessing for the weights (``pretrained_cfg``), ``metadata.categories``
  their class names where ``config.json`` has them. ``options`` are ``load_pretrained``'s:
  ``dtype``, ``norm``, ``dropout``, and ``num_classes``, which, other than the weights',
  gives the backbone a fresh head as timm does (``rngs``), or none for 0.
  """
  from flax_resnet.registry import architecture
  from flax_resnet.saved_model import METADATA, load

  repo, revision = split_repo(repo_id)
  if arch is not None:
    architecture(arch)
  num_classes, rngs = options.pop("num_classes", None), options.pop("rngs", None)
  path = entry_path(repo, revision)
  if not (path / METADATA).is_file():
    check_incomplete_entry(path, f"{repo}'s {WEIGHTS_FILE}")
    convert_from_hub(repo, revision, arch, path)
  check_cached_source(path, repo, revision)
  model, meta = load(path, **options)
  if arch is not None and meta.arch != arch:
    raise ConversionError(f"{path / METADATA}: {repo} holds {meta.arch}, not $arch", arch=arch)
  wanted = meta.options.get("num_classes") if num_classes is None else num_classes
  return with_head(model, meta, wanted, rngs)


def check_cached_source(path: Path, repo: str, revision: str | None) -> None:
  """That converted checkpoint ``path`` records the SHA-256 of the weights that the hub cache
  holds for ``repo`` now, where it holds them (no network); a ``ConversionError`` naming
  the file otherwise, as ``pretrained.check_cached_source`` does for torchvision's."""
  from flax_resnet.saved_model import METADATA, read_metadata

  hub = _hub()
  cached = hub.try_to_load_from_cache(repo, WEIGHTS_FILE, revision=revision)
  current = blob_hash(Path(cached)) if isinstance(cached, str) else None
  digest = (read_metadata(path).source or {}).get("sha256")
  if current is not None and digest != current:
    raise ConversionError(
      f"{path / METADATA}: source sha256 {digest} is not {current}, the hash of {repo}'s "
      f"{WEIGHTS_FILE} in the hub cache ({cached}): converted from another file; remove "
      f"{path} to convert the hub's file again"
    )


def _timm_messages(repo: str) -> dict[str, Callable[[dict[str, Any]], str]]:
  """``Say``'s messages for ``repo``'s weights (their hash is said before ``port`` starts)."""
  return {
    "convert": lambda _: f"{repo}: converting {WEIGHTS_FILE} (first use only)",
    "verify": lambda _: "verifying against timm in float32 and float64 on a fixed batch",
    "save": saving,
  }


def convert_from_hub(repo: str, revision: str | None, arch: str | None, path: Path) -> Path:
  """Gets ``repo``'s weights and config through the hub cache, checks their hashes, then
  converts, verifies against timm and saves them at ``path`` (``port.pipeline.port``)."""
  from flax_resnet.port.pipeline import port
  from flax_resnet.port.torch_files import require_timm
  from flax_resnet.registry import ALL_ARCHITECTURES

  weights = hub_file(repo, WEIGHTS_FILE, revision)
  config_file = hub_file(repo, CONFIG_FILE, revision)
  print(f"flax_resnet: {repo}: checking {WEIGHTS_FILE}'s SHA-256", file=sys.stderr, flush=True)
  digest = checked_hash(weights, repo)
  checked_hash(config_file, repo)
  config = read_config(config_file)
  if arch is None and config["architecture"] not in ALL_ARCHITECTURES:
    raise ConversionError(
      f"{config_file}: architecture {config['architecture']!r} is not one built here; "
      "flax_resnet.list_models('timm') lists those that are"
    )
  cfg = config["pretrained_cfg"]
  source = {
    "kind": "hf_hub",
    "repo": repo,
    "revision": revision or "main",
    "commit": weights.parent.name,  # the snapshot's folder: the commit it was resolved to
    "file": WEIGHTS_FILE,
    "path": str(weights),
    "sha256": digest,
    "pretrained_cfg": {k: cfg[k] for k in _CFG_KEPT if k in cfg},
  }
  require_timm(f"converting {repo}'s weights")
  try:
    port(
      state_dict=weights,
      arch=arch or config["architecture"],
      transform=transform_of(cfg, config_file),
      source=source,
      categories=label_names(config),
      out=path,
      overwrite=path.is_dir(),  # an empty directory only (check_incomplete_entry)
      progress=Say(_timm_messages(repo)),
    )
  except FileExistsError:  # another process converted the same weights meanwhile
    pass
  return path
