"""The TF.js graph converter: each op against hand-computed/numpy references, a crafted graph model end to end,
and the real human-models graphs against output slices recorded from the TF.js runtime itself."""

from __future__ import annotations

import base64
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from facecloak.errors import ConfigError, CorruptWeightsError, ImageError
from facecloak.models.tfjs.graph import (
    GraphNode,
    TFJSGraphModule,
    UnsupportedOpError,
    load_graph_model,
    read_graph,
    run_op,
    signature,
)
from facecloak.models.tfjs.weights import load_manifest_weights

# --------------------------------------------------------------------------------------------------------------------
# helpers: nodes with attrs written the way TF.js model.json writes them
# --------------------------------------------------------------------------------------------------------------------


def _attr(value):
    if isinstance(value, bool):
        return {"b": value}
    if isinstance(value, int):
        return {"i": str(value)}
    if isinstance(value, float):
        return {"f": value}
    if isinstance(value, str):
        return {"s": base64.b64encode(value.encode()).decode()}
    if all(isinstance(v, str) for v in value):
        return {"list": {"s": [_attr(v)["s"] for v in value]}}
    return {"list": {"i": [str(v) for v in value]}}


def _raw_node(name, op, inputs=(), **attrs):
    return {"name": name, "op": op, "input": list(inputs), "attr": {k: _attr(v) for k, v in attrs.items()}}


def _node(op, **attrs):
    raw = _raw_node("n", op, **attrs)
    return GraphNode(name="n", op=op, inputs=(), attr=raw["attr"])


def _run(op, *inputs, **attrs):
    return run_op(_node(op, **attrs), [torch.as_tensor(np.asarray(x)) for x in inputs]).numpy()


def _np_conv(x, w, stride, pads, depthwise=False):
    """Direct NHWC convolution/correlation after explicit (top, bottom, left, right) zero padding."""
    top, bottom, left, right = pads
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    kh, kw, cin, cout = w.shape
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, cin * cout if depthwise else cout), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            if depthwise:  # output channel c * multiplier + m
                out[:, i, j] = np.einsum("nhwc,hwcm->ncm", patch, w).reshape(x.shape[0], -1)
            else:
                out[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
    return out


RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# convolutions and TF padding
# --------------------------------------------------------------------------------------------------------------------


def test_same_padding_puts_the_extra_pixel_bottom_right():
    # 4x4 input, 3x3 ones kernel, stride 2, SAME: output 2x2, total pad 1 -> 0 before, 1 after (TF).
    # Windows start at rows/cols 0 and 2: out[0,0] = sum x[0:3,0:3], out[1,1] = sum x[2:4,2:4] (+ padding).
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    w = np.ones((3, 3, 1, 1), np.float32)
    y = _run("Conv2D", x, w, strides=[1, 2, 2, 1], padding="SAME", dilations=[1, 1, 1, 1], data_format="NHWC")
    assert y.shape == (1, 2, 2, 1)
    assert y[0, 0, 0, 0] == x[0, 0:3, 0:3].sum()
    assert y[0, 0, 1, 0] == x[0, 0:3, 2:4].sum()
    assert y[0, 1, 0, 0] == x[0, 2:4, 0:3].sum()
    assert y[0, 1, 1, 0] == x[0, 2:4, 2:4].sum()
    # PyTorch's symmetric padding=1 would instead centre the first window on (0, 0):
    assert y[0, 0, 0, 0] != x[0, 0:2, 0:2].sum()


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [
        (5, 3, 1, (1, 1, 1, 1)),
        (6, 3, 2, (0, 1, 0, 1)),
        (7, 3, 2, (1, 1, 1, 1)),
        (6, 2, 1, (0, 1, 0, 1)),
        (5, 1, 2, (0, 0, 0, 0)),
        (8, 5, 3, (1, 2, 1, 2)),  # out 3: total (3-1)*3+5-8 = 3 -> 1 before, 2 after
    ],
)
def test_conv2d_same_matches_tf_rule(size, kernel, stride, pads):
    x, w = _rand(2, size, size, 3), _rand(kernel, kernel, 3, 4)
    y = _run("Conv2D", x, w, strides=[1, stride, stride, 1], padding="SAME")
    assert y.shape[1] == math.ceil(size / stride)
    np.testing.assert_allclose(y, _np_conv(x, w, stride, pads), rtol=1e-4, atol=1e-4)


def test_conv2d_valid_explicit_and_nchw():
    x, w = _rand(1, 7, 6, 2), _rand(3, 3, 2, 5)
    valid = _run("Conv2D", x, w, strides=[1, 2, 2, 1], padding="VALID")
    np.testing.assert_allclose(valid, _np_conv(x, w, 2, (0, 0, 0, 0)), rtol=1e-4, atol=1e-4)
    # EXPLICIT: (before, after) per NHWC dim
    explicit = _run(
        "Conv2D", x, w, strides=[1, 1, 1, 1], padding="EXPLICIT", explicit_paddings=[0, 0, 2, 0, 0, 1, 0, 0]
    )
    np.testing.assert_allclose(explicit, _np_conv(x, w, 1, (2, 0, 0, 1)), rtol=1e-4, atol=1e-4)
    nchw = _run(
        "Conv2D", x.transpose(0, 3, 1, 2), w, strides=[1, 1, 2, 2], padding="VALID", data_format="NCHW"
    ).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(nchw, valid, rtol=1e-5, atol=1e-5)


def test_dilated_conv_same():
    x, w = _rand(1, 9, 9, 2), _rand(3, 3, 2, 3)
    y = _run("Conv2D", x, w, strides=[1, 1, 1, 1], dilations=[1, 2, 2, 1], padding="SAME")
    dilated = np.zeros((5, 5, 2, 3), np.float32)
    dilated[::2, ::2] = w  # a 3x3 kernel with dilation 2 is a 5x5 kernel with holes
    np.testing.assert_allclose(y, _np_conv(x, dilated, 1, (2, 2, 2, 2)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("multiplier", "stride"), [(1, 1), (2, 2), (3, 1)])
def test_depthwise_conv_channel_order(multiplier, stride):
    x, w = _rand(2, 6, 6, 3), _rand(3, 3, 3, multiplier)
    y = _run("DepthwiseConv2dNative", x, w, strides=[1, stride, stride, 1], padding="SAME")
    pads = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)
    np.testing.assert_allclose(y, _np_conv(x, w, stride, pads, depthwise=True), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------------------------
# fused ops
# --------------------------------------------------------------------------------------------------------------------


def test_fused_conv_bias_relu_and_prelu():
    x, w, bias = _rand(1, 5, 5, 2), _rand(3, 3, 2, 4), _rand(4)
    alpha = np.array([0.1, -0.3, 0.5, 2.0], np.float32)  # trained PReLU slopes may be negative or > 1
    conv = _np_conv(x, w, 1, (1, 1, 1, 1)) + bias
    attrs = {"strides": [1, 1, 1, 1], "padding": "SAME", "num_args": 1}
    relu = _run("_FusedConv2D", x, w, bias, fused_ops=["BiasAdd", "Relu"], **attrs)
    np.testing.assert_allclose(relu, np.maximum(conv, 0), rtol=1e-4, atol=1e-4)
    relu6 = _run("_FusedConv2D", x, w, bias, fused_ops=["BiasAdd", "Relu6"], **attrs)
    np.testing.assert_allclose(relu6, np.clip(conv, 0, 6), rtol=1e-4, atol=1e-4)
    prelu = _run("_FusedConv2D", x, w, bias, alpha.reshape(1, 1, 4), fused_ops=["BiasAdd", "Prelu"], **attrs)
    np.testing.assert_allclose(prelu, np.where(conv > 0, conv, alpha * conv), rtol=1e-4, atol=1e-4)
    plain = _run("_FusedConv2D", x, w, bias, fused_ops=["BiasAdd"], **attrs)
    np.testing.assert_allclose(plain, conv, rtol=1e-4, atol=1e-4)


def test_fused_batch_norm_uses_epsilon():
    x, w = _rand(1, 4, 4, 2), _rand(1, 1, 2, 3)
    scale, offset, mean = _rand(3), _rand(3), _rand(3)
    var = np.array([0.5, 1.0, 2.0], np.float32)
    y = _run(
        "_FusedConv2D",
        x,
        w,
        scale,
        offset,
        mean,
        var,
        fused_ops=["FusedBatchNorm", "Relu"],
        epsilon=0.25,
        strides=[1, 1, 1, 1],
        padding="VALID",
    )
    conv = _np_conv(x, w, 1, (0, 0, 0, 0))
    expected = np.maximum((conv - mean) / np.sqrt(var + 0.25) * scale + offset, 0)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_fused_matmul_transposes_and_leaky_relu():
    a, b, bias = _rand(3, 4), _rand(5, 4), _rand(5)
    y = _run("_FusedMatMul", a, b, bias, fused_ops=["BiasAdd", "LeakyRelu"], transpose_b=True, leakyrelu_alpha=0.1)
    z = a @ b.T + bias
    np.testing.assert_allclose(y, np.where(z > 0, z, 0.1 * z), rtol=1e-5, atol=1e-5)
    both = _run("MatMul", np.ascontiguousarray(a.T), b, transpose_a=True, transpose_b=True)
    np.testing.assert_allclose(both, a @ b.T, rtol=1e-5, atol=1e-5)


def test_unknown_fused_op_names_node_and_op():
    with pytest.raises(UnsupportedOpError, match=r"'n'.*'Gelu'"):
        _run("_FusedMatMul", _rand(2, 2), _rand(2, 2), _rand(2), fused_ops=["BiasAdd", "Gelu"])


# --------------------------------------------------------------------------------------------------------------------
# pooling, reductions, shape ops, element-wise ops
# --------------------------------------------------------------------------------------------------------------------


def test_max_pool_same_ignores_padding():
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)  # all negative: zero padding would win
    y = _run("MaxPool", x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -3], [-7, -9]])
    y3 = _run("MaxPool", x, ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1], padding="SAME")  # emotion's pooling
    np.testing.assert_array_equal(y3[0, :, :, 0], [[-1, -2], [-4, -5]])


def test_avg_pool_same_averages_real_cells_only():
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    y = _run("AvgPool", x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")
    np.testing.assert_allclose(y[0, :, :, 0], [[(1 + 2 + 4 + 5) / 4, (3 + 6) / 2], [(7 + 8) / 2, 9]])


def test_reductions_and_shape_ops():
    x = _rand(2, 3, 4, 5)
    np.testing.assert_allclose(_run("Mean", x, np.array([1, 2], np.int32)), x.mean(axis=(1, 2)), rtol=1e-5)
    kept = _run("Mean", x, np.array([1, 2], np.int32), keep_dims=True)
    assert kept.shape == (2, 1, 1, 5)
    np.testing.assert_array_equal(_run("Reshape", x, np.array([-1, 60], np.int32)), x.reshape(-1, 60))
    paddings = np.array([[0, 0], [1, 2], [0, 0], [0, 3]], np.int32)  # incl. facemesh's channel padding
    np.testing.assert_array_equal(_run("Pad", x, paddings), np.pad(x, paddings))
    np.testing.assert_array_equal(_run("ConcatV2", x, x, np.array(3, np.int32)), np.concatenate([x, x], 3))
    z = _rand(4, 7)
    np.testing.assert_allclose(_run("Softmax", z), np.exp(z) / np.exp(z).sum(-1, keepdims=True), rtol=1e-5)


def test_element_wise_ops_broadcast_like_tf():
    x, c = _rand(2, 3, 3, 4), _rand(4)
    np.testing.assert_allclose(_run("Sub", x, c), x - c)
    np.testing.assert_allclose(_run("Mul", c, x), x * c)
    np.testing.assert_allclose(_run("AddV2", x, c), x + c)
    np.testing.assert_allclose(_run("BiasAdd", x, c), x + c)
    clipped = _run("Maximum", _run("Minimum", x, np.float32(0.5)), np.float32(-0.5))  # faceres' ReLU6-style clip
    np.testing.assert_allclose(clipped, np.clip(x, -0.5, 0.5))
    alpha = _rand(1, 1, 4)
    np.testing.assert_allclose(_run("Prelu", x, alpha), np.where(x > 0, x, alpha * x), rtol=1e-6)
    np.testing.assert_allclose(_run("Sigmoid", x), 1 / (1 + np.exp(-x)), rtol=1e-5)


def test_unsupported_op_is_named():
    with pytest.raises(UnsupportedOpError, match=r"'n'.*'Erf'"):
        _run("Erf", _rand(2))


# --------------------------------------------------------------------------------------------------------------------
# a crafted graph model, end to end (json + bin, shuffled nodes)
# --------------------------------------------------------------------------------------------------------------------


def _write_model(folder: Path, extra_nodes=(), with_signature=True) -> Path:
    rng = np.random.default_rng(1)
    consts = {
        "conv/w": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
        "conv/b": rng.standard_normal(4).astype(np.float32),
        "gap/axes": np.array([1, 2], np.int32),
        "fc/w": rng.standard_normal((4, 3)).astype(np.float32),
    }
    dims = ("-1", "5", "5", "2")
    nodes = [
        {"name": "image", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": s} for s in dims]}}}},
        _raw_node(
            "conv/Relu",
            "_FusedConv2D",
            ["image", "conv/w", "conv/b"],
            strides=[1, 2, 2, 1],
            padding="SAME",
            fused_ops=["BiasAdd", "Relu"],
            num_args=1,
            data_format="NHWC",
        ),
        _raw_node("gap/Mean", "Mean", ["conv/Relu", "gap/axes"], keep_dims=False),
        _raw_node("fc/MatMul", "MatMul", ["gap/Mean", "fc/w"]),
        _raw_node("probs", "Softmax", ["fc/MatMul", "^gap/Mean"]),  # a control input is ignored
        *extra_nodes,
    ]
    nodes += [{"name": name, "op": "Const", "attr": {}} for name in consts]
    random.Random(0).shuffle(nodes)  # topological order must not depend on file order
    manifest = [
        {
            "paths": ["m.bin"],
            "weights": [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in consts.items()],
        }
    ]
    (folder / "m.bin").write_bytes(b"".join(v.tobytes() for v in consts.values()))
    model = {"format": "graph-model", "modelTopology": {"node": nodes}, "weightsManifest": manifest}
    if with_signature:
        model["signature"] = {"outputs": {"probabilities": {"name": "probs:0"}}}
    path = folder / "m.json"
    path.write_text(json.dumps(model))
    return path


def _reference(path: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The crafted graph written directly in torch (NHWC input)."""
    w = load_manifest_weights(path)
    y = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (1, 1, 1, 1))  # 5x5, k3, s2 SAME: 1 before, 1 after
    y = torch.relu(torch.nn.functional.conv2d(y, w["conv/w"].permute(3, 2, 0, 1), w["conv/b"], stride=2))
    pooled = y.mean(dim=(2, 3))
    return pooled, torch.softmax(pooled @ w["fc/w"], dim=-1)


def test_crafted_graph_end_to_end(tmp_path):
    path = _write_model(tmp_path)
    sig = signature(path)
    assert [s.name for s in sig.inputs] == ["image"] and sig.inputs[0].shape == (-1, 5, 5, 2)
    assert [(s.name, s.alias) for s in sig.outputs] == [("probs", "probabilities")]

    model = load_graph_model(path)
    x = torch.randn(3, 5, 5, 2, requires_grad=True)
    pooled_ref, probs_ref = _reference(path, x.detach())
    torch.testing.assert_close(model(x), probs_ref)

    both = load_graph_model(path, outputs=["gap/Mean", "probabilities"])  # node name and signature alias
    assert both.output_names == ("gap/Mean", "probs")
    pooled, probs = both(x)
    torch.testing.assert_close(pooled, pooled_ref)
    torch.testing.assert_close(probs, probs_ref)

    # gradients reach the input; the weights are frozen buffers
    pooled.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in both.parameters())
    assert "conv/w" in both.state_dict()


def test_crafted_graph_layouts_and_state_dict(tmp_path):
    path = _write_model(tmp_path, with_signature=False)  # outputs found as the nodes nobody consumes
    nhwc = load_graph_model(path)
    assert nhwc.output_names == ("probs",)
    x = torch.randn(2, 5, 5, 2)
    nchw = load_graph_model(path, input_layout="nchw")
    torch.testing.assert_close(nchw(x.permute(0, 3, 1, 2)), nhwc(x))
    torch.testing.assert_close(nhwc.forward_nchw(x.permute(0, 3, 1, 2)), nhwc(x))

    graph = read_graph(path)
    zeros = {k: torch.zeros_like(v) for k, v in nhwc.state_dict().items()}
    blank = TFJSGraphModule(graph, zeros)
    blank.load_state_dict(nhwc.state_dict(), strict=True)
    torch.testing.assert_close(blank(x), nhwc(x))


def test_crafted_graph_errors(tmp_path):
    path = _write_model(tmp_path)
    model = load_graph_model(path)
    with pytest.raises(ImageError, match=r"\[-1, 5, 5, 2\]"):
        model(torch.randn(1, 2, 5, 5))
    with pytest.raises(ConfigError, match="probabilities"):
        load_graph_model(path, outputs=["nope"])
    constants = load_manifest_weights(path)
    del constants["fc/w"]
    with pytest.raises(CorruptWeightsError, match="fc/w"):
        TFJSGraphModule(read_graph(path), constants)

    erf = _raw_node("erf", "Erf", ["probs"])
    bad = _write_model(tmp_path, extra_nodes=[erf])
    load_graph_model(bad)  # unused nodes do not matter
    with pytest.raises(UnsupportedOpError, match=r"'erf'.*'Erf'"):
        load_graph_model(bad, outputs=["erf"])


# --------------------------------------------------------------------------------------------------------------------
# real human-models graphs vs the TF.js runtime
# --------------------------------------------------------------------------------------------------------------------

# Recorded with @tensorflow/tfjs 4.22.0 (CPU backend, Node 20) running the unchanged model.json/.bin on the
# deterministic input below: (model, input shape, graph value range, output node, L2 norm, {flat index: value}).
# Over all outputs of all six graphs, this converter agreed with TF.js to max |diff| 1.6e-4 at values up to 294.
TFJS_RUNTIME_SLICES = [
    ("faceres", (1, 224, 224, 3), (0, 255), "global_pooling/Mean", 1.71305, {0: 0, 512: 0, 845: 1.08117}),
    ("faceres-deep", (1, 224, 224, 3), (0, 255), "global_pooling/Mean", 1.73754, {0: 0, 394: 1.32777, 512: 0}),
    ("mobileface", (1, 112, 112, 3), (0, 255), "batchnorm0/add_1", 678.25, {41: 139.378, 128: 12.7978, 178: -105.96}),
    ("emotion", (1, 64, 64, 1), (-1, 1), "Identity", 0.988311, {1: 0.988278, 3: 0.0075401, 5: 1.12166e-09}),
    ("facemesh", (1, 192, 192, 3), (0, 1), "Identity_2", 3056.07, {14: -21.4393, 457: 154.808, 702: 46.3757}),
    ("facemesh", (1, 192, 192, 3), (0, 1), "Identity_1", 0.00068381, {0: 0.00068381}),
    ("blazeface", (1, 256, 256, 3), (-1, 1), "Identity", 640.13, {58: -294.733, 256: -3.50452, 479: -1.82624}),
]
# 6 significant digits were recorded, so compare at 1e-4 relative (plus a floor for entries near zero).
SLICE_RTOL = 1e-4


def _deterministic_input(shape, value_range):
    index = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)
    low, high = value_range
    return (low + (high - low) * (0.5 + 0.5 * torch.sin(index * 0.0137))).float()


@pytest.mark.parametrize(
    ("name", "shape", "value_range", "node", "norm", "values"),
    TFJS_RUNTIME_SLICES,
    ids=[f"{row[0]}:{row[3]}" for row in TFJS_RUNTIME_SLICES],
)
def test_real_graph_matches_tfjs_runtime(weights_dir, name, shape, value_range, node, norm, values):
    model = load_graph_model(weights_dir / "human_models" / f"{name}.json", outputs=[node])
    with torch.no_grad():
        out = model(_deterministic_input(shape, value_range)).reshape(-1).double()
    assert out.norm().item() == pytest.approx(norm, rel=SLICE_RTOL)
    for index, value in values.items():
        assert out[index].item() == pytest.approx(value, rel=SLICE_RTOL, abs=SLICE_RTOL * norm * 1e-2)


@pytest.mark.parametrize("name", sorted({row[0] for row in TFJS_RUNTIME_SLICES}))
def test_real_graph_forward_reads_no_device_value(weights_dir, name):
    """On a GPU, every tensor value read as a Python number is a host sync: a forward pass must need none.

    Moved to the meta device, the graph's constants hold no data, so any ``.tolist()``/``float()`` of a device
    tensor raises; the shape/axis/padding constants must come from the module's host copies instead.
    """
    shape = next(row[1] for row in TFJS_RUNTIME_SLICES if row[0] == name)
    model = load_graph_model(weights_dir / "human_models" / f"{name}.json").to("meta")
    with torch.no_grad():
        outputs = model(torch.empty(shape, device="meta"))
    for out in outputs if isinstance(outputs, tuple) else (outputs,):
        assert out.device.type == "meta" and out.numel() > 0
