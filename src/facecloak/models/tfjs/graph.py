"""Run a TF.js *graph model* (``model.json`` + ``.bin``) as a differentiable PyTorch module.

A graph model's ``modelTopology.node`` is a frozen TensorFlow GraphDef written as JSON; its ``Const`` values live in
the weights manifest. :func:`load_graph_model` reads both and returns a :class:`TFJSGraphModule` that executes the
nodes needed for the requested outputs in topological order, one small torch handler per op type (``_OPS``).

Semantics follow TensorFlow, not PyTorch: tensors are NHWC unless a node says ``data_format: NCHW``, filters keep
TF's layout (``[kh, kw, in, out]``; depthwise ``[kh, kw, in, multiplier]``), and ``SAME`` padding is TF's
asymmetric rule (the odd extra pixel goes to the bottom/right). Constants are frozen buffers; gradients flow to
the inputs, which is what adversarial optimisation needs.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facecloak.errors import ConfigError, CorruptWeightsError, ImageError, MissingWeightsError, WeightsError
from facecloak.models.tfjs.weights import load_manifest_weights

Layout = Literal["nhwc", "nchw"]

# TF's default leaky-ReLU slope (tf.nn.leaky_relu alpha=0.2), used when a fused op has no `leakyrelu_alpha` attr.
TF_LEAKY_RELU_DEFAULT_ALPHA = 0.2
# TF's FusedBatchNorm default epsilon (tf.raw_ops.FusedBatchNormV3), used when the attr is absent or zero.
TF_BATCH_NORM_DEFAULT_EPSILON = 1e-4


class UnsupportedOpError(WeightsError):
    """The graph uses an op (or fused op, or attribute value) this converter does not implement."""


# --------------------------------------------------------------------------------------------------------------------
# Parsing the JSON graph
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphNode:
    """One GraphDef node: inputs are ``(node name, output index)`` pairs; control inputs (``^x``) are dropped."""

    name: str
    op: str
    inputs: tuple[tuple[str, int], ...]
    attr: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """Decoded attribute value (strings un-base64'd, ints parsed), so handlers read attrs like TF does."""
        return _decode_attr(self.attr[key]) if key in self.attr else default


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: node name, static shape (-1 = any) and the alias the model's signature gives it."""

    name: str
    shape: tuple[int, ...] | None = None
    alias: str | None = None


@dataclass(frozen=True)
class GraphSignature:
    """The graph's feeds (placeholders) and fetches (signature outputs, else nodes nobody consumes)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class TFJSGraph:
    """A parsed graph model: nodes by name (file order kept) and its signature."""

    nodes: Mapping[str, GraphNode]
    signature: GraphSignature
    source: Path


def _decode_attr(value: Mapping[str, Any]) -> Any:
    if "list" in value:
        items = value["list"]
        for key in ("i", "f", "s", "b", "type"):
            if key in items:
                return [_decode_attr({key: v}) for v in items[key]]
        return []
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return value["type"]
    if "shape" in value:
        return _shape_of(value["shape"])
    return value


def _shape_of(proto: Mapping[str, Any]) -> tuple[int, ...] | None:
    if proto.get("unknownRank"):
        return None
    return tuple(int(d.get("size", -1)) for d in proto.get("dim", []))


def _split_tensor_name(name: str) -> tuple[str, int]:
    """``"conv/BiasAdd:1"`` -> ``("conv/BiasAdd", 1)``; a bare node name means output 0."""
    node, _, index = name.partition(":")
    return node, int(index) if index else 0


def _parse_node(raw: Mapping[str, Any]) -> GraphNode:
    inputs = tuple(_split_tensor_name(i) for i in raw.get("input", []) if not i.startswith("^"))
    return GraphNode(name=raw["name"], op=raw["op"], inputs=inputs, attr=raw.get("attr", {}))


def read_graph(json_path: str | Path) -> TFJSGraph:
    """Parse a graph-model ``model.json`` once, so signature listing and module building share one reader."""
    json_path = Path(json_path)
    if not json_path.exists():
        raise MissingWeightsError(f"TF.js graph model not found: {json_path}")
    with open(json_path) as f:
        data = json.load(f)
    topology = data.get("modelTopology") if isinstance(data, dict) else None
    if not topology or "node" not in topology:
        raise CorruptWeightsError(
            f"{json_path} has no modelTopology.node: it is not a TF.js graph model (layers models and bare "
            "weights manifests need their network defined in code)"
        )
    nodes = {raw["name"]: _parse_node(raw) for raw in topology["node"]}
    return TFJSGraph(nodes=nodes, signature=_signature_of(data, nodes), source=json_path)


def _signature_of(data: Mapping[str, Any], nodes: Mapping[str, GraphNode]) -> GraphSignature:
    inputs = tuple(TensorSpec(name=n.name, shape=n.get("shape")) for n in nodes.values() if n.op == "Placeholder")
    declared = data.get("signature") or data.get("userDefinedMetadata", {}).get("signature") or {}
    outputs: list[TensorSpec] = []
    for alias, spec in declared.get("outputs", {}).items():
        node_name, _ = _split_tensor_name(spec.get("name", alias))
        shape = _shape_of(spec["tensorShape"]) if "tensorShape" in spec else None
        outputs.append(TensorSpec(name=node_name, shape=shape, alias=alias))
    if not outputs:  # no signature: every node that nothing consumes is an output
        consumed = {src for n in nodes.values() for src, _ in n.inputs}
        outputs = [TensorSpec(name=n.name) for n in nodes.values() if n.name not in consumed and n.op != "Const"]
    return GraphSignature(inputs=inputs, outputs=tuple(outputs))


def signature(json_path: str | Path) -> GraphSignature:
    """List a graph model's input and output node names, to pick ``outputs=`` for :func:`load_graph_model`."""
    return read_graph(json_path).signature


# --------------------------------------------------------------------------------------------------------------------
# Op handlers: each takes the node and its evaluated inputs and returns the node's output (TF semantics)
# --------------------------------------------------------------------------------------------------------------------

Handler = Callable[[GraphNode, list[Tensor]], Tensor]
_OPS: dict[str, Handler] = {}


def _op(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in names:
            _OPS[name] = fn
        return fn

    return register


def supported_ops() -> tuple[str, ...]:
    """Op types the converter runs, so a model can be checked before it is loaded."""
    return tuple(sorted([*_OPS, "Const", "Placeholder"]))


def run_op(node: GraphNode, inputs: Sequence[Tensor]) -> Tensor:
    """Evaluate one node on already-evaluated inputs (TF semantics), so each op can be checked on its own."""
    handler = _OPS.get(node.op)
    if handler is None:
        raise UnsupportedOpError(
            f"node {node.name!r} uses op {node.op!r}, which the TF.js graph converter does not implement "
            f"(supported: {', '.join(supported_ops())}); add a handler to _OPS"
        )
    return handler(node, list(inputs))


def _channels_last(node: GraphNode) -> bool:
    fmt = node.get("data_format", "NHWC")
    if fmt not in ("NHWC", "NCHW"):
        raise UnsupportedOpError(f"node {node.name!r} ({node.op}): data_format {fmt!r} is not supported")
    return fmt == "NHWC"


def _spatial(values: Sequence[int], channels_last: bool) -> tuple[int, int]:
    """(h, w) from a 4-entry TF attr list (strides, dilations, ksize) in the node's data format."""
    return (values[1], values[2]) if channels_last else (values[2], values[3])


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF ``SAME``: output ceil(size / stride); the odd pixel of padding goes after (bottom/right)."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _padding_lrtb(
    node: GraphNode, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Padding of an NCHW tensor as ``F.pad``'s (left, right, top, bottom) for the node's padding mode."""
    mode = node.get("padding", "VALID")
    if mode == "VALID":
        return 0, 0, 0, 0
    if mode == "SAME":
        top, bottom = _same_pad(x.shape[2], kernel[0], stride[0], dilation[0])
        left, right = _same_pad(x.shape[3], kernel[1], stride[1], dilation[1])
        return left, right, top, bottom
    if mode == "EXPLICIT":
        pads = node.get("explicit_paddings", [])  # 8 ints: (before, after) per dim in data_format order
        h, w = (1, 2) if _channels_last(node) else (2, 3)
        return pads[2 * w], pads[2 * w + 1], pads[2 * h], pads[2 * h + 1]
    raise UnsupportedOpError(f"node {node.name!r} ({node.op}): padding {mode!r} is not supported")


def _to_nchw(x: Tensor, channels_last: bool) -> Tensor:
    return x.permute(0, 3, 1, 2) if channels_last else x


def _from_nchw(x: Tensor, channels_last: bool) -> Tensor:
    return x.permute(0, 2, 3, 1) if channels_last else x


def _conv(node: GraphNode, x: Tensor, filt: Tensor, depthwise: bool) -> Tensor:
    """Conv2D / DepthwiseConv2dNative in TF semantics; torch runs it on a channels-last view (no copy)."""
    channels_last = _channels_last(node)
    stride = _spatial(node.get("strides", [1, 1, 1, 1]), channels_last)
    dilation = _spatial(node.get("dilations", [1, 1, 1, 1]), channels_last)
    kh, kw, cin, cout = filt.shape
    if depthwise:  # [kh, kw, in, mult] -> [in * mult, 1, kh, kw]; TF orders output channels as c * mult + m
        weight, groups = filt.permute(2, 3, 0, 1).reshape(cin * cout, 1, kh, kw), cin
    else:  # [kh, kw, in, out] -> [out, in, kh, kw]; grouped Conv2D has in = channels / groups
        weight = filt.permute(3, 2, 0, 1)
        groups = (x.shape[-1] if channels_last else x.shape[1]) // cin
    y = _to_nchw(x, channels_last)
    y = F.pad(y, _padding_lrtb(node, y, (kh, kw), stride, dilation))
    y = F.conv2d(y, weight, stride=stride, dilation=dilation, groups=groups)
    return _from_nchw(y, channels_last)


def _channel_shape(node: GraphNode, y: Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector against ``y`` (channel axis last unless NCHW)."""
    if y.dim() == 4 and not _channels_last(node):
        return (1, -1, 1, 1)
    return (-1,)


def _apply_fused(node: GraphNode, y: Tensor, args: list[Tensor]) -> Tensor:
    """Apply a fused node's ``fused_ops`` in order, each taking its extra inputs from ``args``."""
    remaining = list(args)

    def take(count: int, what: str) -> list[Tensor]:
        if len(remaining) < count:
            raise CorruptWeightsError(f"node {node.name!r}: fused op {what} needs {count} more inputs")
        taken = remaining[:count]
        del remaining[:count]
        return taken

    shape = _channel_shape(node, y)
    for fused in node.get("fused_ops", []):
        if fused == "BiasAdd":
            (bias,) = take(1, fused)
            y = y + bias.reshape(shape)
        elif fused == "FusedBatchNorm":
            scale, offset, mean, var = (t.reshape(shape) for t in take(4, fused))
            eps = node.get("epsilon", 0.0) or TF_BATCH_NORM_DEFAULT_EPSILON
            y = (y - mean) * torch.rsqrt(var + eps) * scale + offset
        elif fused == "Prelu":
            (alpha,) = take(1, fused)
            y = _prelu(y, alpha)
        elif fused == "LeakyRelu":
            y = F.leaky_relu(y, node.get("leakyrelu_alpha", TF_LEAKY_RELU_DEFAULT_ALPHA))
        elif fused in _FUSED_ACTIVATIONS:
            y = _FUSED_ACTIVATIONS[fused](y)
        else:
            raise UnsupportedOpError(f"node {node.name!r} ({node.op}): fused op {fused!r} is not supported")
    return y


def _prelu(x: Tensor, alpha: Tensor) -> Tensor:
    # The TF.js converter stores the true alpha (it negates Keras' folded -alpha), so f(x) = max(x, 0) + a·min(x, 0).
    return torch.clamp(x, min=0) + alpha * torch.clamp(x, max=0)


_FUSED_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": F.relu,
    "Relu6": F.relu6,
    "Elu": F.elu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
}


def _ints(t: Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def host_arg_positions(node: GraphNode) -> tuple[int, ...]:
    """Inputs an op reads as Python numbers (shapes, axes, paddings): the module feeds them from host copies.

    Reading such a value from a GPU tensor would stall the device once per op per forward pass.
    """
    if node.op in ("Mean", "Sum", "Max", "Reshape"):
        return (1,)
    if node.op in ("Pad", "PadV2"):
        return (1, 2)
    if node.op == "ConcatV2":
        return (len(node.inputs) - 1,)
    return ()


@_op("Conv2D")
def _conv2d(node: GraphNode, args: list[Tensor]) -> Tensor:
    return _conv(node, args[0], args[1], depthwise=False)


@_op("DepthwiseConv2dNative")
def _depthwise(node: GraphNode, args: list[Tensor]) -> Tensor:
    return _conv(node, args[0], args[1], depthwise=True)


@_op("_FusedConv2D")
def _fused_conv2d(node: GraphNode, args: list[Tensor]) -> Tensor:
    return _apply_fused(node, _conv(node, args[0], args[1], depthwise=False), args[2:])


@_op("FusedDepthwiseConv2dNative", "_FusedDepthwiseConv2dNative")
def _fused_depthwise(node: GraphNode, args: list[Tensor]) -> Tensor:
    return _apply_fused(node, _conv(node, args[0], args[1], depthwise=True), args[2:])


def _matmul(node: GraphNode, a: Tensor, b: Tensor) -> Tensor:
    if node.get("transpose_a", False):
        a = a.transpose(-1, -2)
    if node.get("transpose_b", False):
        b = b.transpose(-1, -2)
    return a @ b


@_op("MatMul")
def _matmul_op(node: GraphNode, args: list[Tensor]) -> Tensor:
    return _matmul(node, args[0], args[1])


@_op("_FusedMatMul")
def _fused_matmul(node: GraphNode, args: list[Tensor]) -> Tensor:
    return _apply_fused(node, _matmul(node, args[0], args[1]), args[2:])


def _pool(node: GraphNode, x: Tensor, reduce: Literal["max", "avg"]) -> Tensor:
    channels_last = _channels_last(node)
    kernel = _spatial(node.get("ksize"), channels_last)
    stride = _spatial(node.get("strides"), channels_last)
    y = _to_nchw(x, channels_last)
    pad = _padding_lrtb(node, y, kernel, stride, (1, 1))
    if reduce == "max":  # TF ignores padded cells: pad with -inf
        y = F.max_pool2d(F.pad(y, pad, value=-math.inf), kernel, stride)
    else:  # TF averages over the real cells only: divide window sums by window counts
        ones = torch.ones_like(y[:1, :1])
        sums = F.avg_pool2d(F.pad(y, pad), kernel, stride, divisor_override=1)
        counts = F.avg_pool2d(F.pad(ones, pad), kernel, stride, divisor_override=1)
        y = sums / counts
    return _from_nchw(y, channels_last)


@_op("MaxPool")
def _max_pool(node: GraphNode, args: list[Tensor]) -> Tensor:
    return _pool(node, args[0], "max")


@_op("AvgPool")
def _avg_pool(node: GraphNode, args: list[Tensor]) -> Tensor:
    return _pool(node, args[0], "avg")


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Handler:
    return lambda node, args: fn(args[0], args[1])


def _unary(fn: Callable[[Tensor], Tensor]) -> Handler:
    return lambda node, args: fn(args[0])


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "AddV2": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "RealDiv": torch.div,
    "Maximum": torch.maximum,
    "Minimum": torch.minimum,
    "SquaredDifference": lambda a, b: (a - b).square(),
}
_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    **_FUSED_ACTIVATIONS,  # Relu, Relu6, Elu, Sigmoid, Tanh
    "Identity": lambda x: x,
    "Neg": torch.neg,
    "Square": torch.square,
    "Sqrt": torch.sqrt,
    "Rsqrt": torch.rsqrt,
    "Exp": torch.exp,
    "Softmax": lambda x: torch.softmax(x, dim=-1),
}
_OPS.update({name: _binary(fn) for name, fn in _BINARY.items()})
_OPS.update({name: _unary(fn) for name, fn in _UNARY.items()})


@_op("BiasAdd")
def _bias_add(node: GraphNode, args: list[Tensor]) -> Tensor:
    return args[0] + args[1].reshape(_channel_shape(node, args[0]))


@_op("Prelu")
def _prelu_op(node: GraphNode, args: list[Tensor]) -> Tensor:
    return _prelu(args[0], args[1])


@_op("LeakyRelu")
def _leaky_relu(node: GraphNode, args: list[Tensor]) -> Tensor:
    return F.leaky_relu(args[0], node.get("alpha", TF_LEAKY_RELU_DEFAULT_ALPHA))


def _reduce(fn: Callable[..., Tensor]) -> Handler:
    def handler(node: GraphNode, args: list[Tensor]) -> Tensor:
        dims = _ints(args[1])
        keep = node.get("keep_dims", False)
        return fn(args[0], dim=dims, keepdim=keep) if dims else args[0]

    return handler


_OPS["Mean"] = _reduce(torch.mean)
_OPS["Sum"] = _reduce(torch.sum)
_OPS["Max"] = _reduce(torch.amax)


@_op("Reshape")
def _reshape(node: GraphNode, args: list[Tensor]) -> Tensor:
    return args[0].reshape(_ints(args[1]))


@_op("Squeeze")
def _squeeze(node: GraphNode, args: list[Tensor]) -> Tensor:
    dims = node.get("squeeze_dims", [])
    return args[0].squeeze(dims) if dims else args[0].squeeze()


@_op("Pad", "PadV2")
def _pad(node: GraphNode, args: list[Tensor]) -> Tensor:
    pairs = _ints(args[1])  # [[before, after] per dim], first dim first; F.pad wants last dim first
    flat = [p for d in reversed(range(len(pairs) // 2)) for p in (pairs[2 * d], pairs[2 * d + 1])]
    value = float(args[2]) if len(args) > 2 else 0.0
    return F.pad(args[0], flat, value=value)


@_op("ConcatV2")
def _concat(node: GraphNode, args: list[Tensor]) -> Tensor:
    return torch.cat(args[:-1], dim=int(args[-1]))


# --------------------------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------------------------


def _execution_order(nodes: Mapping[str, GraphNode], outputs: Sequence[str]) -> list[GraphNode]:
    """Nodes the outputs depend on, each after its inputs (iterative DFS: deep graphs must not hit recursion)."""
    order: list[GraphNode] = []
    state: dict[str, bool] = {}  # False = on the stack, True = done
    for root in outputs:
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            name, expanded = stack.pop()
            if expanded:
                state[name] = True
                order.append(nodes[name])
                continue
            if state.get(name) is True:
                continue
            if name not in nodes:
                raise CorruptWeightsError(f"the graph references node {name!r}, which it does not define")
            if state.get(name) is False:
                raise CorruptWeightsError(f"the graph has a cycle through node {name!r}")
            state[name] = False
            stack.append((name, True))
            stack.extend((src, False) for src, _ in reversed(nodes[name].inputs) if state.get(src) is not True)
    return order


class TFJSGraphModule(nn.Module):
    """A TF.js graph model as an ``nn.Module``: frozen constants as buffers, differentiable w.r.t. its inputs.

    ``forward(*inputs)`` takes the placeholders in signature order (NHWC, or NCHW when ``input_layout="nchw"``,
    in which case 4-D outputs come back NCHW too) and returns one tensor, or a tuple in ``output_names`` order.
    """

    def __init__(
        self,
        graph: TFJSGraph,
        constants: Mapping[str, Tensor],
        outputs: Sequence[str] | None = None,
        input_layout: Layout = "nhwc",
    ) -> None:
        super().__init__()
        if input_layout not in ("nhwc", "nchw"):
            raise ConfigError(f"input_layout must be 'nhwc' or 'nchw', got {input_layout!r}")
        self.input_layout: Layout = input_layout
        self.signature = graph.signature
        self.input_names = tuple(spec.name for spec in graph.signature.inputs)
        self.output_names = tuple(_resolve_output(graph, name) for name in (outputs or _default_outputs(graph)))
        self._order = _execution_order(graph.nodes, self.output_names)
        self._fed = tuple(node.name for node in self._order if node.op == "Placeholder")
        self._buffer_keys: dict[str, str] = {}
        for node in self._order:
            if node.op == "Const":
                self._register_constant(node.name, constants, graph.source)
            elif node.op != "Placeholder" and node.op not in _OPS:
                raise UnsupportedOpError(
                    f"{graph.source.name}: node {node.name!r} uses op {node.op!r}, which the TF.js graph converter "
                    f"does not implement (supported: {', '.join(supported_ops())})"
                )
        # Shape/axis/padding constants: which Const feeds which op input, copied to the host now and on every
        # state-dict load (a plain dict, so .to(device) leaves the copies where they are).
        self._host_sources = {
            node.name: {
                position: node.inputs[position][0]
                for position in host_arg_positions(node)
                if position < len(node.inputs) and graph.nodes[node.inputs[position][0]].op == "Const"
            }
            for node in self._order
        }
        self._host_args: dict[str, dict[int, Tensor]] = {}
        self._refresh_host_args()
        self.register_load_state_dict_post_hook(lambda module, _keys: module._refresh_host_args())
        self.requires_grad_(False)

    def _refresh_host_args(self) -> None:
        self._host_args = {
            name: {k: self._buffers[self._buffer_keys[src]].detach().cpu() for k, src in sources.items()}  # type: ignore[union-attr]
            for name, sources in self._host_sources.items()
            if sources
        }

    def _register_constant(self, name: str, constants: Mapping[str, Tensor], source: Path) -> None:
        if name not in constants:
            raise CorruptWeightsError(f"{source.name}: Const node {name!r} has no value in the weights manifest")
        key = name.replace(".", "_")  # module buffer names may not contain dots
        if key in self._buffers:
            raise CorruptWeightsError(f"{source.name}: constants {name!r} and another clash as buffer {key!r}")
        self.register_buffer(key, constants[name].clone())
        self._buffer_keys[name] = key

    def run(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Evaluate the graph on NHWC feeds keyed by placeholder name; returns every requested output by name."""
        missing = [name for name in self._fed if name not in feeds]
        if missing:
            raise ConfigError(f"no value fed for graph input(s) {missing}; inputs are {list(self.input_names)}")
        values: dict[str, Tensor | tuple[Tensor, ...]] = {}
        for node in self._order:
            if node.op == "Placeholder":
                values[node.name] = self._check_feed(node, feeds[node.name])
            elif node.op == "Const":
                values[node.name] = self._buffers[self._buffer_keys[node.name]]  # type: ignore[assignment]
            else:
                host = self._host_args.get(node.name, {})
                args = [host[k] if k in host else _pick(values, src, i) for k, (src, i) in enumerate(node.inputs)]
                values[node.name] = run_op(node, args)
        return {name: _pick(values, name, 0) for name in self.output_names}

    def _check_feed(self, node: GraphNode, x: Tensor) -> Tensor:
        expected = node.get("shape")
        if expected is not None and (
            x.dim() != len(expected) or any(e not in (-1, s) for e, s in zip(expected, x.shape))
        ):
            raise ImageError(
                f"graph input {node.name!r} expects shape {list(expected)} (NHWC, -1 = any), got {list(x.shape)}; "
                "resize/align the face crop to the model's input size (and pass input_layout='nchw' for NCHW)"
            )
        return x

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Run the graph on positional inputs in signature order; layout per ``input_layout``."""
        return self._call(inputs, nchw=self.input_layout == "nchw")

    def forward_nchw(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Run on NCHW inputs whatever ``input_layout`` says, for callers holding torch-layout image batches."""
        return self._call(inputs, nchw=True)

    def _call(self, inputs: Sequence[Tensor], nchw: bool) -> Tensor | tuple[Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ConfigError(f"expected {len(self.input_names)} input(s) {list(self.input_names)}, got {len(inputs)}")
        feeds = {
            name: x.permute(0, 2, 3, 1) if nchw and x.dim() == 4 else x for name, x in zip(self.input_names, inputs)
        }
        outs = tuple(y.permute(0, 3, 1, 2) if nchw and y.dim() == 4 else y for y in self.run(feeds).values())
        return outs[0] if len(outs) == 1 else outs


def _pick(values: Mapping[str, Tensor | tuple[Tensor, ...]], name: str, index: int) -> Tensor:
    value = values[name]
    if isinstance(value, tuple):
        return value[index]
    if index != 0:
        raise UnsupportedOpError(f"node {name!r} has one output, but output {index} of it is used")
    return value


def _default_outputs(graph: TFJSGraph) -> list[str]:
    return [spec.name for spec in graph.signature.outputs]


def _resolve_output(graph: TFJSGraph, name: str) -> str:
    """Accept a node name, a tensor name (``x:0``) or a signature alias (``output_mesh``)."""
    node_name, _ = _split_tensor_name(name)
    if node_name in graph.nodes:
        return node_name
    for spec in graph.signature.outputs:
        if spec.alias == name:
            return spec.name
    listed = ", ".join(f"{s.name} ({s.alias})" if s.alias else s.name for s in graph.signature.outputs)
    raise ConfigError(f"{graph.source.name} has no node {name!r}; its signature outputs are: {listed}")


def load_graph_model(
    json_path: str | Path, outputs: Sequence[str] | None = None, input_layout: Layout = "nhwc"
) -> TFJSGraphModule:
    """Build a frozen, differentiable module from a TF.js graph model; ``outputs`` picks nodes (default: signature)."""
    graph = read_graph(json_path)
    constants = load_manifest_weights(json_path)
    module = TFJSGraphModule(graph, constants, outputs=outputs, input_layout=input_layout)
    return module.eval()
