"""CPU demo on an embedded default: render a LIBERO frame and run the official token round trip.

Writes `<out>/frame.png`, `<out>/reconstruction.png` and `<out>/sample.json` (the action-model
sample's layout). Uses tiny random tokenizer assets written on the spot in the official formats,
or the real ones with `--tokenizer DIR` (a folder with text_tokenizer.json, vqgan.yaml, vqgan.ckpt).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("worldvla.demo")


def token_round_trip(out: Path, suite: str, task_id: int, resolution: int, tokenizer: Path | None) -> dict:
    from worldvla.data.sequence import SequenceBuilder, action_conversation
    from worldvla.envs.libero import LiberoEnv, format_obs
    from worldvla.testing.fixtures import make_tiny_assets
    from worldvla.tokenizers import ActionTokenizer, ImageTokenizer, TextTokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok_dir = tokenizer or make_tiny_assets(out / "tiny_assets").root / "tokenizer"
    text = TextTokenizer.from_pretrained(tok_dir)
    image = ImageTokenizer.from_files(tok_dir / "vqgan.yaml", tok_dir / "vqgan.ckpt", text.vocab, resolution)

    log.info("rendering %s task %d at %d px", suite, task_id, resolution)
    env = LiberoEnv(suite, task_id, resolution)
    obs = format_obs(env.reset(0))
    env.close()
    Image.fromarray(obs.agentview).save(out / "frame.png")

    codes = image.encode([obs.agentview])
    Image.fromarray(image.decode(codes)[0]).save(out / "reconstruction.png")
    builder = SequenceBuilder(text, image.image_to_tokens, ActionTokenizer())
    actions = np.zeros((5, 7))
    actions[:, 6] = -1.0
    sample = builder.build({"conversations": action_conversation(env.language, 1, 5), "image": [obs.agentview],
                            "action": list(actions)})
    summary = {
        "instruction": env.language,
        "tokens": len(sample),
        "supervised": sum(lab != -100 for lab in sample.labels),
        "spans": [(s.kind, s.start, s.end) for s in sample.spans],
        "image_tokens_round_trip_ok": bool(np.array_equal(
            image.encode([obs.agentview]), codes)),
    }
    (out / "sample.json").write_text(json.dumps(summary, indent=2))
    log.info("wrote %s, %s, %s", out / "frame.png", out / "reconstruction.png", out / "sample.json")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument("--suite", default="libero_goal")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--tokenizer", type=Path, default=None, help="real tokenizer folder (optional)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    print(json.dumps(token_round_trip(args.out, args.suite, args.task, args.resolution, args.tokenizer), indent=2))


if __name__ == "__main__":
    main()
