"""One module per family of per-block metrics; each registers its metrics with :mod:`analysis.metrics.base`, and
:mod:`analysis.metrics.registry` lists the family in its table (``FAMILIES``).

Modules here import heavy libraries lazily (inside functions): the registry imports all of them at start-up.
"""
