"""Models for serving: ONNX (ONNX Runtime, OpenVINO...) and serialized StableHLO (``jax.export``,
for JAX, TensorFlow and IREE serving stacks), each verified against the model before it is
written (``flax-resnet-export`` also writes torchvision's state dict: ``port.torch_files``).

``export`` takes a checkpoint directory (converted, or the training export's) or the
``(model, Metadata)`` pair that ``flax_resnet.load`` and ``load_pretrained`` return.

ONNX goes through the bit-exact torch twin of the model (``port.twin``) and
``torch.onnx.export``: measured against jax2onnx (docs/guides/deploy.md), it is the one that
exports every architecture here, and its graph is torchvision's own, as fast on ONNX Runtime
as torchvision's export. Its input is NCHW; StableHLO's is the model's own NHWC. The
preprocessing stays outside the graph and is recorded with it (``record``): in the ONNX
file's metadata, and for StableHLO in ``FILE.json`` beside it.

Verification: the artifact runs on ``smooth_images`` at two batch sizes (one, where the batch
is fixed) and is held to the converter's rule (``port.parity.judge``): its error against the
model in float64 at most twice the model's own error in the export's dtype, plus 1e-6, and
float64's top-5. A failing artifact is never written.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flax_resnet.files import atomic_path
from flax_resnet.versions import versions

# JAX, Flax, torch, onnx and onnxruntime (seconds to import) are imported where they are
# used: predicting with ONNX Runtime needs neither JAX nor torch.

FORMATS = ("onnx", "stablehlo")
SUFFIXES = {"onnx": (".onnx",), "stablehlo": (".stablehlo",)}
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_OPSET = 18
# The ONNX file's metadata keys: the whole record, and its preprocessing and class names
# again under plain names for tools that read only those.
RECORD_KEY = "flax_resnet"
VERIFY_BATCHES = (1, 3)
INPUT, OUTPUT = "images", "logits"


def format_of(out: str | os.PathLike, format: str | None = None) -> str:
  """``format``, or the one ``out``'s suffix names; ``ValueError`` naming the parameter when
  neither says one or they disagree."""
  suffix = Path(out).suffix
  by_suffix = next((f for f, s in SUFFIXES.items() if suffix in s), None)
  if format is not None and format not in FORMATS:
    raise ValueError(f"format={format!r}: must be one of {', '.join(FORMATS)}")
  fmt = format or by_suffix
  if fmt is None:
    raise ValueError(f"out={str(out)!r}: name a suffix ({_suffix_list()}) or pass format=")
  if suffix not in SUFFIXES[fmt]:
    raise ValueError(f"out={str(out)!r}: a {fmt} file ends in {' or '.join(SUFFIXES[fmt])}")
  return fmt


def _suffix_list() -> str:
  return ", ".join(s for suffixes in SUFFIXES.values() for s in suffixes)


def sidecar(path: Path) -> Path:
  """The JSON record beside a StableHLO file: ``FILE.stablehlo.json``."""
  return path.with_name(path.name + ".json")


def replace_problem(out: Path, fmt: str) -> str | None:
  """Why ``force`` may not replace ``out``, or None: only an earlier export of this format."""
  if out.is_symlink() or not out.is_file():
    return "is not a regular file"
  try:
    read_record(out)
  except ValueError:
    return f"is not an earlier {fmt} export of flax-resnet"
  return None


def check_out(out: Path, fmt: str, force: bool) -> None:
  """``FileExistsError`` naming ``out`` when it may not be written, before any work."""
  if out.is_dir():
    raise FileExistsError(f"{out} is a directory; name the file to write")
  beside = sidecar(out)
  if fmt == "stablehlo" and (beside.exists() or beside.is_symlink()) and not out.exists():
    raise FileExistsError(
      f"{beside} exists, the record an export writes beside {out.name}; "
      "remove it or choose another path"
    )
  if not (out.exists() or out.is_symlink()):
    return
  if not force:
    raise FileExistsError(f"{out} exists; pass force=True to replace it")
  problem = replace_problem(out, fmt)
  if problem:
    raise FileExistsError(f"{out} {problem}; force=True replaces only an earlier export")


def export(
  source: str | os.PathLike | tuple[Any, Any],
  out: str | os.PathLike,
  *,
  format: str | None = None,
  opset: int = DEFAULT_OPSET,
  static_batch: int | None = None,
  fold_bn: bool = True,
  dtype: str = "float32",
  force: bool = False,
) -> dict[str, Any]:
  """Writes ``source`` (a checkpoint directory, or a ``(model, Metadata)`` pair) to ``out``
  as ``format`` (by default the one ``out``'s suffix names: .onnx or .stablehlo),
  verified first; returns the record written with it (``record``).

  ``opset``: ONNX's. ``static_batch``: a fixed batch size instead of a symbolic one.
  ``fold_bn``: BatchNorm folded into the convolutions (ONNX: by torch's exporter; StableHLO:
  ``fold_batchnorm``). ``dtype``: the graph's float type (ONNX Runtime's CPU provider has no
  bfloat16 convolution: StableHLO only). ``force`` replaces an earlier export, nothing else.
  ``ValueError`` naming the parameter or the file when it cannot be done; ``out`` is then
  as it was.
  """
  out = Path(out)
  fmt = format_of(out, format)
  _check_options(fmt, opset, static_batch, dtype)
  check_out(out, fmt, force)
  model, meta = _load(source)
  out.parent.mkdir(parents=True, exist_ok=True)
  record = _record(fmt, model, meta, static_batch, fold_bn, dtype, opset)
  writer = _write_onnx if fmt == "onnx" else _write_stablehlo
  writer(model, meta, out, record)
  return record


def _check_options(fmt: str, opset: int, static_batch: int | None, dtype: str) -> None:
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
  if fmt == "onnx" and dtype == "bfloat16":
    raise ValueError(
      "dtype='bfloat16': ONNX Runtime's CPU provider has no bfloat16 convolution; "
      "float16, or format='stablehlo'"
    )
  if fmt == "onnx" and not 13 <= opset <= 20:
    raise ValueError(f"opset={opset}: torch's exporter writes opsets 13 to 20")
  if static_batch is not None and static_batch < 1:
    raise ValueError(f"static_batch={static_batch}: must be 1 or more")


def _load(source: Any) -> tuple[Any, Any]:
  if isinstance(source, tuple):
    return source
  from flax_resnet.saved_model import load

  return load(source)


def _record(
  fmt: str, model: Any, meta: Any, static_batch: int | None, fold_bn: bool, dtype: str, opset: int
) -> dict[str, Any]:
  """What is written with the artifact: how to feed it (layout, dtype, size, preprocessing),
  how to read it (class names), what it is and where it came from."""
  from flax_resnet.saved_model import options_to_json

  transform = meta.transform
  height, width = _pair(transform.crop_size)
  return {
    "format": fmt,
    "input": INPUT,
    "output": OUTPUT,
    "layout": "NCHW" if fmt == "onnx" else "NHWC",
    "input_dtype": dtype,
    "batch": static_batch if static_batch is not None else "dynamic",
    "image_size": [height, width],
    "channels": model.in_channels,
    "num_classes": meta.options.get("num_classes", 1000),
    "preprocessing": transform.to_json(),
    "categories": meta.categories,
    "arch": meta.arch,
    "options": options_to_json(meta.options),
    "source": meta.source,
    "folded_bn": fold_bn,
    **({"opset": opset} if fmt == "onnx" else {}),
    "versions": versions(),
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  }


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _torch_onnx_export(model: Any, meta: Any, path: Path, record: dict[str, Any]) -> None:
  from flax_resnet.port.onnx_export import torch_onnx_export

  torch_onnx_export(model, meta, path, record)


def _write_onnx(model: Any, meta: Any, out: Path, record: dict[str, Any]) -> None:
  import onnx

  with atomic_path(out) as tmp:
    _torch_onnx_export(model, meta, tmp, record)
    proto = onnx.load(str(tmp))
    record["verification"] = verify(tmp, model, meta, record)
    del proto.metadata_props[:]
    for key, value in _metadata_props(record).items():
      proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(tmp))


def _metadata_props(record: dict[str, Any]) -> dict[str, str]:
  return {
    RECORD_KEY: json.dumps(record, sort_keys=True, allow_nan=False),
    "preprocessing": json.dumps(record["preprocessing"], sort_keys=True),
    "class_names": json.dumps(record["categories"]),
  }


def _write_stablehlo(model: Any, meta: Any, out: Path, record: dict[str, Any]) -> None:
  data = _stablehlo_bytes(model, meta, record)
  with atomic_path(out) as tmp:
    tmp.write_bytes(data)
    record["verification"] = verify(tmp, model, meta, record)
    with atomic_path(sidecar(out)) as tmp_json:
      tmp_json.write_text(json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _stablehlo_bytes(model: Any, meta: Any, record: dict[str, Any]) -> bytearray:
  """``jax.export``'s serialization of the model's eval forward, its weights inside, the batch
  dimension symbolic (or fixed)."""
  import jax
  from flax import nnx

  from flax_resnet.folding import fold_batchnorm

  net = _in_dtype(model, meta, record["input_dtype"])
  net = fold_batchnorm(net) if record["folded_bn"] and _has_batchnorm(net) else net
  graphdef, state = nnx.split(net)

  def logits(x):
    return nnx.merge(graphdef, state)(x)

  batch = record["batch"]
  dim = jax.export.symbolic_shape("batch")[0] if batch == "dynamic" else batch
  shape = (dim, *record["image_size"], record["channels"])
  spec = jax.ShapeDtypeStruct(shape, np.dtype(record["input_dtype"]))
  return jax.export.export(jax.jit(logits))(spec).serialize()


def _has_batchnorm(model: Any) -> bool:
  from flax_resnet.model import BatchNorm, FrozenBatchNorm

  return isinstance(model.bn1, (BatchNorm, FrozenBatchNorm))


def _in_dtype(model: Any, meta: Any, dtype: str) -> Any:
  """``model`` computing and holding its weights in ``dtype`` (float64 needs x64 enabled)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from flax_resnet.registry import model_to_fill

  if dtype == "float32" and not meta.options.get("dtype"):
    return model
  twin = model_to_fill(meta.arch, {**meta.options, "dtype": dtype, "param_dtype": dtype})
  wanted = nnx.state(twin, nnx.Any(nnx.Param, nnx.BatchStat))
  have = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  nnx.update(twin, jax.tree.map(lambda w, h: jnp.asarray(h, w.dtype), wanted, have))
  twin.eval()
  return twin


def verify(path: Path, model: Any, meta: Any, record: Mapping[str, Any]) -> dict[str, Any]:
  """Runs the artifact at ``path`` at ``VERIFY_BATCHES`` (the fixed batch, if it has one) and
  judges it against ``model`` (``port.parity.judge``); the verdicts by batch size.
  ``ValueError`` naming the file when one fails.

  The model runs once, on the largest batch; each smaller batch is its first images (eval
  mode: an image's logits do not depend on the others), so the model compiles once a dtype.
  """
  run = _onnx_runner(path) if record["format"] == "onnx" else _stablehlo_runner(path)
  batch = record["batch"]
  sizes = VERIFY_BATCHES if batch == "dynamic" else (batch,)
  x = _images(0, max(sizes), record)
  theirs, exact = _reference(model, meta, x, record["input_dtype"])
  verdicts = {}
  for n in sizes:
    nchw = record["layout"] == "NCHW"
    ours = run(np.ascontiguousarray(x[:n].transpose(0, 3, 1, 2) if nchw else x[:n]))
    verdicts[str(n)] = _judged(path, ours, theirs[:n], exact[:n], n)
  return {"input": "smooth_images", "rule": "float64", "batches": verdicts}


def _judged(path: Path, ours: Any, theirs: Any, exact: Any, n: int) -> dict[str, Any]:
  from flax_resnet.port.parity import judge

  ours = np.asarray(ours, np.float64)
  if ours.shape != exact.shape:
    raise ValueError(f"{path}: gives logits of shape {ours.shape} for {exact.shape}; not written")
  verdict = judge(ours, np.asarray(theirs, np.float64), exact)
  if not verdict["passed"]:
    raise ValueError(
      f"{path}: verification failed at batch {n} (error {verdict['ours_vs_float64']:.3g} "
      f"against float64, bound {verdict['bound']:.3g}; top-5 as float64's: "
      f"{verdict['top5_as_float64']}); not written"
    )
  keys = ("ours_vs_float64", "torch_vs_float64", "bound", "top5_as_float64")
  return {
    "error": verdict[keys[0]],
    "model_error": verdict[keys[1]],
    **{k: verdict[k] for k in keys[2:]},
  }


def _images(seed: int, n: int, record: Mapping[str, Any]) -> np.ndarray:
  from flax_resnet.port.parity import smooth_images

  return smooth_images(seed, (n, *record["image_size"], record["channels"])).astype(
    numpy_dtype(record["input_dtype"])
  )


def numpy_dtype(name: str) -> np.dtype:
  """numpy's dtype of ``name``, bfloat16 (ml_dtypes', as JAX's) included."""
  import ml_dtypes

  return np.dtype(getattr(ml_dtypes, name) if name == "bfloat16" else name)


def _reference(model: Any, meta: Any, x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
  """The model's logits in ``dtype`` and in float64, on NHWC ``x``."""
  import jax

  theirs = _logits(_in_dtype(model, meta, dtype), x.astype(numpy_dtype(dtype)))
  with jax.enable_x64(True):
    exact = _logits(_in_dtype(model, meta, "float64"), x.astype(np.float64))
  return theirs, exact


def _logits(model: Any, x: np.ndarray) -> np.ndarray:
  import jax
  from flax import nnx

  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  with jax.default_matmul_precision("highest"):
    return np.asarray(forward(state, x), np.float64)


def _onnx_runner(path: Path):
  session = onnx_session(path)
  return lambda x: session.run(None, {INPUT: x})[0]


def _stablehlo_runner(path: Path):
  import jax

  exported = jax.export.deserialize(bytearray(path.read_bytes()))
  return lambda x: np.asarray(exported.call(x))


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
  """An ONNX Runtime session on the CPU for ``path``; ``ValueError`` naming the file when
  ONNX Runtime cannot load it."""
  from flax_resnet.errors import one_line

  ort = _onnxruntime()
  options = ort.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
  try:
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
  except Exception as e:  # onnxruntime raises its own types for unreadable or invalid files
    raise ValueError(f"{path}: ONNX Runtime cannot load it ({one_line(e)[:300]})") from e


def _onnxruntime() -> Any:
  from flax_resnet.errors import MissingExtra

  try:
    import onnxruntime
  except ImportError as e:
    raise MissingExtra("ONNX Runtime is not installed: pip install 'flax-resnet[deploy]'") from e
  return onnxruntime


def read_record(path: str | os.PathLike) -> dict[str, Any]:
  """The record an export wrote with ``path`` (its ONNX metadata, or ``FILE.json`` beside a
  StableHLO file); ``ValueError`` naming the file when it is not a flax-resnet export."""
  path = Path(path)
  if path.suffix == ".stablehlo":
    return _stablehlo_record(path)
  return _onnx_record(path)


def load_onnx(path: str | os.PathLike, threads: int | None = None) -> tuple[Any, dict[str, Any]]:
  """(ONNX Runtime session, record) of an ONNX export; ``ValueError`` naming the file when it
  is not one, or its graph does not take what its record says."""
  session = onnx_session(path, threads)
  record = _onnx_record(Path(path), session)
  inputs = session.get_inputs()
  if [i.name for i in inputs] != [record.get("input")]:
    raise ValueError(f"{path}: its graph's inputs are not the one its record names")
  return session, record


def _onnx_record(path: Path, session: Any = None) -> dict[str, Any]:
  session = session or onnx_session(path)
  text = session.get_modelmeta().custom_metadata_map.get(RECORD_KEY)
  if text is None:
    raise ValueError(f"{path}: not a flax-resnet export (no '{RECORD_KEY}' in its metadata)")
  return _parsed(text, f"{path}: metadata '{RECORD_KEY}'")


def _stablehlo_record(path: Path) -> dict[str, Any]:
  import jax

  from flax_resnet.errors import one_line

  json_path = sidecar(path)
  if not json_path.is_file():
    raise ValueError(f"{path}: not a flax-resnet export (no {json_path.name} beside it)")
  try:
    jax.export.deserialize(bytearray(path.read_bytes()))
  except Exception as e:  # flatbuffers and jax raise many types for damaged bytes
    raise ValueError(f"{path}: jax.export cannot read it ({one_line(e)[:200]})") from e
  return _parsed(json_path.read_text(), str(json_path))


def _parsed(text: str, where: str) -> dict[str, Any]:
  try:
    record = json.loads(text)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{where} is corrupt: {e}") from e
  keys = ("format", "input", "layout", "input_dtype", "batch", "preprocessing", "image_size")
  missing = [k for k in keys if not isinstance(record, dict) or k not in record]
  if missing:
    raise ValueError(f"{where}: not a flax-resnet export record (missing {missing})")
  return record
