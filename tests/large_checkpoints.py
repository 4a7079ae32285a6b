"""Checkpoints shaped like production ones without their bytes: the tiny model's real config
with production sizes, and sparse weight files (their sizes, not their disk)."""

import json
from pathlib import Path

QWEN_8B_WEIGHTS = 17_500_000_000
QWEN_8B_TEXT = {"num_hidden_layers": 36, "num_key_value_heads": 8, "head_dim": 128}


def qwen3_vl_8b_like(tiny_qwen: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = json.loads((tiny_qwen / "config.json").read_text())
    config["text_config"].update(QWEN_8B_TEXT)
    (directory / "config.json").write_text(json.dumps(config))
    for i in range(4):
        with open(directory / f"model-0000{i + 1}-of-00004.safetensors", "wb") as handle:
            handle.truncate(QWEN_8B_WEIGHTS // 4)
    return directory
