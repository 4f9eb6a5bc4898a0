"""VGG-11 with batch norm (timm's VGG), with the CIFAR head for small inputs."""
from __future__ import annotations

import timm
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models.vgg import VGG

# timm's VGG-11 layout; "M" is a 2x2 max pool.
VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
# Same eight 3x3 conv + BN layers at one eighth of the width, with four pools so a 16 px
# digit ends at 1x1 like a 32 px CIFAR image does in the full network.
VGG11_TINY = [8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64]


def build(*, num_classes: int, image_size: int, scale: str, in_chans: int, small_input: bool) -> nn.Module:
    if scale == "paper" and not small_input:
        return timm.create_model("vgg11_bn", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    cfg = VGG11 if scale == "paper" else VGG11_TINY
    # mlp_ratio shrinks the 4096-wide 7x7 ImageNet head timm builds (it is replaced below) so
    # that building a CIFAR VGG does not allocate and initialise 100 M throw-away weights.
    model = VGG(cfg, num_classes=num_classes, in_chans=in_chans, norm_layer=nn.BatchNorm2d,
                mlp_ratio=1 / 4096)
    # The CIFAR VGG (as in the CIFAR distillation literature): global pool + one linear layer.
    model.pre_logits = nn.Identity()
    model.head = ClassifierHead(model.num_features, num_classes, pool_type="avg")
    model.head_hidden_size = model.num_features
    return model
