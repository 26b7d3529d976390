"""Per-layer profiles computed on a workspace and kept in the cache: AVSS per site, intrinsic-dimension
profiles, projections, per-layer persistence and zigzag persistence across layers.

May import: the foundation modules, :mod:`analysis.methods`, :mod:`analysis.model`, :mod:`analysis.capture`.
"""
