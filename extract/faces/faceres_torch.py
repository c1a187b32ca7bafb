"""HSE FaceRes's MobileNet in torch, read from its TF.js graph model: the network of `train-backbone --backbone
faceres-mobilenet`, fine-tuned above a cut on cached activations of its frozen trunk.

The graph is a chain of 27 convolutions (a 3x3 stem, then 13 depthwise 3x3 + pointwise 1x1 pairs), each with its
batch norm folded into a scale (depthwise only) and a bias, then ReLU6; a global average pool; `feats` (1024 ->
256, ReLU) and the age and gender outputs. TF's SAME padding puts the odd pixel at the bottom and the right.
The body takes RGB normalised as (255 x - HSE's means in RGB order) and turns it into HSE's BGR input itself.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_UNITS = 27
# where the frozen trunk may end: the number of conv units below the cut, the map it leaves, the graph's node there
CUTS = {"pw11": 23, "pw12": 25}
CUT_SHAPES = {"pw11": (512, 14, 14), "pw12": (1024, 7, 7)}
CUT_NODES = {"pw11": "conv_pw_11_relu/clip_by_value", "pw12": "conv_pw_12_relu/clip_by_value"}
_ACTIVATION_OPS = ("Relu", "Minimum", "Maximum")  # ReLU6 as TF writes it


class FaceResFormatError(ValueError):
    """A TF.js graph that is not FaceRes's chain of convolutions."""


class ConvUnit(nn.Module):
    """Convolution (batch norm folded into weight and bias) with TF's SAME padding, then ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        pads = []
        for n in (x.shape[3], x.shape[2]):  # F.pad lists the last dimension first
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return F.relu6(self.conv(F.pad(x, pads)))


def _units() -> list[tuple[int, int, int, int, int]]:
    """(cin, cout, kernel, stride, groups) of the 27 units: MobileNet v1 at width 1."""
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]
    units, c = [(3, 32, 3, 2, 1)], 32
    for cout, stride in plan:
        units += [(c, c, 3, stride, c), (c, cout, 1, 1, 1)]
        c = cout
    return units


class FaceResBody(nn.Module):
    """The 27 conv units: normalised RGB [B, 3, 224, 224] -> [B, 1024, 7, 7]; trunk() and top() split it at a cut."""

    cut_shapes = CUT_SHAPES

    def __init__(self):
        super().__init__()
        self.units = nn.Sequential(*[ConvUnit(*u) for u in _units()])

    def trunk(self, x: torch.Tensor, cut: str) -> torch.Tensor:
        return self.units[:CUTS[cut]](x.flip(1))  # RGB -> HSE's BGR

    def top(self, a: torch.Tensor, cut: str) -> torch.Tensor:
        return self.units[CUTS[cut]:](a)

    def trunk_parameters(self, cut: str) -> list[nn.Parameter]:
        return list(self.units[:CUTS[cut]].parameters())

    def top_parameters(self, cut: str) -> list[nn.Parameter]:
        return list(self.units[CUTS[cut]:].parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(x.flip(1))

    def onnx_trunk(self, cut: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """trunk(x, cut) on onnxruntime, 2.5-3x faster than torch on CPU (128-160 against 50 images/s on 2 cores),
        when the trunk's weights are those of the packaged graph (else None): the converted graph up to the cut."""
        weights, sess = _packaged_trunk(cut)
        mine = self.trunk_parameters(cut)
        if len(mine) != len(weights) or not all(torch.equal(a, b) for a, b in zip(mine, weights)):
            return None

        def run(x: torch.Tensor) -> torch.Tensor:
            bgr = x.float().flip(1).contiguous().numpy()
            return torch.from_numpy(sess.run([CUT_NODES[cut]], {"images": bgr})[0])
        return run


@lru_cache(maxsize=None)
def _packaged_trunk(cut: str):
    """The packaged graph's trunk weights below the cut (in trunk_parameters' order) and an onnxruntime session of
    the graph up to the cut, built once per process."""
    import onnxruntime as ort

    from .faceres import model_files
    from .tfjs import tfjs_to_onnx

    path = model_files("faceres-deep")["model"][0]
    sd = tfjs_state_dict(path)
    weights = [sd[f"body.units.{i}.conv.{p}"] for i in range(CUTS[cut]) for p in ("weight", "bias")]
    so = ort.SessionOptions()
    so.intra_op_num_threads = len(os.sched_getaffinity(0))
    return weights, ort.InferenceSession(tfjs_to_onnx(path, [CUT_NODES[cut]]), so, providers=["CPUExecutionProvider"])


def feats_head() -> nn.Sequential:
    """Global average pool, then FaceRes's `feats` layer (1024 -> 256, ReLU)."""
    return nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), feats=nn.Linear(1024, 256),
                                     relu=nn.ReLU()))


def tfjs_state_dict(model_json: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a FaceRes TF.js graph as a state dict of {body: FaceResBody, head: feats_head()}; a graph of
    another layout is an error naming the first node that differs."""
    from .tfjs import node_attr, read_weights

    model, weights = read_weights(model_json)
    shapes = _units()
    sd: dict[str, torch.Tensor] = {}
    unit = -1
    scale = None

    def fail(node: dict, what: str) -> FaceResFormatError:
        return FaceResFormatError(f"{model_json}: node {node['name']!r} ({node['op']}): {what}; not FaceRes's "
                                  f"MobileNet")

    def close_unit() -> None:  # fold a depthwise unit's batch-norm scale into its weights
        if scale is not None:
            key = f"body.units.{unit}.conv"
            sd[f"{key}.weight"] = sd[f"{key}.weight"] * torch.from_numpy(scale).view(-1, 1, 1, 1)

    for node in model["modelTopology"]["node"]:
        op, ins = node["op"], [i.split(":")[0] for i in node.get("input", [])]
        if op in ("Const", "Placeholder") or op in _ACTIVATION_OPS or op in ("Sigmoid", "Softmax"):
            continue
        if op in ("Conv2D", "DepthwiseConv2dNative"):
            close_unit()
            unit, scale = unit + 1, None
            if unit >= N_UNITS:
                raise fail(node, f"more than {N_UNITS} convolutions")
            cin, cout, k, stride, groups = shapes[unit]
            kernel = weights[ins[1]]
            w = (kernel.transpose(2, 3, 0, 1).reshape(-1, 1, k, k) if op == "DepthwiseConv2dNative"
                 else kernel.transpose(3, 2, 0, 1))
            got_stride, padding = node_attr(node, "strides", [1, 1, 1, 1])[1], node_attr(node, "padding")
            if w.shape != (cout, cin // groups, k, k) or got_stride != stride or padding != "SAME":
                raise fail(node, f"unit {unit} is {tuple(w.shape)} stride {got_stride}, expected "
                                 f"{(cout, cin // groups, k, k)} stride {stride} SAME")
            sd[f"body.units.{unit}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(w, np.float32))
        elif op == "Mul" and unit >= 0 and ins[1] in weights:
            scale = weights[ins[1]].reshape(-1).astype(np.float32)
        elif op in ("Add", "AddV2", "BiasAdd") and unit >= 0 and ins[1] in weights:
            sd[f"body.units.{unit}.conv.bias"] = torch.from_numpy(weights[ins[1]].reshape(-1).astype(np.float32))
        elif op == "Mean":
            close_unit()
            scale = None
        elif op == "_FusedMatMul" and node["name"].startswith("feats/"):
            sd["head.feats.weight"] = torch.from_numpy(np.ascontiguousarray(weights[ins[1]].T, np.float32))
            sd["head.feats.bias"] = torch.from_numpy(weights[ins[2]].astype(np.float32))
        elif op == "_FusedMatMul":
            continue  # the age and gender outputs: not part of the backbone
        else:
            raise fail(node, "unexpected op")
    if unit != N_UNITS - 1 or "head.feats.weight" not in sd or len(sd) != 2 * N_UNITS + 2:
        raise FaceResFormatError(f"{model_json}: {unit + 1} convolutions and {len(sd)} tensors; FaceRes has "
                                 f"{N_UNITS} convolutions with biases and a feats layer")
    return sd
