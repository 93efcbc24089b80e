"""One hierarchy for every error optc raises on purpose.

Each message says what is wrong and, where possible, what to do next. The command line prints
``str(error)`` on one line and exits non-zero; anything that is not an ``OptcError`` is a bug.
"""

from __future__ import annotations


class OptcError(Exception):
    """Base of every error optc raises for bad input or an impossible request."""


class ModelLoadError(OptcError):
    """A model file cannot be read, is malformed, or breaks a safety bound."""


class UnsupportedOpError(OptcError):
    """One or more operators have no conversion; lists every op type with its node names."""

    def __init__(self, unsupported: dict[str, list[str]], source: str = "model") -> None:
        self.unsupported = {op: list(names) for op, names in sorted(unsupported.items())}
        parts = []
        for op, names in self.unsupported.items():
            shown = ", ".join(names[:5]) + (f", ... ({len(names)} nodes)" if len(names) > 5 else "")
            parts.append(f"{op} [{shown}]")
        super().__init__(
            f"{source} uses {len(self.unsupported)} unsupported op type(s): " + "; ".join(parts)
        )


class VerificationError(OptcError):
    """The graph breaks an IR invariant; the message names the node."""


class ShapeError(VerificationError):
    """Shape or dtype inference failed for a node."""


class PassError(OptcError):
    """A pass raised or left the graph invalid; names the pass and the passes before it."""

    def __init__(self, pass_name: str, history: list[str], cause: BaseException) -> None:
        self.pass_name = pass_name
        self.history = list(history)
        self.cause = cause
        before = ", ".join(history) if history else "none"
        super().__init__(f"pass '{pass_name}' failed (after: {before}): {cause}")


class PipelineError(OptcError):
    """A pipeline string cannot be parsed or names an unknown pass or option."""


class LoweringError(OptcError):
    """The graph cannot be lowered to TVM or compiled for the target."""


class ArtifactError(OptcError):
    """An artifact is missing, of another format version, or was modified after it was written."""


class InputError(OptcError):
    """Inputs given to a compiled model do not match its signature."""
