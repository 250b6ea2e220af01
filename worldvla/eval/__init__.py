"""Evaluation: LIBERO rollouts (`python -m worldvla.eval.libero`, see libero.py) and world-model metrics.

Rollout modules: config (EvalConfig), protocol (episodes, shards, deviations), rollout (one episode),
rng_chain (simulator randomness per trial), worker / pool / runner (processes and batching), results
(JSON lines, summaries), merge (shards), video, interface (what a policy must provide), scripted and
fake_env (model-free policies and a toy env for tests). The policy itself: policy.WorldVLAPolicy,
with continuous (RynnVLA-002 action head) actions in continuous.py.
"""
