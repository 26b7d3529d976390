"""Choosing what to cut, measured: the leaderboard of selection rules (each metric's suggestion, consensus,
greedy search, ReplaceMe, random draws) evaluated on held-out text.

May import: every layer below it (foundation … metrics).
"""
