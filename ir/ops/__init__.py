"""The op registry and its families; see ``registry`` for how an op is defined."""

from .registry import Attr, OpDef, all_ops, define, get, is_registered

__all__ = ["Attr", "OpDef", "all_ops", "define", "get", "is_registered"]
