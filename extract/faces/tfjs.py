"""TF.js graph models (`model.json` and its weight shards) converted to ONNX with numpy and onnx.helper, no
TensorFlow.

The graph is NHWC; the ONNX model is NCHW: its input is [N, C, H, W], conv weights are re-laid out, constants that
broadcast against a 4-D tensor are transposed, reduction axes are remapped, and a tensor is transposed back to NHWC
before any op that reshapes or slices it. TF 'SAME' padding is ONNX SAME_UPPER. float16-quantised weights are
dequantised at load. An op outside OPS is an error naming the op and the node.

Clamps (Relu, Relu6, Minimum / Maximum with a scalar constant) become Clip nodes, and a chain of them (TF's ReLU6
as Relu -> Minimum(6) -> Maximum(0)) one Clip: onnxruntime then fuses it into the convolution before it and keeps
the blocked NCHWc layout between layers (faceres-deep: 160 instead of 120 images/s on 2 cores, identical outputs).
"""
from __future__ import annotations

import base64
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

OPSET, IR_VERSION = 13, 8  # IR 8 with opset 13: loadable by every onnxruntime since 1.14
CONVERTER_VERSION = 2  # part of cached conversions' names: 2 = clamp chains merged into one Clip
NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}
UNARY = {"Sigmoid": "Sigmoid", "Tanh": "Tanh", "Abs": "Abs", "Identity": "Identity"}
BINARY = {"Add": "Add", "AddV2": "Add", "Sub": "Sub", "Mul": "Mul", "RealDiv": "Div", "Minimum": "Min",
          "Maximum": "Max"}
REDUCE = {"Mean": "ReduceMean", "Max": "ReduceMax", "Sum": "ReduceSum"}
OPS = sorted({"Placeholder", "Const", "Conv2D", "_FusedConv2D", "DepthwiseConv2dNative",
              "FusedDepthwiseConv2dNative", "MatMul", "_FusedMatMul", "BiasAdd", "Square", "Rsqrt", "Relu", "Relu6",
              "Softmax", "MaxPool", "AvgPool", "Pad", "Reshape", "Squeeze", "ExpandDims", "StridedSlice",
              *UNARY, *BINARY, *REDUCE})


class TfjsError(ValueError):
    """A file that is not a TF.js graph model, or a graph this converter cannot convert."""


def node_attr(node: dict, key: str, default=None):
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        return []
    if "b" in a:
        return bool(a["b"])
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    return a


def read_weights(model_json: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The model.json dict and its weights (float32 and int32; float16 / uint8 / uint16 quantised ones
    dequantised to float32)."""
    path = Path(model_json)
    try:
        model = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TfjsError(f"{path}: not a TF.js model.json ({exc})") from exc
    if model.get("format") != "graph-model" or "modelTopology" not in model:
        raise TfjsError(f"{path}: not a TF.js graph model (format {model.get('format')!r})")
    weights: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        shards = [path.parent / p for p in group["paths"]]
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise TfjsError(f"{path}: weight file(s) missing: {missing}")
        buf = b"".join(s.read_bytes() for s in shards)
        offset = 0
        for w in group["weights"]:
            n = int(np.prod(w["shape"], dtype=np.int64))
            q = w.get("quantization")
            stored = q["dtype"] if q else w["dtype"]
            np_dtype = {"float32": "<f4", "int32": "<i4", "float16": "<f2", "uint8": "u1", "uint16": "<u2",
                        "bool": "u1"}.get(stored)
            if np_dtype is None:
                raise TfjsError(f"{path}: weight {w['name']!r} has dtype {stored!r}")
            size = n * np.dtype(np_dtype).itemsize
            if offset + size > len(buf):
                raise TfjsError(f"{path}: weight {w['name']!r} runs past the end of the weight files")
            arr = np.frombuffer(buf, np_dtype, n, offset)
            offset += size
            if q and stored in ("uint8", "uint16"):
                arr = q["min"] + q["scale"] * arr.astype(np.float32)
            weights[w["name"]] = arr.astype(np.int32 if w["dtype"] == "int32" else np.float32).reshape(w["shape"])
    return model, weights


def _scalar(value: np.ndarray | None) -> float | None:
    """A one-element floating constant's value (None for anything else)."""
    if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.floating):
        return None
    return float(value.reshape(()))


class _Converter:
    def __init__(self, path: Path, weights: dict[str, np.ndarray]):
        from onnx import helper, numpy_helper

        self.h, self.nh, self.path = helper, numpy_helper, path
        self.consts = dict(weights)
        self.nodes: list = []
        self.inits: list = []
        self.rank4: set[str] = set()  # tensors held as 4-D NCHW
        self.clamps: dict[str, tuple[str, float, float]] = {}  # clamp node's output -> (input, low, high)
        self.n = 0

    def fresh(self, base: str) -> str:
        self.n += 1
        return f"{base}__{self.n}"

    def init(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(self.nh.from_array(np.ascontiguousarray(value), name))
        return name

    def add(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(self.h.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def operand(self, name: str, like: str | None) -> str:
        """An input as an ONNX tensor name: a constant becomes an initializer, NCHW-broadcastable when the other
        operand is a 4-D NCHW tensor."""
        if name not in self.consts:
            if like in self.rank4 and name not in self.rank4:
                raise self.fail("a 4-D and a non-4-D tensor combined", name)
            return name
        value = self.consts[name]
        if like in self.rank4 and value.ndim >= 1:
            value = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(0, 3, 1, 2)
        return self.init(name, value.astype(np.float32) if value.dtype != np.int32 else value)

    def to_nhwc(self, name: str) -> str:
        """A 4-D NCHW tensor transposed back to TF's NHWC (before reshaping or slicing it)."""
        if name not in self.rank4:
            return name
        return self.add("Transpose", [name], self.fresh(name + "_nhwc"), perm=[0, 2, 3, 1])

    def fail(self, what: str, node: str) -> TfjsError:
        return TfjsError(f"{self.path}: node {node!r}: {what}")

    def conv(self, node: dict, depthwise: bool) -> None:
        name, (x, w) = node["name"], node["input"][:2]
        kernel = self.consts[w]
        kh, kw = kernel.shape[:2]
        if depthwise:
            c, m = kernel.shape[2:]
            weight, group = kernel.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw), c
        else:
            weight, group = kernel.transpose(3, 2, 0, 1), 1
        strides, dil = node_attr(node, "strides", [1, 1, 1, 1]), node_attr(node, "dilations", [1, 1, 1, 1])
        attrs = {"strides": strides[1:3], "dilations": dil[1:3], "group": group, "kernel_shape": [kh, kw]}
        padding = node_attr(node, "padding", "VALID")
        if padding == "SAME":
            attrs["auto_pad"] = "SAME_UPPER"
        elif padding == "EXPLICIT":
            p = node_attr(node, "explicit_paddings", [0] * 8)
            attrs["pads"] = [p[2], p[4], p[3], p[5]]
        inputs = [x, self.init(w, weight)]
        fused = node_attr(node, "fused_ops", [])
        if fused and fused[0] == "BiasAdd":
            inputs.append(self.init(node["input"][2], self.consts[node["input"][2]]))
            fused = fused[1:]
        elif fused:
            raise self.fail(f"fused ops {fused} are not supported", name)
        out = self.add("Conv", inputs, name if not fused else self.fresh(name), **attrs)
        self.rank4.add(out)
        self.activation(fused, out, name)

    def activation(self, fused: list[str], x: str, name: str) -> None:
        if not fused:
            return
        if fused == ["Relu"]:
            self.clamp(x, name, 0.0, np.inf)
        elif fused == ["Relu6"]:
            self.clamp(x, name, 0.0, 6.0)
        else:
            raise self.fail(f"fused activation {fused} is not supported", name)

    def clamp(self, x: str, name: str, low: float, high: float) -> None:
        """x clamped to [low, high] (Relu when that is [0, inf)); recorded for merge_clamps."""
        self.clamps[name] = (x, low, high)
        self.emit_clamp(x, name, low, high)
        if x in self.rank4:
            self.rank4.add(name)

    def emit_clamp(self, x: str, name: str, low: float, high: float) -> None:
        if (low, high) == (0.0, np.inf):
            self.add("Relu", [x], name)
            return
        bound = lambda v, tag: "" if np.isinf(v) else self.init(tag, np.float32(v))
        self.add("Clip", [x, bound(low, "low"), bound(high, "high")], name)

    def merge_clamps(self, keep: set[str]) -> None:
        """A clamp whose input is another clamp's output, used nowhere else and not a graph output, clamps that
        clamp's input to the intersection of both ranges instead (exact when the ranges overlap)."""
        uses = Counter(i for n in self.nodes for i in n.input)
        merged: dict[str, tuple[str, float, float]] = {}
        gone: set[str] = set()
        for out, (x, low, high) in self.clamps.items():
            if x in merged and uses[x] == 1 and x not in keep:
                x0, low0, high0 = merged[x]
                if max(low, low0) <= min(high, high0):
                    gone.add(x)
                    x, low, high = x0, max(low, low0), min(high, high0)
            merged[out] = (x, low, high)
        changed = {out for out, m in merged.items() if m != self.clamps[out]}
        nodes, self.nodes = self.nodes, []
        for n in nodes:
            out = n.output[0]
            if out in changed:
                x, low, high = merged[out]
                self.emit_clamp(x, out, low, high)
            elif out not in gone:
                self.nodes.append(n)
        used = {i for n in self.nodes for i in n.input}
        self.inits = [i for i in self.inits if i.name in used]

    def matmul(self, node: dict) -> None:
        name, (a, b) = node["name"], node["input"][:2]
        attrs = {"transA": int(node_attr(node, "transpose_a", False)),
                 "transB": int(node_attr(node, "transpose_b", False))}
        inputs = [self.to_nhwc(a), self.operand(b, None)]
        fused = node_attr(node, "fused_ops", [])
        if fused and fused[0] == "BiasAdd":
            inputs.append(self.operand(node["input"][2], None))
            fused = fused[1:]
        out = self.add("Gemm", inputs, name if not fused else self.fresh(name), **attrs)
        self.activation(fused, out, name)

    def reduce(self, node: dict) -> None:
        name, (x, axes_name) = node["name"], node["input"]
        axes = [int(a) % 4 if x in self.rank4 else int(a) for a in np.atleast_1d(self.consts[axes_name])]
        keep = node_attr(node, "keep_dims", False)
        if x in self.rank4:
            if not keep and sorted(axes) != [1, 2]:
                raise self.fail(f"reducing axes {axes} of a 4-D tensor without keep_dims is not supported", name)
            axes = [NHWC_TO_NCHW_AXIS[a] for a in axes]
        if node["op"] == "Sum":  # from opset 13 ReduceSum takes its axes as an input, the others as an attribute
            self.add("ReduceSum", [x, self.init("axes", np.array(axes, np.int64))], name, keepdims=int(keep))
        else:
            self.add(REDUCE[node["op"]], [x], name, axes=axes, keepdims=int(keep))
        if x in self.rank4 and keep:
            self.rank4.add(name)

    def pool(self, node: dict) -> None:
        name = node["name"]
        k, s = node_attr(node, "ksize"), node_attr(node, "strides")
        attrs = {"kernel_shape": k[1:3], "strides": s[1:3]}
        if node_attr(node, "padding", "VALID") == "SAME":
            attrs["auto_pad"] = "SAME_UPPER"
        self.add("MaxPool" if node["op"] == "MaxPool" else "AveragePool", [node["input"][0]], name, **attrs)
        self.rank4.add(name)

    def pad(self, node: dict) -> None:
        name, (x, p) = node["name"], node["input"][:2]
        pads = self.consts[p].astype(np.int64)
        if x in self.rank4:
            pads = pads[[0, 3, 1, 2]]
            self.rank4.add(name)
        self.add("Pad", [x, self.init(p, np.concatenate([pads[:, 0], pads[:, 1]]))], name)

    def reshape_like(self, node: dict) -> None:
        """Reshape, Squeeze, ExpandDims, StridedSlice: on NHWC data, as TF defines them."""
        name, op = node["name"], node["op"]
        x = self.to_nhwc(node["input"][0])
        if op == "Reshape":
            self.add("Reshape", [x, self.init("shape", self.consts[node["input"][1]].astype(np.int64))], name)
        elif op == "Squeeze":
            axes = node_attr(node, "squeeze_dims", [])
            self.add("Squeeze", [x] + ([self.init("axes", np.array(axes, np.int64))] if axes else []), name)
        elif op == "ExpandDims":
            axis = np.atleast_1d(self.consts[node["input"][1]]).astype(np.int64)
            self.add("Unsqueeze", [x, self.init("axes", axis)], name)
        else:
            begin, end, strides = (self.consts[i].astype(np.int64) for i in node["input"][1:4])
            if any(node_attr(node, m, 0) for m in ("ellipsis_mask", "new_axis_mask", "shrink_axis_mask")):
                raise self.fail("StridedSlice with ellipsis, new-axis or shrink masks is not supported", name)
            bm, em = node_attr(node, "begin_mask", 0), node_attr(node, "end_mask", 0)
            big = np.iinfo(np.int64).max
            begin = np.array([0 if bm >> i & 1 else b for i, b in enumerate(begin)], np.int64)
            end = np.array([big if em >> i & 1 else e for i, e in enumerate(end)], np.int64)
            axes = np.arange(len(begin), dtype=np.int64)
            self.add("Slice", [x, self.init("begin", begin), self.init("end", end), self.init("axes", axes),
                               self.init("steps", strides)], name)

    def node(self, node: dict) -> None:
        op, name = node["op"], node["name"]
        inputs = [i.split(":")[0] for i in node.get("input", []) if not i.startswith("^")]
        node = {**node, "input": inputs}
        if op == "Const":
            return
        if op not in OPS:
            raise self.fail(f"op {op!r} is not supported (supported: {', '.join(OPS)})", name)
        if op in ("Conv2D", "_FusedConv2D"):
            self.conv(node, depthwise=False)
        elif op in ("DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            self.conv(node, depthwise=True)
        elif op in ("MatMul", "_FusedMatMul"):
            self.matmul(node)
        elif op in REDUCE:
            self.reduce(node)
        elif op in ("MaxPool", "AvgPool"):
            self.pool(node)
        elif op == "Pad":
            self.pad(node)
        elif op in ("Reshape", "Squeeze", "ExpandDims", "StridedSlice"):
            self.reshape_like(node)
        elif op in UNARY or op in ("Square", "Rsqrt", "Relu", "Relu6", "Softmax"):
            x = inputs[0]
            if op == "Square":
                self.add("Mul", [x, x], name)
            elif op == "Rsqrt":
                self.add("Reciprocal", [self.add("Sqrt", [x], self.fresh(name))], name)
            elif op in ("Relu", "Relu6"):
                self.activation([op], x, name)
            elif op == "Softmax":
                self.add("Softmax", [x], name, axis=1 if x in self.rank4 else -1)
            else:
                self.add(UNARY[op], [x], name)
            if x in self.rank4:
                self.rank4.add(name)
        elif op in ("Minimum", "Maximum") and _scalar(self.consts.get(inputs[1])) is not None:
            c = _scalar(self.consts[inputs[1]])
            self.clamp(inputs[0], name, *((-np.inf, c) if op == "Minimum" else (c, np.inf)))
        elif op in BINARY or op == "BiasAdd":
            a, b = inputs
            like = a if a not in self.consts else b
            self.add(BINARY.get(op, "Add"), [self.operand(a, like), self.operand(b, like)], name)
            if like in self.rank4:
                self.rank4.add(name)


def tfjs_to_onnx(model_json: str | os.PathLike, outputs: list[str]) -> bytes:
    """The serialised ONNX model of a TF.js graph model, with input 'images' [N, C, H, W] float32 and the given
    node names as outputs."""
    import onnx
    from onnx import TensorProto, helper

    path = Path(model_json)
    model, weights = read_weights(path)
    conv = _Converter(path, weights)
    graph_inputs = []
    nodes = model["modelTopology"]["node"]
    for node in nodes:
        if node["op"] == "Placeholder":
            dims = [int(d["size"]) for d in node["attr"]["shape"]["shape"]["dim"]]
            if len(dims) != 4:
                raise conv.fail(f"a {len(dims)}-D input is not supported (images are NHWC)", node["name"])
            n, h, w, c = ("N" if d < 0 else d for d in dims)
            graph_inputs.append(helper.make_tensor_value_info("images", TensorProto.FLOAT, [n, c, h, w]))
            conv.add("Identity", ["images"], node["name"])
            conv.rank4.add(node["name"])
        else:
            conv.node(node)
    conv.merge_clamps(set(outputs))
    produced = {o for n in conv.nodes for o in n.output}
    unknown = [o for o in outputs if o not in produced]
    if unknown:
        raise TfjsError(f"{path}: no node {unknown} in the graph")
    rank = {o: 4 if o in conv.rank4 else 2 for o in outputs}
    graph = helper.make_graph(conv.nodes, path.stem, graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * rank[o]) for o in outputs],
                              conv.inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="genderfusion.tfjs", ir_version=IR_VERSION)
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()
