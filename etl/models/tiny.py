"""Tiny random-weight checkpoints with the production classes, saved with `save_pretrained`.

Tests, the demo and CI load them through the same `from_pretrained(path)` code as real
checkpoints; nothing is downloaded. `python -m etl.models.tiny DIR` builds them all.
"""

import shutil
import sys
from pathlib import Path

SEED = 0


def _clip_tokenizer():
    """`CLIPTokenizer` (CLIP's class) over a byte-level vocabulary: every byte a token, alone
    and word-final (`</w>`, CLIP's marker), no merges, CLIP's start and end tokens."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet + [a + "</w>" for a in alphabet])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[])


def build_clip(path: Path) -> Path:
    """`CLIPModel` (the class of openai/clip-vit-*) with 2-layer towers and 16-d projections,
    CLIP's 77 text positions, and its tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(SEED)
    tokenizer = _clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=224, patch_size=32),
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_t5(path: Path) -> Path:
    """`T5EncoderModel` (the text encoder of PixArt, SD3) with 2 layers of width 32, and a
    `T5Tokenizer` (T5's class) over printable characters, word-initial and not."""
    import string

    import torch
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.printable if not c.isspace()]
    pieces += [("\u2581" + c, -2.5) for c in string.printable if not c.isspace()]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    torch.manual_seed(SEED)
    T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                   ).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_vae(path: Path) -> Path:
    """diffusers `AutoencoderKL` with Stable Diffusion's layout (4 blocks: 1/8 scale, 4 latent
    channels) and tiny widths."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    blocks = 4
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8, 8, 16, 16), sample_size=224,
    ).eval().save_pretrained(path)
    return path


# Qwen's special tokens; the tiny tokenizer is byte-level BPE (every byte a token) plus these.
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                       "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen's chat layout, reduced to what the captioner sends: system text, user images or a video + text.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# vLLM's CPU attention kernels take head sizes 32, 64, 80, ... 512 only ("Unsupported CPU
# attention configuration: head_dim=16" at the first generate); mrope sections sum to half of it.
VLLM_CPU_HEAD_DIM = 64


def build_qwen3_vl(path: Path) -> Path:
    """`Qwen3VLForConditionalGeneration` + `Qwen3VLProcessor` (Qwen3-VL's patch 16, merge 2),
    2 text layers of width 32 with 64-wide heads (so vLLM runs it on CPU too), 2 vision blocks,
    a byte-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    byte_vocab = {token: i for i, token in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    backend = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(QWEN_SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", padding_side="left")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        size={"shortest_edge": 64 * 32 * 32, "longest_edge": 448 * 448})
    Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                     video_processor=Qwen3VLVideoProcessor(), chat_template=QWEN_CHAT_TEMPLATE).save_pretrained(path)
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=VLLM_CPU_HEAD_DIM, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [16, 8, 8],
                             "mrope_interleaved": True},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(SEED)
    Qwen3VLForConditionalGeneration(config).eval().save_pretrained(path)
    return path


BUILDERS = {"clip": build_clip, "vae": build_vae, "qwen3_vl": build_qwen3_vl, "t5": build_t5}
# Bumped whenever a builder changes, so checkpoints an older builder left on disk are rebuilt.
BUILD_VERSION = "3"
BUILD_STAMP = "tiny_build_version"


def ensure_tiny_models(root) -> dict[str, Path]:
    """Build any tiny checkpoint missing under `root`; return {name: path}."""
    root = Path(root)
    paths = {}
    for name, build in BUILDERS.items():
        path = root / name
        stamp = path / BUILD_STAMP
        if not stamp.exists() or stamp.read_text() != BUILD_VERSION:
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            stamp.write_text(BUILD_VERSION)
        paths[name] = path
    return paths


if __name__ == "__main__":
    for name, path in ensure_tiny_models(sys.argv[1] if len(sys.argv) > 1 else "models/tiny").items():
        print(f"{name}: {path}")
