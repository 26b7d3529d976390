"""What every view computes on: a workspace (one model, one calibration text and its windows), the captured
hidden states, the calibration statistics of linear inputs and block moments, and the estimates shown before
a capture.

May import: the foundation modules, :mod:`analysis.methods`, :mod:`analysis.model`.
"""
