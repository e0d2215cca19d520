"""On-disk cache of frozen-backbone features, so a head (GLoRI, linear probe) trains without re-running the backbone.

Layout: `<cache_dir>/<key>/shard-00000.safetensors ... + meta.json`. Each shard holds `patch_tokens (n, N, F)` and
`cls_tokens (n, F)` for a contiguous block of dataset rows (F = n_last_blocks x hidden_size; labels are not cached,
so label subsets and label fractions reuse one cache). Shards are read memory-mapped (`safetensors.safe_open`),
one row slice at a time. `meta.json` is written last: a folder without it is an unfinished build, whose finished
shards (written atomically) are kept and the rest computed on the next run.

The key hashes everything the features depend on: the backbone config, a fingerprint of its weights, the number of
blocks, the image processor's settings, the dataset's fingerprint and the storage dtype. Any change gives a new
folder; a stale cache is never read.

Size: (N + 1) x F values per image, e.g. 1025 x 4096 x 2 bytes = 8.4 MB in float16 for ViT-L at 512 px. That suits
small and medium sets (Shenzhen, Montgomery, JSRT, label-fraction studies); at CXR-LT scale (~250k images, ~2 TB)
recompute features instead (the recipe's `feature_mode="augment"`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
META_FILE = "meta.json"
_VOLATILE_CONFIG_KEYS = {"transformers_version", "architectures", "auto_map", "image_processor_type", "processor_class"}
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def weights_fingerprint(module: torch.nn.Module) -> str:
    """blake2b digest of every tensor of `module.state_dict()` (name, dtype, shape, bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")  # 0-d too
    return digest.hexdigest()


def _stable_settings(settings: dict) -> dict:
    """Drop bookkeeping keys that change with the save location or library version, not with the features."""
    return {
        key: _stable_settings(value) if isinstance(value, dict) else value
        for key, value in settings.items()
        if not str(key).startswith("_") and key not in _VOLATILE_CONFIG_KEYS
    }


def feature_cache_key(
    backbone: torch.nn.Module, n_last_blocks: int, image_processor, dataset_fingerprint: str, cache_dtype: str
) -> str:
    """Hex key of one feature cache: backbone config + weights fingerprint + blocks + processor + dataset + dtype."""
    parts = {
        "format": CACHE_FORMAT_VERSION,
        "backbone_config": _stable_settings(backbone.config.to_dict()),
        "weights": weights_fingerprint(backbone),
        "n_last_blocks": n_last_blocks,
        "image_processor": _stable_settings(image_processor.to_dict()),
        "dataset": dataset_fingerprint,
        "dtype": cache_dtype,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class CachedFeatures(Dataset):
    """Memory-mapped rows of a finished cache: item i = `(patch_tokens (N, F), cls_tokens (F,))`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} is missing: {self.folder} is not a finished feature cache.")
        self.meta = json.loads(meta_path.read_text())
        self.shards = [(start, stop, self.folder / name) for start, stop, name in self.meta["shards"]]
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return self.meta["num_rows"]

    def __getstate__(self):  # open file handles do not pickle (DataLoader workers reopen them)
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} is outside the cache {self.folder} ({len(self)} rows).")
        for shard_index, (start, stop, _) in enumerate(self.shards):
            if start <= index < stop:
                return shard_index, index - start
        raise IndexError(f"row {index} is in no shard of {self.folder}; the meta.json is inconsistent.")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        shard_index, row = self._locate(int(index))
        if shard_index not in self._handles:
            self._handles[shard_index] = safe_open(str(self.shards[shard_index][2]), framework="pt")
        handle = self._handles[shard_index]
        return handle.get_slice("patch_tokens")[row : row + 1][0], handle.get_slice("cls_tokens")[row : row + 1][0]


def build_feature_cache(
    folder: str | Path,
    images: Sequence,
    preprocess: Callable[[list], torch.Tensor],
    extract_features: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    cache_dtype: str = "float16",
    shard_size: int = 1024,
    process_index: int = 0,
    num_processes: int = 1,
    wait_for_everyone: Callable[[], None] = lambda: None,
    show_progress: bool = True,
) -> tuple[CachedFeatures, bool]:
    """Open the cache in `folder`, computing whatever is missing first.

    Args:
        images: row-aligned image sources (paths, bytes, arrays...) that `preprocess` turns into pixel values.
        preprocess: list of image sources -> `(b, C, H, W)` pixel values (the evaluation transform).
        extract_features: pixel values -> `(patch_tokens (b, N, F), cls_tokens (b, F))`, run under no_grad.
        shard_size: rows per shard file; shard i is computed by process `i % num_processes`.
    Returns:
        the cached rows and whether the cache already existed (nothing was computed).
    """
    if cache_dtype not in _DTYPES:
        raise ValueError(f"cache_dtype must be one of {sorted(_DTYPES)}, got {cache_dtype!r}.")
    folder = Path(folder)
    if (folder / META_FILE).is_file():
        logger.info("Reusing feature cache %s", folder)
        return CachedFeatures(folder), True
    folder.mkdir(parents=True, exist_ok=True)
    num_rows = len(images)
    shards = [(start, min(start + shard_size, num_rows), f"shard-{index:05d}.safetensors")
              for index, start in enumerate(range(0, num_rows, shard_size))]
    mine = [shard for index, shard in enumerate(shards) if index % num_processes == process_index]
    todo = [shard for shard in mine if not (folder / shard[2]).is_file()]
    logger.info("Feature cache %s: computing %d of %d shards (%d rows)", folder, len(todo), len(shards), num_rows)
    progress = tqdm(total=sum(stop - start for start, stop, _ in todo), desc="backbone features", unit="img",
                    disable=not show_progress)
    for start, stop, name in todo:
        patch_parts, cls_parts = [], []
        for batch_start in range(start, stop, batch_size):
            batch_stop = min(batch_start + batch_size, stop)
            with torch.no_grad():
                patch_tokens, cls_tokens = extract_features(preprocess([images[i] for i in range(batch_start, batch_stop)]))
            patch_parts.append(patch_tokens.to("cpu", _DTYPES[cache_dtype]))
            cls_parts.append(cls_tokens.to("cpu", _DTYPES[cache_dtype]))
            progress.update(batch_stop - batch_start)
        partial = folder / f"{name}.partial"
        save_file({"patch_tokens": torch.cat(patch_parts).contiguous(), "cls_tokens": torch.cat(cls_parts).contiguous()},
                  str(partial), metadata={"rows": f"{start}-{stop}"})
        os.replace(partial, folder / name)  # atomic: a shard file is either complete or absent
    progress.close()
    wait_for_everyone()
    if process_index == 0:
        meta = {"format": CACHE_FORMAT_VERSION, "num_rows": num_rows, "dtype": cache_dtype, "shards": shards}
        (folder / META_FILE).write_text(json.dumps(meta, indent=1))
    wait_for_everyone()
    return CachedFeatures(folder), False


__all__ = ["CachedFeatures", "build_feature_cache", "feature_cache_key", "weights_fingerprint"]
