"""Word-to-patch correspondence maps from MGCA's CTA cross-attention (the paper's Fig. 3), saved as PNG overlays.

Not part of a saved model folder (the modeling module does not import it): the drawing goes through the installed
`cxrfm.visualization.save_attention_overlays`, one panel per word titled with its token weight w.
"""

from pathlib import Path

import torch

from .modeling_mgca import MGCAModel, word_slots


@torch.no_grad()
def word_patch_correspondence(model: MGCAModel, processor, image, report: str) -> list[dict]:
    """One dict per word of `report`: `{"label": word, "score": its CTA weight w, "attention_map": (h, w) grid}`,
    the word's cross-attention over the patches (Eq. 4, word -> image direction), for a ViT image encoder."""
    if not model.config.is_vit:
        raise ValueError("word_patch_correspondence needs a ViT image encoder (patch grid); this MGCA model is a ResNet.")
    inputs = processor(images=[image], text=[report])
    model.eval()
    output = model(**inputs, return_loss=False)
    config = model.config
    slots = word_slots(
        inputs["word_ids"], inputs["attention_mask"], config.word_piece_merge, not config.mask_special_tokens,
        config.drop_last_word_when_unpadded,
    )[0]
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    words: dict[int, str] = {}
    for token, slot in zip(tokens, slots.tolist()):
        if 1 <= slot < len(tokens):  # slot 0 is [CLS], slot L discarded
            words[slot] = words.get(slot, "") + (token[2:] if token.startswith("##") else token)
    side = int(round(output.word_to_patch_attention.shape[-1] ** 0.5))
    maps = output.word_to_patch_attention[0].reshape(-1, side, side)
    return [
        {"label": word, "score": float(output.word_weights[0, slot - 1]), "attention_map": maps[slot - 1].numpy()}
        for slot, word in sorted(words.items())
    ]


def save_word_patch_overlays(model: MGCAModel, processor, image, report: str, path: str | Path, columns: int = 4) -> Path:
    """PNG with one overlay panel per word of `report` on `image` (see `word_patch_correspondence`). Each map is
    min-max scaled: a word's softmax over the patches is close to uniform, and scaling by its maximum alone would
    tint the whole image."""
    from cxrfm.visualization import save_attention_overlays

    pixel_values = processor.image_processor([image], return_tensors="pt")["pixel_values"][0]
    maps = word_patch_correspondence(model, processor, image, report)
    return save_attention_overlays(pixel_values, maps, path, columns=columns, scale="minmax")


__all__ = ["save_word_patch_overlays", "word_patch_correspondence"]
