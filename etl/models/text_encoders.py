"""Text towers on the encoders' device, as plain callables on lists of strings (no Ray needed).

- `TextTower`: the embedder checkpoint's own text tower (CLIP, SigLIP: `get_text_features`),
  sharing the weights the image embedder already loaded. Its L2-normalised text embeddings live
  in the image embeddings' space: their dot product with a sample's embedding is its CLIP score.
- `TextStates`: a text encoder's last hidden states and attention mask at a fixed sequence
  length, what a diffusion model is conditioned on: the CLIP text model (Stable Diffusion 1/2)
  or a T5 encoder (`T5EncoderModel`, as PixArt and SD3 use).

Both tokenize with the checkpoint's own tokenizer (`AutoTokenizer`), padded and truncated to a
fixed length, so the shapes of a batch never depend on its longest caption.
"""

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def _text_config(config: dict) -> dict:
    """A checkpoint's text part: CLIP and SigLIP nest it, T5 and CLIPTextModel are it."""
    return config.get("text_config", config)


def _max_positions(text_config: dict) -> Optional[int]:
    """Tokens the model has positions for (CLIP: 77; T5's relative positions: no bound)."""
    return text_config.get("max_position_embeddings")


def _saved_config(model_path: str) -> dict:
    from etl.models.checkpoints import local_config

    return json.loads((Path(local_config(model_path)) / "config.json").read_text())


def text_states_shape(model_path: str, kind: str, max_length: int) -> tuple[int, int]:
    """(sequence length, width) of the hidden states `TextStates` gives, from the checkpoint's
    config.json alone; a length past the model's positions is refused by name."""
    text = _text_config(_saved_config(model_path))
    positions = _max_positions(text) if kind == "clip" else None
    if positions is not None and max_length > positions:
        raise ValueError(f"models.text_encoder.max_length={max_length} is past the {positions} positions of the "
                         f"text model at {model_path}: set it to at most {positions}")
    return max_length, int(text["d_model"] if kind == "t5" else text["hidden_size"])


class _Tokens:
    """Strings -> input ids and attention masks, on the device: padded to `max_length`, or with
    `to_longest` only to the batch's longest (truncated at `max_length` either way)."""

    def __init__(self, model_path: str, max_length: int, device: str, to_longest: bool = False):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.max_length, self.device = max_length, device
        self.padding = "longest" if to_longest else "max_length"

    def __call__(self, texts: Sequence[str]):
        encoded = self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        return encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)


class TextTower:
    """Strings -> L2-normalised text embeddings (N, D), from a loaded CLIP / SigLIP model."""

    def __init__(self, model, model_path: str, *, device: str, batch_size: int = 64):
        from etl.models.checkpoints import local_checkpoint

        self.model, self.device, self.batch_size = model, device, batch_size
        config = model.config.to_dict()
        positions = _max_positions(_text_config(config)) or 64
        # CLIP's causal text tower pools its end-of-text token, so padding after it changes
        # nothing and a batch pads only to its longest caption (~4x fewer tokens than 77 for
        # captions of ~20); SigLIP pools the last position and was trained padded to its length
        self.tokens = _Tokens(local_checkpoint(model_path), positions, device,
                              to_longest=config.get("model_type") == "clip")

    def encode(self, texts: Sequence[str]):
        """float32 (N, D) on the device."""
        import torch
        import torch.nn.functional as F

        out = []
        for start in range(0, len(texts), self.batch_size):
            ids, mask = self.tokens(texts[start:start + self.batch_size])
            with torch.inference_mode():
                features = self.model.get_text_features(input_ids=ids, attention_mask=mask)
            out.append(F.normalize(getattr(features, "pooler_output", features).float(), dim=-1))
        return torch.cat(out)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts).cpu().numpy()


class TextStates:
    """Strings -> (last hidden states (N, L, W) float32, attention mask (N, L) int8)."""

    def __init__(self, kind: str, model_path: str, max_length: int, *, device: str, batch_size: int = 64,
                 clip_model=None):
        """kind "clip": the text model of `clip_model` (already loaded) or of the checkpoint at
        `model_path`; "t5": the `T5EncoderModel` at `model_path`."""
        from etl.models.checkpoints import local_checkpoint
        from etl.models.encoders import _dtype

        path = local_checkpoint(model_path)
        if kind == "t5":
            from transformers import T5EncoderModel

            self.model = T5EncoderModel.from_pretrained(path, dtype=_dtype(device)).eval().to(device)
        elif kind == "clip":
            if clip_model is None:
                from transformers import AutoModel

                clip_model = AutoModel.from_pretrained(path, dtype=_dtype(device)).eval().to(device)
            self.model = clip_model.text_model
        else:
            raise ValueError(f"text encoder kind {kind!r}: allowed 'clip', 't5'")
        self.width = text_states_shape(model_path, kind, max_length)[1]
        self.tokens = _Tokens(path, max_length, device)
        self.max_length, self.batch_size = max_length, batch_size

    def encode(self, texts: Sequence[str]):
        """(float32 (N, L, W), int8 (N, L)) on the device."""
        import torch

        states, masks = [], []
        for start in range(0, len(texts), self.batch_size):
            ids, mask = self.tokens(texts[start:start + self.batch_size])
            with torch.inference_mode():
                states.append(self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float())
            masks.append(mask.to(torch.int8))
        if not states:
            return (torch.zeros((0, self.max_length, self.width)), torch.zeros((0, self.max_length), dtype=torch.int8))
        return torch.cat(states), torch.cat(masks)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        states, masks = self.encode(texts)
        return states.cpu().numpy(), masks.cpu().numpy()
