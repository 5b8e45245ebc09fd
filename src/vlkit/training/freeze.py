"""LiT: locked-image tuning (Zhai et al. 2022) — train the text tower against a frozen image tower."""

from __future__ import annotations

from torch import nn

from vlkit.models.clip import CLIP
from vlkit.models.resnet import ModifiedResNet


def image_tower_groups(model: CLIP) -> list[list[nn.Module]]:
    """The image tower's parameter groups from input to output (as open_clip's `lock`):
    embeddings, each block (ResNet: each stage), and the head with the image projection."""
    vision = model.vision
    if isinstance(vision, ModifiedResNet):
        stem = [vision.conv1, vision.bn1, vision.conv2, vision.bn2, vision.conv3, vision.bn3]
        stages = [[vision.layer1], [vision.layer2], [vision.layer3], [vision.layer4]]
        return [stem, *stages, [vision.attnpool, model.image_projection]]
    embeddings = [vision.patch_embed, vision.norm_pre]
    blocks = [[block] for block in vision.transformer.blocks]
    head = [vision.norm_post, model.image_projection]
    if vision.attention_pool is not None:
        head.append(vision.attention_pool)
    return [embeddings, *blocks, head]


def lock_image_tower(model: CLIP, unlocked_groups: int = 0) -> None:
    """Freezes the image tower and projection except the last `unlocked_groups` groups.

    Learned tokens (class token, positions) belong to the embedding group. Batch-norm statistics
    of frozen ResNet stages keep updating unless the tower is put in eval mode by the caller.
    """
    groups = image_tower_groups(model)
    if not 0 <= unlocked_groups <= len(groups):
        raise ValueError(f"unlocked_groups must be in [0, {len(groups)}], got {unlocked_groups}")
    for param in list(model.vision.parameters()) + list(model.image_projection.parameters()):
        param.requires_grad = False
    for group in groups[len(groups) - unlocked_groups :]:
        for module in group:
            for param in module.parameters():
                param.requires_grad = True
    if unlocked_groups == len(groups):
        for param in model.vision.parameters():
            param.requires_grad = True
