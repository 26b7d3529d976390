"""Multiple-choice tasks defined in the repository, in lm-eval's YAML format, with their data beside them.

Every sub-folder holds one task: ``<name>.yaml`` (an lm-eval task config whose ``data_files`` are relative to
the YAML) and its data. :mod:`analysis.evaluation.downstream` finds them, resolves the paths and runs them through lm-eval.
"""
