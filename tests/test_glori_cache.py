"""Feature cache: keys change with everything the features depend on; builds are reused and resumed."""

import pickle

import numpy as np
import pytest
import torch

from cxrfm.modeling import CheXFoundConfig, CheXFoundModel
from cxrfm.processing import CXRImageProcessor
from cxrfm.training.feature_cache import CachedFeatures, build_feature_cache, feature_cache_key


def test_key_tracks_weights_processor_dataset_and_dtype():
    backbone = CheXFoundModel(CheXFoundConfig.from_preset("tiny"))
    processor = CXRImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    key = feature_cache_key(backbone, 2, processor, "fingerprint-a", "float16")
    backbone.config.name_or_path = "/somewhere/else"  # where a model was loaded from does not matter
    assert feature_cache_key(backbone, 2, processor, "fingerprint-a", "float16") == key

    other_keys = [
        feature_cache_key(backbone, 1, processor, "fingerprint-a", "float16"),
        feature_cache_key(backbone, 2, processor, "fingerprint-b", "float16"),
        feature_cache_key(backbone, 2, processor, "fingerprint-a", "float32"),
        feature_cache_key(backbone, 2, CXRImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                         do_minmax_rescale=False), "fingerprint-a", "float16"),
    ]
    with torch.no_grad():
        backbone.vit.blocks[0].attn.qkv.weight[0, 0] += 1e-3  # one changed weight -> a new cache
    other_keys.append(feature_cache_key(backbone, 2, processor, "fingerprint-a", "float16"))
    assert len({key, *other_keys}) == 6


def test_build_reuse_and_resume(tmp_path):
    images = [np.full((2, 2), float(i), dtype=np.float32) for i in range(7)]
    calls = []

    def preprocess(batch):
        return torch.tensor(np.stack(batch))[:, None]  # (b, 1, 2, 2)

    def extract(pixels):
        calls.append(len(pixels))
        flat = pixels.flatten(1)
        return flat[:, None, :].repeat(1, 3, 1) * torch.arange(1, 4.0)[None, :, None], flat.sum(1, keepdim=True)

    cache, reused = build_feature_cache(tmp_path / "k", images, preprocess, extract, batch_size=2, cache_dtype="float32",
                                        shard_size=3, show_progress=False)
    assert not reused and len(cache) == 7 and sorted(calls) == [1, 1, 1, 2, 2]  # shards of 3, 3, 1 rows in batches of 2
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [
        "meta.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    patch_tokens, cls_tokens = cache[5]
    torch.testing.assert_close(patch_tokens, torch.full((3, 4), 5.0) * torch.arange(1, 4.0)[:, None])
    torch.testing.assert_close(cls_tokens, torch.tensor([20.0]))
    torch.testing.assert_close(pickle.loads(pickle.dumps(cache))[6][1], torch.tensor([24.0]))  # DataLoader workers

    calls.clear()
    again, reused = build_feature_cache(tmp_path / "k", images, preprocess, extract, batch_size=2, shard_size=3,
                                        show_progress=False)
    assert reused and calls == [] and len(again) == 7

    (tmp_path / "k" / "meta.json").unlink()  # an interrupted build: finished shards are kept
    (tmp_path / "k" / "shard-00001.safetensors").unlink()
    _, reused = build_feature_cache(tmp_path / "k", images, preprocess, extract, batch_size=2, cache_dtype="float32",
                                    shard_size=3, show_progress=False)
    assert not reused and sorted(calls) == [1, 2]  # only rows 3-5 recomputed
    with pytest.raises(IndexError, match="outside the cache"):
        CachedFeatures(tmp_path / "k")[7]
    with pytest.raises(FileNotFoundError, match="not a finished feature cache"):
        CachedFeatures(tmp_path)
    with pytest.raises(ValueError, match="cache_dtype must be one of"):
        build_feature_cache(tmp_path / "z", images, preprocess, extract, batch_size=2, cache_dtype="int8")
