"""Pure mathematics on arrays and tensors: linearity, persistence, zigzag persistence, intrinsic dimension,
AVSS accumulation, block influence and angular distance, low-rank factorisations, least squares, projections,
point clouds. Nothing here loads a model or touches the cache.

May import: the top-level foundation modules only (``analysis.errors``, ``analysis.jobs``, ``analysis.formatting``).
"""
