"""Running many trials: expansion happens in mtbench.config, launching in `launchers`, Optuna studies in `search`.

Nothing is imported here, so that reading a study (`search`, for reports) does not load the training engine.
"""
