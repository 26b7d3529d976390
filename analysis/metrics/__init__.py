"""Per-block redundancy scores: the metric registry, one module per metric family (discovered in
:mod:`analysis.metrics.families`), measured damage and the greedy searches built on it, and the consensus.

May import: every layer below it (foundation, methods, model, capture, profiles, changes, evaluation).
"""
