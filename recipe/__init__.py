"""tritter.recipe: what a run trains and what it costs, shared by the daemon and the clients.

Pure Python (no torch), so ``tritterctl`` can plan a run without a daemon or a GPU:
``presets`` (model shapes and per-preset training settings), ``budget`` (sizes, per-stage
budgets, the global batch) and ``planner`` (memory and FLOPs per stage: ``tritterctl plan``).  Depends on ``tritter.protocol`` only.
"""
