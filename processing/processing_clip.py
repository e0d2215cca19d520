"""`CXRCLIPProcessor`: the chest X-ray image processor and a text tokenizer in one object, saved and loaded with
`AutoProcessor` (as `CLIPProcessor` is for CLIP). Report text handling (sections, sentence sampling) happens before,
in the training collator; this class only tokenises.

Images reach `CXRImageProcessor` unchanged (its `fetch_images` keeps paths, bytes and DICOM for its own
full-precision reader). This file is copied next to saved models as remote code (`custom_object_save` copies it and
its sibling `image_processing_cxr.py`): it imports only transformers and that sibling.
"""

from transformers import AutoProcessor
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


# Hub route: save_pretrained copies this file (and image_processing_cxr.py) and writes auto_map.AutoProcessor.
CXRCLIPProcessor.register_for_auto_class("AutoProcessor")
# Library route: AutoProcessor.from_pretrained(folder) looks the saved `processor_class` name up among registered
# processors, so the key is the class name (the processor serves any dual encoder, no single config class owns it).
# Only the installed package registers: a remote-code copy must not claim the name.
if __name__.split(".")[0] == "cxrfm":
    AutoProcessor.register("CXRCLIPProcessor", CXRCLIPProcessor, exist_ok=True)

__all__ = ["CXRCLIPProcessor"]
