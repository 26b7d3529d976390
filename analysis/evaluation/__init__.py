"""Judging a model against the original: perplexity, KL and top-1 agreement on held-out text, speed and size,
and downstream multiple-choice tasks through lm-eval.

May import: every layer below it (foundation, methods, model, capture, profiles, changes).
"""
