"""optc's IR: tensor types, values, nodes, graphs, the op registry and the tools around them."""

from .builder import Builder
from .graph import Graph, Node, Value
from .interpret import interpret, sample_inputs
from .text import parse, print_graph
from .types import TensorType
from .verify import verify

__all__ = ["Builder", "Graph", "Node", "TensorType", "Value", "interpret", "parse", "print_graph", "sample_inputs", "verify"]
