"""Graph passes, the pass manager and pipeline strings."""

from .manager import PassManager, run_pipeline
from .pipeline import available_passes, parse_pipeline, register_pass
from .report import Report

__all__ = ["PassManager", "Report", "available_passes", "parse_pipeline", "register_pass", "run_pipeline"]
