"""One module per family of per-block metrics; each registers its metrics with :mod:`analysis.registry`.

Modules here must import heavy libraries lazily (inside functions): the registry imports all of them.
"""
