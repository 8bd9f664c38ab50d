"""Training and evaluation of one trial (`mtbench.engine.trial.run_trial`: build, resume, fit, test, record).

Nothing is imported here: `mtbench.engine.stopping` is read by every CLI call, and the trial pulls in
torch, timm and the models (seconds of start-up).
"""
