"""ViT-B/32 (timm). Small inputs get 4 px patches: a 32 px patch would cover a whole CIFAR image."""
from __future__ import annotations

import timm
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from bench.errors import BenchError


def build(*, num_classes: int, image_size: int, scale: str, in_chans: int, small_input: bool) -> nn.Module:
    patch = 4 if small_input else 32
    if image_size % patch:
        raise BenchError(f"vit_b32: image_size {image_size} is not a multiple of its {patch} px patch")
    if scale == "paper" and not small_input:
        return timm.create_model("vit_base_patch32_224", pretrained=False, num_classes=num_classes,
                                 img_size=image_size, in_chans=in_chans)
    if scale == "paper":
        return VisionTransformer(img_size=image_size, patch_size=patch, in_chans=in_chans,
                                 num_classes=num_classes, embed_dim=768, depth=12, num_heads=12)
    # Same block design (pre-norm, class token, learned positions), 4 blocks of width 64.
    return VisionTransformer(img_size=image_size, patch_size=patch, in_chans=in_chans,
                             num_classes=num_classes, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)
