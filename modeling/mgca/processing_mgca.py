"""`MGCAProcessor`: an image processor and a fast BERT tokenizer in one object, saved and loaded with
`AutoProcessor`. Besides `pixel_values`, `input_ids` and `attention_mask` it returns `word_ids`, the fast
tokenizer's word index per token (-1 for special tokens and padding), which `MGCAModel` uses to merge word pieces
with index operations.
"""

import re

import torch
from transformers import AutoProcessor
from transformers.processing_utils import ProcessorMixin

from .configuration_mgca import MGCAConfig

_BULLET = re.compile(r"[0-9]+\.")
_WORD = re.compile(r"\w+")


def mgca_clean_report(text: str) -> str:
    """The official caption cleaning (`mgca/datasets/pretrain_dataset.py`): newlines to spaces, sentences split on
    numbered bullets and on ".", each lower-cased and reduced to its ASCII `\\w+` tokens, sentences of one token or
    fewer dropped, the rest joined with spaces (so no punctuation reaches the tokenizer)."""
    sentences = []
    for chunk in _BULLET.split(text.replace("\n", " ")):
        for sentence in chunk.split("."):
            tokens = [t for t in _WORD.findall(sentence.lower()) if t.isascii()]
            if len(tokens) > 1:
                sentences.append(" ".join(tokens))
    return " ".join(sentences)


class MGCAProcessor(ProcessorMixin):
    """Wraps an image processor (e.g. `CXRImageProcessor`) and a fast BERT-family tokenizer.

    `processor(images=..., text=..., return_tensors="pt")` returns `pixel_values`, `input_ids`, `attention_mask`
    and `word_ids`. Texts are padded to `max_length` (official: 112) and truncated.

    Args:
        image_processor: images -> `pixel_values`.
        tokenizer: a fast tokenizer (word ids need one).
        clean_text (`bool`, defaults to `False`): apply `mgca_clean_report` first, as the official pre-training.
        max_length (`int`, defaults to 112): padded and truncated text length.
    """

    def __init__(self, image_processor=None, tokenizer=None, clean_text: bool = False, max_length: int = 112, **kwargs):
        self.clean_text = clean_text
        self.max_length = max_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs):
        if images is None and text is None:
            raise ValueError("MGCAProcessor needs images, text or both.")
        output = {}
        if images is not None:
            output.update(self.image_processor(images, return_tensors=return_tensors))
        if text is not None:
            if not getattr(self.tokenizer, "is_fast", False):
                raise TypeError(
                    f"MGCAProcessor needs a fast tokenizer for word ids, got {type(self.tokenizer).__name__}; load it "
                    "with AutoTokenizer.from_pretrained(..., use_fast=True)."
                )
            texts = [text] if isinstance(text, str) else list(text)
            if self.clean_text:
                texts = [mgca_clean_report(t) for t in texts]
            encoding = self.tokenizer(
                texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt", **kwargs
            )
            word_ids = [[-1 if w is None else w for w in encoding.word_ids(i)] for i in range(len(texts))]
            output.update(encoding)
            output["word_ids"] = torch.tensor(word_ids, dtype=torch.long)
        return output


# Hub route: save_pretrained copies this module and writes auto_map.AutoProcessor.
MGCAProcessor.register_for_auto_class()
# Library route: a saved MGCA model folder resolves AutoProcessor to this class when cxrfm is installed.
if __name__.split(".")[0] == "cxrfm":
    AutoProcessor.register(MGCAConfig, MGCAProcessor, exist_ok=True)

__all__ = ["MGCAProcessor", "mgca_clean_report"]
