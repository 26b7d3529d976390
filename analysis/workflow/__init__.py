"""What records and reproduces a run: recipe files, headless runs, the HTML report, the preflight checks.

May import: every layer below it (foundation … search).
"""
