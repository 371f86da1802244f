"""ONNX through the torch twin: ``torch.onnx.export`` of the torchvision (or timm) model that
holds a flax-resnet model's weights bit for bit (``twin``, ``torch_files``), for
``flax_resnet.deploy``. Its graph is torchvision's own export: Conv, Relu, Add, the pools, Gemm.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flax_resnet.port.torch_files import require_torch, to_torch_state_dict


def torch_onnx_export(model: Any, meta: Any, path: Path, record: Mapping[str, Any]) -> None:
  """Writes ``model`` (with ``meta``'s arch and options) to ``path`` as the ``record`` says:
  its ``input`` and ``output`` names, ``input_dtype``, ``batch`` (a size or "dynamic"),
  ``channels``, ``image_size``, ``opset`` and ``folded_bn`` (BatchNorm folded into the
  convolutions by torch's exporter, or kept as ``BatchNormalization`` nodes). ``ValueError``
  where torch has no twin of the model."""
  require_torch("exporting to ONNX")
  import torch

  from flax_resnet.port.twin import torch_resnet

  net = torch_resnet(meta.arch, meta.options)
  if net is None:
    raise ValueError(
      "ONNX is exported through the model's torch twin, and torch has none for this "
      "configuration (group norm, a headless net...); format='stablehlo' exports it"
    )
  net.load_state_dict(to_torch_state_dict(model), strict=True)
  net.eval()
  dtype = getattr(torch, record["input_dtype"])
  net.to(dtype)
  dynamic = record["batch"] == "dynamic"
  x = torch.zeros((1 if dynamic else record["batch"], record["channels"], *record["image_size"]))
  names = [record["input"]], [record["output"]]
  axes = {names[0][0]: {0: "batch"}, names[1][0]: {0: "batch"}} if dynamic else None
  mode = torch.onnx.TrainingMode.EVAL if record["folded_bn"] else torch.onnx.TrainingMode.PRESERVE
  # dynamo=False: the TorchScript exporter; torch's default one needs onnxscript, one more
  # dependency, for the same graph here. Its deprecation notice is silenced.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(
      net,
      (x.to(dtype),),
      str(path),
      dynamo=False,
      opset_version=record["opset"],
      input_names=names[0],
      output_names=names[1],
      dynamic_axes=axes,
      training=mode,
    )
