"""python -m worldvla.serve policy=CKPT_DIR [protocol=worldvla|openpi|vla-eval] [resize=true] [host=127.0.0.1]
[port=8000] [device=cuda] [policy.recipe.action_mode=continuous] [decode.mode=official]: see server.py and docs/serving.md."""

from __future__ import annotations

import asyncio
import logging
import sys

from worldvla.config import ConfigError, parse_cli
from worldvla.errors import exit_on_input_errors
from worldvla.policy import interface
from worldvla.policy.decode import compile_step_for
from worldvla.policy.seeding import seed_everything

from .server import PolicyServer, ServeConfig


def _config_and_policy(argv: list[str] | None) -> tuple[ServeConfig, object]:
    cfg = parse_cli(ServeConfig, argv, description=__doc__)
    if cfg.policy.path.startswith(("ws://", "wss://")):
        raise ConfigError("policy must be a checkpoint dir or module:factory, not another server")
    seed_everything(cfg.seed)
    policy = interface.load_policy(cfg.policy, cfg.device, compile_step=compile_step_for(cfg.decode, cfg.device),
                                   decode=cfg.decode.mode)
    return cfg, policy


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a bad value or checkpoint: one `error:` line, exit 2 (errors while serving keep their traceback)
    cfg, policy = exit_on_input_errors(_config_and_policy, ValueError)(argv)
    seed_everything(cfg.seed)  # again: torch is imported by now
    server = PolicyServer.from_config(policy, cfg)
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
