"""python -m worldvla.serve policy=CKPT_DIR [protocol=worldvla|openpi|vla-eval] [resize=true] [host=127.0.0.1]
[port=8000] [device=cuda] [action_mode=continuous] [decode.mode=official]: see server.py and docs/serving.md."""

from __future__ import annotations

import asyncio
import logging
import sys

from worldvla.config import ConfigError, parse_cli
from worldvla.policy import interface
from worldvla.policy.decode import compile_step_for
from worldvla.policy.seeding import seed_everything

from .server import PolicyServer, ServeConfig


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_cli(ServeConfig, argv, description=__doc__)
    except (ValueError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cfg.policy.startswith(("ws://", "wss://")):
        print("error: policy must be a checkpoint dir or module:factory, not another server", file=sys.stderr)
        return 2
    seed_everything(cfg.seed)
    try:
        policy = interface.load_policy(cfg.policy, cfg.device, cfg.action_mode, cfg.tokenizer, cfg.policy_settings,
                             compile_step=compile_step_for(cfg.decode, cfg.device), decode=cfg.decode.mode)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seed_everything(cfg.seed)  # again: torch is imported by now
    server = PolicyServer.from_config(policy, cfg)
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
