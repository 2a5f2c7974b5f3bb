"""Reports from a grid run's tidy results: tables, plots, the leaderboard.

Data flows one way: the runner collects one tidy row per cell (`results.py`),
and tables, plots and the leaderboard read only those rows (plus, for the plots
that need per-sample values, the cached artifacts the rows point to).
"""
