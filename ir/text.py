"""The text form of a graph: what ``print(graph)`` shows, golden tests compare and errors quote.

    graph main(%x: float32[1,3,8,8]) {
      param %w: float32[4,3,3,3]
      param %one: float32[] = 1.0
      %y: float32[1,4,6,6] = nn.conv(%x, %w) {groups=1} @conv
      return %y
    }

Params with at most ``INLINE_LIMIT`` elements print their values; larger ones print only their
type and parse as zeros unless ``parse`` is given their arrays. Attributes equal to the op's
default are left out.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

import numpy as np

from ..errors import VerificationError
from .graph import Graph, Value
from .ops import registry
from .types import TensorType

INLINE_LIMIT = 16


def _format_attrs(op: str, attrs: dict) -> str:
    schema = registry.get(op).attrs
    shown = {k: v for k, v in attrs.items() if not (k in schema and schema[k].default is not registry.REQUIRED and schema[k].default == v)}
    if not shown:
        return ""
    return " {" + ", ".join(f"{key}={value!r}" for key, value in sorted(shown.items())) + "}"


def print_graph(graph: Graph) -> str:
    lines = [f"graph {graph.name}(" + ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs) + ") {"]
    for value, array in graph.params.items():
        inline = f" = {array.tolist()!r}" if array.size <= INLINE_LIMIT else ""
        lines.append(f"  param %{value.name}: {value.type}{inline}")
    for node in graph.nodes:
        outputs = ", ".join(f"%{v.name}: {v.type}" for v in node.outputs)
        inputs = ", ".join(f"%{v.name}" for v in node.inputs)
        lines.append(f"  {outputs} = {node.op}({inputs}){_format_attrs(node.op, node.attrs)} @{node.name}")
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)


_TYPE = re.compile(r"^(\w+)\[(.*)\]$")


def _parse_type(text: str) -> TensorType:
    match = _TYPE.match(text.strip())
    if not match:
        raise VerificationError(f"bad type '{text}'")
    dims = [d.strip() for d in match.group(2).split(",") if d.strip()]
    return TensorType(tuple(int(d) if re.fullmatch(r"\d+", d) else d for d in dims), match.group(1))


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [part.strip() for part in parts]


class _NonFinite(ast.NodeTransformer):
    """``inf`` and ``nan`` as repr prints them, turned into constants literal_eval accepts."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in ("inf", "nan"):
            return ast.copy_location(ast.Constant(float(node.id)), node)
        return node


def _parse_attrs(text: str) -> dict:
    if not text:
        return {}
    try:
        call = _NonFinite().visit(ast.parse(f"f({text})", mode="eval")).body
        assert isinstance(call, ast.Call)
        return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
    except (SyntaxError, ValueError, AssertionError) as error:
        raise VerificationError(f"cannot parse attributes {{{text}}}: {error}") from None


_NODE = re.compile(r"^(?P<outs>.+?) = (?P<op>[\w.]+)\((?P<ins>[^)]*)\)(?: \{(?P<attrs>.*)\})?(?: @(?P<name>[\w.\-/:]+))?$")


def parse(text: str, params: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Parse the text form back into a verified-shape graph (types are re-inferred and compared)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    header = re.match(r"^graph (\w+)\((.*)\) \{$", lines[0])
    if not header or lines[-1] != "}":
        raise VerificationError("text form must start with 'graph NAME(...) {' and end with '}'")
    graph = Graph(header.group(1))
    env: dict[str, Value] = {}
    for item in _split_top(header.group(2)):
        name, type_text = item.split(":", 1)
        env[name.strip().lstrip("%")] = graph.add_input(name.strip().lstrip("%"), _parse_type(type_text))
    for line in lines[1:-1]:
        if line.startswith("param "):
            body = line[len("param "):]
            declaration, _, literal = body.partition(" = ")
            name, type_text = declaration.split(":", 1)
            name = name.strip().lstrip("%")
            value_type = _parse_type(type_text)
            if params and name in params:
                array = np.asarray(params[name])
            elif literal:
                parsed = ast.literal_eval(_NonFinite().visit(ast.parse(literal.strip(), mode="eval")))
                array = np.array(parsed, dtype=value_type.dtype).reshape(value_type.static_shape())
            else:
                array = np.zeros(value_type.static_shape(), dtype=value_type.dtype)
            env[name] = graph.add_param(name, array)
        elif line.startswith("return"):
            graph.outputs = [env[item.lstrip("%")] for item in _split_top(line[len("return"):])]
        else:
            match = _NODE.match(line)
            if not match:
                raise VerificationError(f"cannot parse line: {line}")
            out_items = [item.split(":", 1) for item in _split_top(match.group("outs"))]
            inputs = [env[item.lstrip("%")] for item in _split_top(match.group("ins"))]
            node = graph.add_node(
                match.group("op"),
                inputs,
                _parse_attrs(match.group("attrs") or ""),
                name=match.group("name"),
                output_names=[name.strip().lstrip("%") for name, _ in out_items],
            )
            for value, (_, type_text) in zip(node.outputs, out_items):
                if value.type != _parse_type(type_text):
                    raise VerificationError(f"{node.name}: text says {type_text.strip()}, inference gives {value.type}")
                env[value.name] = value
    return graph
