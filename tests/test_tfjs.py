"""The TF.js graph-model -> ONNX converter against an independent numpy (NHWC, TensorFlow semantics) reference."""
import base64
import json

import numpy as np
import pytest

from genderfusion.extract.faces import faceres
from genderfusion.extract.faces.tfjs import TfjsError, tfjs_to_onnx

ort = pytest.importorskip("onnxruntime")


# ---- a numpy reference of the TF ops, NHWC ----------------------------------------------------------------------

def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _conv(x, w, stride, padding, depthwise=False):
    """x [N, H, W, C]; w [kh, kw, C, O] (depthwise: [kh, kw, C, M])."""
    kh, kw = w.shape[:2]
    if padding == "SAME":
        (t, b), (l, r) = _same_pads(x.shape[1], kh, stride), _same_pads(x.shape[2], kw, stride)
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = 0
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
            if depthwise:
                out = out + (patch[..., :, None] * w[i, j]).reshape(*patch.shape[:3], -1)
            else:
                out = out + patch @ w[i, j]
    return out


def run_numpy(model_json, weights, x_nhwc, output):
    """Evaluate a TF.js graph's nodes in order with numpy, as TensorFlow defines them."""
    model = json.loads(open(model_json).read())
    env = dict(weights)

    def attr(node, key, default=None):
        a = node.get("attr", {}).get(key, {})
        if "s" in a:
            return base64.b64decode(a["s"]).decode()
        if "list" in a:
            return [int(v) for v in a["list"].get("i", [])] or [base64.b64decode(v).decode()
                                                                for v in a["list"].get("s", [])]
        return a.get("b", default)

    for n in model["modelTopology"]["node"]:
        op, ins = n["op"], [env.get(i.split(":")[0]) for i in n.get("input", [])]
        if op == "Const":
            continue
        if op == "Placeholder":
            y = x_nhwc
        elif op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            y = _conv(ins[0], ins[1], attr(n, "strides")[1], attr(n, "padding"), "Depthwise" in op)
            fused = attr(n, "fused_ops", []) or []
            if fused[:1] == ["BiasAdd"]:
                y = y + ins[2]
            if "Relu" in fused:
                y = np.maximum(y, 0)
        elif op in ("Add", "AddV2", "BiasAdd"):
            y = ins[0] + ins[1]
        elif op == "Mul":
            y = ins[0] * ins[1]
        elif op == "Relu":
            y = np.maximum(ins[0], 0)
        elif op == "Minimum":
            y = np.minimum(ins[0], ins[1])
        elif op == "Maximum":
            y = np.maximum(ins[0], ins[1])
        elif op == "Pad":
            y = np.pad(ins[0], ins[1])
        elif op in ("Mean", "Sum"):
            reduce = np.mean if op == "Mean" else np.sum
            y = reduce(ins[0], axis=tuple(np.atleast_1d(ins[1])), keepdims=bool(attr(n, "keep_dims", False)))
        elif op == "Square":
            y = ins[0] ** 2
        elif op == "Rsqrt":
            y = 1 / np.sqrt(ins[0])
        elif op == "_FusedMatMul":
            y = ins[0] @ ins[1] + ins[2]
            if "Relu" in attr(n, "fused_ops"):
                y = np.maximum(y, 0)
        elif op == "Sigmoid":
            y = 1 / (1 + np.exp(-ins[0]))
        elif op == "Softmax":
            e = np.exp(ins[0] - ins[0].max(-1, keepdims=True))
            y = e / e.sum(-1, keepdims=True)
        else:
            raise NotImplementedError(op)
        env[n["name"]] = y
    return env[output]


# ---- a tiny graph written here -----------------------------------------------------------------------------------

def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _tiny_graph(tmp_path, op_override: str | None = None):
    rng = np.random.default_rng(0)
    weights = {"pads": np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32),
               "k1": rng.normal(size=(3, 3, 3, 4)).astype(np.float32), "b1": rng.normal(size=4).astype(np.float32),
               "dw": rng.normal(size=(3, 3, 4, 2)).astype(np.float32),
               "scale": rng.normal(size=8).astype(np.float16).astype(np.float32),  # stored as float16
               "six": np.array(6, np.float32), "zero": np.array(0, np.float32),
               "k2": rng.normal(size=(1, 1, 8, 6)).astype(np.float32), "b2": rng.normal(size=6).astype(np.float32),
               "axes": np.array([1, 2], np.int32),
               "fc": rng.normal(size=(6, 5)).astype(np.float32), "fcb": rng.normal(size=5).astype(np.float32),
               "last": np.array([1], np.int32), "eps": np.array(1e-10, np.float32)}
    conv = lambda s, p: {"strides": {"list": {"i": ["1", str(s), str(s), "1"]}}, "padding": {"s": _b64(p)}}
    nodes = [{"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": "-1"}, {"size": "9"},
                                                                                    {"size": "9"}, {"size": "3"}]}}}},
             {"name": "padded", "op": "Pad", "input": ["x", "pads"]},
             {"name": "c1", "op": "_FusedConv2D", "input": ["padded", "k1", "b1"],
              "attr": {**conv(1, "VALID"), "fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu")]}}}},
             {"name": "d1", "op": op_override or "DepthwiseConv2dNative", "input": ["c1", "dw"], "attr": conv(2, "SAME")},
             {"name": "m1", "op": "Mul", "input": ["d1", "scale"]},
             {"name": "r6a", "op": "Minimum", "input": ["m1", "six"]},
             {"name": "r6", "op": "Maximum", "input": ["r6a", "zero"]},
             {"name": "c2", "op": "Conv2D", "input": ["r6", "k2"], "attr": conv(1, "SAME")},
             {"name": "c2b", "op": "Add", "input": ["c2", "b2"]},
             {"name": "pool", "op": "Mean", "input": ["c2b", "axes"], "attr": {"keep_dims": {"b": False}}},
             {"name": "out", "op": "_FusedMatMul", "input": ["pool", "fc", "fcb"],
              "attr": {"fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu")]}}}},
             {"name": "prob", "op": "Softmax", "input": ["out"]},
             # MobileFaceNet's L2 normalisation of its embedding
             {"name": "sq", "op": "Square", "input": ["out"]},
             {"name": "ss", "op": "Sum", "input": ["sq", "last"], "attr": {"keep_dims": {"b": True}}},
             {"name": "ssm", "op": "Maximum", "input": ["ss", "eps"]},
             {"name": "rs", "op": "Rsqrt", "input": ["ssm"]},
             {"name": "emb", "op": "Mul", "input": ["out", "rs"]}]
    nodes += [{"name": k, "op": "Const"} for k in weights]
    manifest, blobs = [], []
    for k, v in weights.items():
        entry = {"name": k, "shape": list(v.shape), "dtype": "int32" if v.dtype == np.int32 else "float32"}
        if k == "scale":
            entry["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            blobs.append(v.astype("<f2").tobytes())
        else:
            blobs.append(v.astype("<i4" if v.dtype == np.int32 else "<f4").tobytes())
        manifest.append(entry)
    (tmp_path / "tiny.bin").write_bytes(b"".join(blobs))
    (tmp_path / "tiny.json").write_text(json.dumps({
        "format": "graph-model", "modelTopology": {"node": nodes},
        "weightsManifest": [{"paths": ["tiny.bin"], "weights": manifest}]}))
    return tmp_path / "tiny.json", weights


def _onnx_run(model_bytes: bytes, x_nhwc: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(outputs, {"images": np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))})


def test_a_tiny_graph_converts_and_matches_numpy(tmp_path):
    path, weights = _tiny_graph(tmp_path)
    x = np.random.default_rng(1).normal(size=(3, 9, 9, 3)).astype(np.float32)
    names = ["out", "prob", "pool", "emb"]
    got = _onnx_run(tfjs_to_onnx(path, names), x, names)
    for name, g in zip(names, got):
        ref = run_numpy(path, weights, x.astype(np.float64), name)
        assert g.shape == ref.shape and np.abs(g - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max()), name
    assert np.ptp(got[0]) > 0.1  # not a constant on both sides


def test_relu6_chains_become_one_clip_unless_an_intermediate_is_an_output(tmp_path):
    import onnx

    path, weights = _tiny_graph(tmp_path)
    x = np.random.default_rng(3).normal(size=(2, 9, 9, 3)).astype(np.float32) * 4
    for outputs, ops in ((["out"], ["Clip"]), (["out", "r6a"], ["Clip", "Relu"])):
        model = tfjs_to_onnx(path, outputs)
        graph = onnx.load_from_string(model).graph
        clamps = [n.op_type for n in graph.node if n.output[0] in ("r6a", "r6")]
        assert clamps == ops and not [n for n in graph.node if n.op_type in ("Min", "Max")], clamps
        assert {i for n in graph.node for i in n.input} >= {i.name for i in graph.initializer}  # none left unused
        for name, g in zip(outputs, _onnx_run(model, x, outputs)):
            ref = run_numpy(path, weights, x.astype(np.float64), name)
            g = g.transpose(0, 2, 3, 1) if g.ndim == 4 else g  # 4-D outputs stay NCHW
            assert np.abs(g - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max()), name
            assert (ref < 0).any() or name != "r6a"  # the clamp's lower bound is exercised


def test_an_unknown_op_names_the_op_and_node(tmp_path):
    path, _ = _tiny_graph(tmp_path, op_override="Conv3D")
    with pytest.raises(TfjsError, match=r"node 'd1': op 'Conv3D' is not supported"):
        tfjs_to_onnx(path, ["out"])
    with pytest.raises(TfjsError, match="not a TF.js"):
        tfjs_to_onnx(tmp_path / "tiny.bin", ["out"])


@pytest.mark.skipif(not (faceres.model_dir() / "faceres-deep.json").is_file(),
                    reason="FaceRes files absent (fetch-faceres, or GENDERFUSION_FACERES_DIR)")
def test_faceres_deep_converted_matches_numpy_on_real_files():
    from genderfusion.extract.faces.tfjs import read_weights

    path = faceres.model_dir() / "faceres-deep.json"
    _, weights = read_weights(path)
    x = np.random.default_rng(2).normal(0, 60, (2, 224, 224, 3)).astype(np.float32)
    nodes = ["feats/Relu", "gender_pred/Sigmoid"]
    got = _onnx_run(tfjs_to_onnx(path, nodes), x, nodes)
    for name, g in zip(nodes, got):
        ref = run_numpy(path, weights, x.astype(np.float64), name)
        assert np.abs(g - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), (name, np.abs(g - ref).max())
