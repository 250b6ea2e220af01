"""Evaluation: LIBERO rollouts (`python -m worldvla.eval.libero`, see libero.py) and world-model metrics.

Rollout modules: config (EvalConfig), protocol (episodes, shards, deviations), rollout (one episode),
rng_chain (simulator randomness per trial), worker / pool / runner (processes and batching), results
(JSON lines, summaries), merge (shards), video, scripted and fake_env (model-free policies and a toy env for tests).
The policy itself, its interface and its remote client live one layer down, in worldvla.policy.
"""
