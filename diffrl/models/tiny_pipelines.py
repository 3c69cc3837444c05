"""Tiny random SD3, FLUX and SANA pipelines built offline from small configs, saved as real diffusers directories.

They exercise the same code paths as the released models (pipeline loading, the pipelines' own prompt encoding,
transformer forward, VAE decoding, LoRA targets) in seconds on a CPU. Tokenizers are word-level tokenizers built
locally (`tiny_t2i.build_tokenizer`), since the released ones would need a download. Component sizes follow the
dummy components of diffusers' own pipeline tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = ["a", "photo", "of", "an", "the", "red", "green", "blue", "circle", "square", "triangle", "cat", "dog",
         "sign", "that", "says", "hello", "world", "and", "two", "three", "left", "right", "above", "below"]


def _tokenizer(max_length: int):
    from diffrl.models.tiny_t2i import build_tokenizer

    tok = build_tokenizer(VOCAB)
    tok.model_max_length = max_length
    return tok


def _clip(hidden: int, vocab_size: int, with_projection: bool, max_positions: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=max_positions,
                            projection_dim=hidden, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _t5(d_model: int, vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=2 * d_model, d_kv=d_model // 2,
                                   num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0))


def _kl_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=1, sample_size=32,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def build_tiny_pipeline(family: str, directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny random `family` pipeline ("sd3", "flux" or "sana") and save it to `directory`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    clip_len, vocab_size = 16, len(VOCAB) + 4
    if family == "sd3":
        from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

        pipe = StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4,
                                              num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                              joint_attention_dim=64, caption_projection_dim=16,
                                              pooled_projection_dim=64, pos_embed_max_size=16),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_kl_vae(4),
            text_encoder=_clip(32, vocab_size, True, clip_len), tokenizer=_tokenizer(clip_len),
            text_encoder_2=_clip(32, vocab_size, True, clip_len), tokenizer_2=_tokenizer(clip_len),
            text_encoder_3=_t5(64, vocab_size), tokenizer_3=_tokenizer(64),
        )
    elif family == "flux":
        from diffusers import FluxPipeline, FluxTransformer2DModel

        pipe = FluxPipeline(
            transformer=FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                               attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                               pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]),
            scheduler=FlowMatchEulerDiscreteScheduler(), vae=_kl_vae(4),
            text_encoder=_clip(32, vocab_size, False, clip_len), tokenizer=_tokenizer(clip_len),
            text_encoder_2=_t5(32, vocab_size), tokenizer_2=_tokenizer(64),
        )
    elif family == "sana":
        from diffusers import AutoencoderDC, SanaPipeline, SanaTransformer2DModel
        from transformers import Gemma2Config, Gemma2Model

        vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                            encoder_block_types=("ResBlock", "EfficientViTBlock"),
                            decoder_block_types=("ResBlock", "EfficientViTBlock"),
                            encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                            encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                            encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                            downsample_block_type="conv", upsample_block_type="interpolate",
                            decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)
        gemma = Gemma2Model(Gemma2Config(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, head_dim=8,
                                         num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1,
                                         max_position_embeddings=128, pad_token_id=0, bos_token_id=2,
                                         eos_token_id=3))
        pipe = SanaPipeline(
            transformer=SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                               num_attention_heads=2, attention_head_dim=4,
                                               num_cross_attention_heads=2, cross_attention_head_dim=4,
                                               cross_attention_dim=8, caption_channels=16, sample_size=16),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=gemma,
            tokenizer=_tokenizer(64),
        )
    else:
        raise ValueError(f"unknown family {family!r}; allowed: sd3, flux, sana")
    directory = Path(directory)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory
