"""What a traced function would need from a GPU, read off the kernel registry of the installed TensorFlow wheel.

The `tensorflow` wheel (not `tensorflow-cpu`) registers TensorFlow's GPU kernels even on a machine without a GPU,
so a step traced on the CPU can be checked for what an 8-GPU run needs:
- `missing_gpu_kernels`: every op of the graph, of its function library (nested functions, `while` and `cond`
  bodies, XLA-compiled functions) with no GPU kernel for the dtypes it runs with;
- `host_transfers`: the tensors that would cross between GPU and host memory, from each kernel's HostMemory
  arguments and TensorFlow's rules for int32 and handle tensors (core/framework/memory_types.cc): a device-to-host
  copy makes the host wait for the GPU; a host-to-device copy of a small index or shape is asynchronous.

A model of TensorFlow's placement, not TensorFlow's placer: every op is taken to run on the GPU, as it would when
it has a kernel there (Grappler may still pin small integer ops to the host, which only removes transfers).
TensorFlow behaviour relied on: `tensorflow.python.framework.kernels.get_registered_kernels_for_op` lists the
KernelDefs (device type, type constraints, HostMemory arguments); `DEFAULT` kernels serve every device that has
no kernel of its own (tests/test_ops_assumptions.py pins both).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import tensorflow as tf
from tensorflow.python.framework import kernels, op_def_registry

# Ops that call a function: their body is checked where it is defined (the library), and TensorFlow gives
# their arguments memory by dtype (int32 on the host), as for a function's own arguments.
CALLS = {"PartitionedCall", "StatefulPartitionedCall", "While", "SymbolicGradient"}
# Ops whose GPU kernels another library registers, absent from the build on this machine: taken as GPU kernels
# with every argument in device memory.
GPU_KERNELS_ELSEWHERE = {
    op: "Horovod registers its GPU kernel (no HostMemory arguments) when built with HOROVOD_GPU_OPERATIONS=NCCL "
        "(horovod/tensorflow/mpi_ops.cc), as launch/setup.sh and the Dockerfile build it on CUDA machines; the "
        "Gloo build here has CPU kernels only"
    for op in ("HorovodAllreduce", "HorovodGroupedAllreduce", "HorovodAllgather", "HorovodGroupedAllgather",
               "HorovodBroadcast", "HorovodReducescatter", "HorovodGroupedReducescatter", "HorovodAlltoall")}
_ALWAYS_ON_HOST = {tf.string.as_datatype_enum, tf.resource.as_datatype_enum}


class Node(NamedTuple):
    function: str  # the library function it belongs to; "" for the traced graph itself
    name: str
    op: str
    attrs: dict  # attr name -> AttrValue
    inputs: tuple  # the NodeDef's inputs, control inputs left out


class Finding(NamedTuple):
    op: str
    types: str  # the node's type attributes, e.g. "T=float32"
    where: str  # function/node of its first occurrence


class Transfer(NamedTuple):
    direction: str  # "device->host" or "host->device"
    function: str
    producer: str  # "Op name" of the tensor's producer ("arg name" for a function argument)
    consumer: str


def _graph_nodes(graph_def) -> list[Node]:
    """Every node of a traced graph and of every function in its library (bodies nested at any depth)."""
    nodes = [_node("", n) for n in graph_def.node]
    for function in graph_def.library.function:
        nodes += [_node(function.signature.name, n) for n in function.node_def]
    return nodes


def _node(function: str, node_def) -> Node:
    return Node(function, node_def.name, node_def.op, dict(node_def.attr),
                tuple(i for i in node_def.input if not i.startswith("^")))


def missing_gpu_kernels(concrete_function) -> list[Finding]:
    """The (op, dtypes) pairs of the traced function (its library included) that have no GPU kernel, each once, in
    order of first occurrence. A call of a library function is not an op: its body is checked with the rest."""
    graph_def = concrete_function.graph.as_graph_def()
    library = {f.signature.name for f in graph_def.library.function}
    found = {}
    for node in _graph_nodes(graph_def):
        checked_elsewhere = node.op in library or node.op in CALLS or node.op in GPU_KERNELS_ELSEWHERE
        if checked_elsewhere or gpu_kernel(node) is not None:
            continue
        key = (node.op, _type_signature(node))
        found.setdefault(key, Finding(node.op, key[1], f"{node.function or 'step'}/{node.name}"))
    return list(found.values())


def gpu_kernel(node: Node):
    """The KernelDef TensorFlow would pick for the node on a GPU, or None: a GPU kernel whose type constraints the
    node meets, else such a DEFAULT kernel."""
    for device in ("GPU", "DEFAULT"):
        for kernel in _kernels(node.op, device):
            if all(set(_types(node, c.name)) <= set(c.allowed_values.list.type) for c in kernel.constraint):
                return kernel
    return None


def tf_kernels(op: str) -> list:
    """Every KernelDef TensorFlow registers for the op (device_type, constraint, host_memory_arg)."""
    return list(kernels.get_registered_kernels_for_op(op).kernel)


@functools.lru_cache(maxsize=None)
def _kernels(op: str, device: str) -> tuple:
    return tuple(k for k in tf_kernels(op) if k.device_type == device)


def _types(node: Node, attr: str) -> list:
    value = node.attrs.get(attr)
    if value is None:  # an attr left at its default
        op_def = op_def_registry.get(node.op)
        value = next((a.default_value for a in op_def.attr if a.name == attr), None) if op_def else None
    if value is None:
        return []
    return [value.type] if value.WhichOneof("value") == "type" else list(value.list.type)


def _type_signature(node: Node) -> str:
    parts = []
    for name in sorted(node.attrs):
        types = _types(node, name) if node.attrs[name].WhichOneof("value") in ("type", "list") else []
        if types:
            parts.append(f"{name}=" + ",".join(tf.dtypes.as_dtype(t).name for t in types))
    return " ".join(parts)


def host_transfers(concrete_function) -> list[Transfer]:
    """The tensors that would move between GPU and host memory when the function runs with every op on a GPU,
    each producer's tensor once per function (TensorFlow copies it once for all its consumers there)."""
    graph_def = concrete_function.graph.as_graph_def()
    library = {f.signature.name: f for f in graph_def.library.function}
    scopes = [("", graph_def.node, {})]
    for name, function in library.items():
        args = {a.name: _memory(tf.dtypes.as_dtype(_arg_type(a, {})), None) for a in function.signature.input_arg}
        scopes.append((name, function.node_def, args))
    transfers = {}
    for function, node_defs, args in scopes:
        nodes = {n.name: _node(function, n) for n in node_defs}
        for node in nodes.values():
            inputs, _ = _memory_types(node, library)
            for position, endpoint in enumerate(node.inputs):
                source, memory = _source(endpoint, nodes, args, library, function == "")
                if memory is None or position >= len(inputs) or memory == inputs[position]:
                    continue
                direction = "device->host" if inputs[position] == "host" else "host->device"
                transfers.setdefault((function, source, direction),
                                     Transfer(direction, function or "step", source, f"{node.op} {node.name}"))
    return list(transfers.values())


def _source(endpoint: str, nodes: dict, args: dict, library: dict, graph_def_naming: bool):
    """(a description of the producer, the memory its output is in) for a NodeDef input."""
    parts = endpoint.split(":")
    if parts[0] in args and len(parts) == 1:
        return f"arg {parts[0]}", args[parts[0]]
    producer = nodes.get(parts[0])
    if producer is None:
        return endpoint, None
    if producer.op == "Placeholder":  # the traced function's own argument
        return f"arg {producer.name}", _memory(tf.dtypes.as_dtype(producer.attrs["dtype"].type), None)
    _, outputs = _memory_types(producer, library)
    if graph_def_naming:  # "node" or "node:k"
        index = int(parts[1]) if len(parts) > 1 else 0
    else:  # FunctionDef: "node:output_arg:k"
        index = _output_offset(producer, library, parts[1]) + int(parts[2])
    return f"{producer.op} {producer.name}", outputs[index] if index < len(outputs) else None


def _memory_types(node: Node, library: dict):
    """("host" | "device") for each input and output of the node on a GPU, by memory_types.cc's rules."""
    op_def = library[node.op].signature if node.op in library else op_def_registry.get(node.op)
    if op_def is None:
        return [], []
    in_types = [t for a in op_def.input_arg for t in _expand(a, node)]
    out_types = [t for a in op_def.output_arg for t in _expand(a, node)]
    call = node.op in library or node.op in CALLS
    kernel = None if call else gpu_kernel(node)
    if kernel is None and not call and node.op not in GPU_KERNELS_ELSEWHERE:  # no GPU kernel: it runs on the host
        return ["host"] * len(in_types), ["host"] * len(out_types)
    host_args = set(kernel.host_memory_arg) if kernel is not None else set()
    ins = _by_arg(op_def.input_arg, node, in_types, host_args, not call)
    outs = _by_arg(op_def.output_arg, node, out_types, host_args, not call)
    return ins, outs


def _by_arg(arg_defs, node, dtypes, host_args, has_kernel) -> list:
    memory = []
    for arg in arg_defs:
        memory += ["host" if arg.name in host_args else "device"] * len(_expand(arg, node))
    return [_memory(tf.dtypes.as_dtype(t), m if has_kernel else None) for t, m in zip(dtypes, memory)]


def _memory(dtype, by_kernel):
    """memory_types.cc: handles and strings live on the host; int32 too, unless a kernel says where it is."""
    if dtype.as_datatype_enum in _ALWAYS_ON_HOST or (dtype == tf.int32 and by_kernel is None):
        return "host"
    return by_kernel or "device"


def _expand(arg, node: Node) -> list:
    """The dtypes of an OpDef argument for this node (a list argument counts one per element)."""
    if arg.number_attr:
        count = node.attrs[arg.number_attr].i if arg.number_attr in node.attrs else 0
        return [_arg_type(arg, node.attrs)] * count
    if arg.type_list_attr:
        return _types(node, arg.type_list_attr)
    return [_arg_type(arg, node.attrs)]


def _arg_type(arg, attrs) -> int:
    if arg.type_attr:
        value = attrs.get(arg.type_attr)
        return value.type if value is not None else tf.float32.as_datatype_enum
    return arg.type


def _output_offset(node: Node, library: dict, arg_name: str) -> int:
    op_def = library[node.op].signature if node.op in library else op_def_registry.get(node.op)
    offset = 0
    for arg in op_def.output_arg:
        if arg.name == arg_name:
            return offset
        offset += len(_expand(arg, node))
    return offset
