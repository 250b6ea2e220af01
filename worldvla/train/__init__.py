"""Training: accelerate-launched loop (FSDP / DeepSpeed / one device), typed config, resumable checkpoints.

Entry point: `python -m worldvla.train --config configs/<preset>.yaml key=value ...`, or the launchers
`exps/train_<preset>.sh` (NGPU / ACCELERATE_CONFIG / NNODES from the environment). See README.md here.
"""
