"""Streaming: lazy IterableDatasets that shard across nodes/workers and iterate in flat memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from datasets.distributed import split_dataset_by_node
import pytest
import test_loaders_helpers as fixtures
from test_loaders_helpers import make_chexpert, make_mimic, make_vindr, rss_mb, write_png

import cxrfm.processing.datasets as loaders
from cxrfm.processing.datasets import CXR_LT_40, VINDR_28, get_label_names, load_chexpert, load_mimic_cxr, load_plco, load_vindr

# (loader, fixture writer, loader kwargs) for every collection.
_EVERY_LOADER = {
    "chexpert": (lambda tmp: fixtures.make_chexpert(tmp), {}),
    "mimic_cxr": (lambda tmp: fixtures.make_mimic(tmp)[0], {}),
    "cxr_lt": (lambda tmp: fixtures.make_cxr_lt(tmp, fixtures.make_mimic(tmp)[0], CXR_LT_40),
               {"image_root_from": "mimic-cxr-jpg"}),
    "nih": (lambda tmp: fixtures.make_nih(tmp), {"validation_fraction": 0.3}),
    "padchest": (lambda tmp: fixtures.make_padchest(tmp), {"validation_fraction": 0.5}),
    "vindr": (lambda tmp: fixtures.make_vindr(tmp, VINDR_28), {"with_masks": True}),
    "openi": (lambda tmp: fixtures.make_openi(tmp), {}),
    "shenzhen": (lambda tmp: fixtures.make_shenzhen(tmp), {}),
    "montgomery": (lambda tmp: fixtures.make_montgomery(tmp), {}),
    "jsrt": (lambda tmp: fixtures.make_jsrt(tmp), {}),
    "rsna": (lambda tmp: fixtures.make_rsna(tmp), {"with_masks": True}),
    "siim": (lambda tmp: fixtures.make_siim(tmp), {"with_masks": True, "mask_size": 4}),
    "covidx": (lambda tmp: fixtures.make_covidx(tmp), {}),
    "plco": (lambda tmp: fixtures.make_plco(tmp), {}),
}


@pytest.mark.parametrize("name", sorted(_EVERY_LOADER))
def test_every_loader_streams_the_same_rows_and_splits_by_node(name, tmp_path):
    make, kwargs = _EVERY_LOADER[name]
    root = make(tmp_path)
    kwargs = dict(kwargs)
    if kwargs.pop("image_root_from", None):
        kwargs["image_root"] = tmp_path / "mimic-cxr-jpg"
    load = getattr(loaders, f"load_{name}")
    eager = load(root, cache_dir=str(tmp_path / "cache"), **kwargs)
    lazy = load(root, streaming=True, num_shards=2, **kwargs)
    assert list(lazy) == list(eager) and get_label_names(lazy) == get_label_names(eager)
    for split in eager:
        assert list(lazy[split].features) == list(eager[split].features)
        expected = sorted(eager[split]["image_path"][:])
        parts = [_ids(split_dataset_by_node(lazy[split], rank=rank, world_size=2)) for rank in range(2)]
        assert sorted(parts[0] + parts[1]) == expected and set(parts[0]).isdisjoint(parts[1])


def _ids(dataset):
    return sorted(row["image_path"] for row in dataset)


def test_streaming_matches_map_style_and_keeps_label_names(tmp_path):
    root, reports = make_mimic(tmp_path)
    eager = load_mimic_cxr(root, reports_root=reports, cache_dir=str(tmp_path / "cache"))
    lazy = load_mimic_cxr(root, reports_root=reports, streaming=True)
    assert get_label_names(lazy) == get_label_names(eager)
    for split in eager:
        eager_rows = {row["image_path"]: row for row in eager[split]}
        lazy_rows = {row["image_path"]: row for row in lazy[split]}
        assert eager_rows.keys() == lazy_rows.keys()
        for path, row in eager_rows.items():
            assert row["findings"] == lazy_rows[path]["findings"] and row["impression"] == lazy_rows[path]["impression"]
            np.testing.assert_array_equal(np.array(row["labels"], dtype=np.float32),
                                          np.array(lazy_rows[path]["labels"], dtype=np.float32))
    vindr = load_vindr(make_vindr(tmp_path, VINDR_28), splits=("test",), streaming=True)
    assert next(iter(vindr["test"]))["image"].mode == "I;16"  # DICOM decoded lazily in streaming too


def test_streaming_skips_and_counts_while_iterating(tmp_path):
    root = make_chexpert(tmp_path)
    (root / "train/patient00003/study2/view1_frontal.jpg").unlink()
    lazy = load_chexpert(root, streaming=True)
    assert lazy.skipped.count == 0  # nothing checked before iteration
    assert len(list(lazy["train"])) == 3 and lazy.skipped.count == 1


def test_split_dataset_by_node_partitions_rows(tmp_path):
    root = make_chexpert(tmp_path)
    for shards, world_size in ((4, 2), (4, 3)):  # by shard; by example (3 does not divide 4)
        lazy = load_chexpert(root, streaming=True, num_shards=shards)["train"]
        assert lazy.num_shards == 4
        parts = [_ids(split_dataset_by_node(lazy, rank=rank, world_size=world_size)) for rank in range(world_size)]
        assert sorted(sum(parts, [])) == _ids(lazy)
        assert all(set(a).isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1:])


def test_dataloader_workers_read_each_row_once(tmp_path):
    root = make_chexpert(tmp_path)
    lazy = load_chexpert(root, streaming=True, num_shards=4)["train"]
    loader = torch.utils.data.DataLoader(lazy, batch_size=2, num_workers=2, collate_fn=lambda rows: [r["image_path"] for r in rows])
    paths = sorted(path for batch in loader for path in batch)
    assert paths == _ids(lazy)


def test_100k_streamed_rows_in_flat_memory(tmp_path):
    """100,000 PLCO-format rows (over 100 small PNGs) streamed: RSS must not grow.

    Every row is checked (file exists) and its labels and survival columns built; image decoding is
    switched off to keep the test fast (decoding in streaming mode is covered above).
    """
    for index in range(100):
        write_png(tmp_path / "plco" / f"img_{index}.png", size=4)
    rows = np.arange(100_000)
    pd.DataFrame({
        "image_file_name": [f"img_{index % 100}" for index in rows], "plco_id": rows,
        "mortality_exitdays": 3652.5, "is_dead": rows % 2, "is_dead_cvd": (rows % 4 == 0).astype(int),
    }).to_csv(tmp_path / "plco" / "plco.csv", index=False)
    stream = load_plco(tmp_path / "plco", fractions=(0.0, 0.0, 1.0), streaming=True, num_shards=8)["test"].decode(False)
    count, deaths, start = 0, 0.0, None
    for row in stream:
        count += 1
        deaths += row["labels"][0]
        if count == 5_000:
            start = rss_mb()
    growth = rss_mb() - start
    assert count == 100_000 and deaths == 50_000 and row["survival_time"] == 10.0
    assert growth < 25, f"RSS grew by {growth:.1f} MB while streaming 95k rows"
