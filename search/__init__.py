"""The sweep: grids as data (`grids`) and the `python -m search.run` command, one module per
phase (options, storage, cluster, plan, run, report), plus GPU checks and resume checks.
"""
