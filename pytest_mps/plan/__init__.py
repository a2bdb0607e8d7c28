"""How large a pipeline can go on MPS, from traces on meta tensors (no real memory used).

- :mod:`pytest_mps.plan.trace`: run a whole pipeline on the emulated MPS device with its models traced on
  meta tensors (``audit()`` uses it above 512x512);
- :mod:`pytest_mps.plan.memory`: the peak-memory model (live tensor bytes through the traced run);
- :mod:`pytest_mps.plan.meta_pipeline`: a pipeline built from a folder's configs with meta weights;
- :mod:`pytest_mps.plan.size_plan`: the 2**32-byte limits and memory estimates (``pytest-mps plan``);
- :mod:`pytest_mps.plan.tiers` and :mod:`pytest_mps.plan.advice`: Apple's memory tiers and the advice;
- :mod:`pytest_mps.plan.render`: the plan as text.

Importing this package imports nothing heavy.
"""
