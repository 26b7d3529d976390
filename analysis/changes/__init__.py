"""Every change LayerScope makes to a model, one module per kind (remove blocks, skip halves, low rank,
linear replacement, ReplaceMe, healing), the table of change kinds (:mod:`analysis.changes.variant`, which
imports the kinds; the kinds import only :mod:`analysis.changes.base`), and export.

May import: the foundation modules, :mod:`analysis.methods`, :mod:`analysis.model`, :mod:`analysis.capture`,
:mod:`analysis.profiles`.
"""
