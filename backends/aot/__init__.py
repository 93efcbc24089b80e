"""optc's ahead-of-time C generator and static memory planner (shared by the mcu and arm targets).

- ``program``: the call sequence as the planner sees it (tensors, steps, windows, in-place pairs)
- ``planner``: lifetimes, TFLite Micro's greedy-by-size, a search that never does worse
- ``patching``: MCUNetV2-style patch-based first stage (split point and grid search)
- ``from_graph``: a program straight from an optc graph (plan without compiling)
- ``kernels``: C kernels from TVM's ``c`` target and the call sequence of the fused module
- ``codegen`` / ``driver``: ``model.c``, ``weights.c``, ``model.h``, a test ``main.c``, ``Makefile``
- ``cortex_m``: startup, linker script and QEMU board per core (kept apart from the model code)
- ``build``, ``report``, ``bundle``: build and run, the memory report, everything in one call
"""
