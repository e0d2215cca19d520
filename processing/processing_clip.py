"""`CXRCLIPProcessor`: the chest X-ray image processor and a text tokenizer in one object, saved and loaded with
`AutoProcessor` (as `CLIPProcessor` is for CLIP). Report text handling (sections, sentence sampling) happens before,
in the training collator; this class only tokenises.

This file is copied next to saved models as remote code: it imports only transformers and its sibling
`image_processing_cxr.py`.
"""

from transformers.processing_utils import ProcessorMixin

from .image_processing_cxr import CXRImageProcessor


class CXRCLIPProcessor(ProcessorMixin):
    """Wraps a [`CXRImageProcessor`] and a tokenizer (CLIP's BPE, BERT's WordPiece, ...).

    `processor(images=..., text=..., return_tensors="pt")` returns `pixel_values` and `input_ids` /
    `attention_mask` (texts padded to the longest and truncated at the tokenizer's `model_max_length`, 77 for CLIP,
    unless overridden), ready for `RelaxedCLIPModel`.

    Args:
        image_processor ([`CXRImageProcessor`]): images -> `pixel_values`.
        tokenizer ([`PreTrainedTokenizerBase`]): texts -> `input_ids`, `attention_mask`.
    """

    # Lowest-priority tokenizer defaults (call-time kwargs override them): reports are longer than CLIP's context.
    text_kwargs = {"padding": True, "truncation": True}

    # No isinstance check on the image processor: loaded as remote code, AutoImageProcessor and this module may hold
    # two copies of the CXRImageProcessor class. ProcessorMixin checks the base classes.
    def __init__(self, image_processor: CXRImageProcessor | None = None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)


__all__ = ["CXRCLIPProcessor"]
