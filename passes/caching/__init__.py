"""Caching: turn one iterative graph into entry points that share state.

- ``derive_kv_cache``: a decoder that recomputes the whole sequence becomes ``prefill`` and
  ``decode`` steps over fixed-capacity key/value caches (static shapes, a position input).
- ``split_deep_cache``: a U-Net denoiser becomes a ``full`` step that stores the feature of its
  deep branch and a ``cached`` step that reads it and never computes that branch (DeepCache).
- ``schedule``: which sampling steps are full (uniform interval or non-uniform), and a loop
  driver with optional Adams-Bashforth extrapolation of the cached feature.

Compile the result with ``optc.compile_entries(split.entries, state=split.state)``.
"""

from .deep_cache import find_skip_branches, split_deep_cache
from .kv_cache import derive_kv_cache
from .schedule import CachedDenoiser, nonuniform_schedule, uniform_schedule
from .split import EntrySplit

__all__ = ["CachedDenoiser", "EntrySplit", "derive_kv_cache", "find_skip_branches", "nonuniform_schedule",
           "split_deep_cache", "uniform_schedule"]
