"""The model: loading (a Hugging Face id, a local folder, a GGUF file), the structure of each decoder family
(blocks, attention, feed-forward, their output projections), hooks on those sites, the modules a change puts
inside a model (factorised matrices, linear blocks), and checkpoint save/load.

May import: the top-level foundation modules (``analysis.errors``, ``cache``, ``texts``, ``jobs``, ``destinations``,
``formatting``, ``plots``) and :mod:`analysis.methods`.
"""
