"""Block-wise iBOT masks: official counts, shapes, weights, explicit generator, statistics of the official code."""

import numpy as np
import pytest

from cxrfm.training.masking import BlockMaskGenerator, sample_batch_masks


def test_batch_masks_official_rule():
    rng = np.random.default_rng(0)
    batch = sample_batch_masks(8, (14, 14), rng)
    counts = batch.masks.sum(dim=1)
    assert batch.masks.shape == (8, 196)
    assert int((counts > 0).sum()) == 4  # exactly int(8 * 0.5) masked images, the rest empty
    assert batch.mask_indices.tolist() == batch.masks.flatten().nonzero().flatten().tolist()
    # per-image weights 1/#masked; they sum to 1 over each masked image
    assert batch.mask_weights.sum().item() == pytest.approx(4.0)
    probs = np.linspace(0.1, 0.5, 5, dtype=np.float32)
    assert batch.upperbound == sum(int(196 * float(p)) for p in probs[1:])
    assert int(counts.max()) <= int(196 * 0.5)


def test_masks_replay_with_same_generator_and_differ_otherwise():
    first = sample_batch_masks(6, (8, 8), np.random.default_rng(3)).masks
    again = sample_batch_masks(6, (8, 8), np.random.default_rng(3)).masks
    other = sample_batch_masks(6, (8, 8), np.random.default_rng(4)).masks
    assert first.equal(again) and not first.equal(other)


def test_no_masked_image_and_invalid_settings():
    batch = sample_batch_masks(4, (6, 6), np.random.default_rng(0), mask_probability=0.0)
    assert not batch.masks.any() and batch.mask_weights.numel() == 0 and batch.upperbound == 0
    with pytest.raises(ValueError, match="mask_probability"):
        sample_batch_masks(4, (6, 6), np.random.default_rng(0), mask_probability=1.5)
    with pytest.raises(ValueError, match="mask_ratio_min_max"):
        sample_batch_masks(4, (6, 6), np.random.default_rng(0), mask_ratio_min_max=(0.5, 0.1))


def test_rectangles_strictly_smaller_than_grid_and_target_respected():
    generator = BlockMaskGenerator((5, 5))
    rng = np.random.default_rng(1)
    for target in (0, 3, 10, 12):
        mask = generator(target, rng)
        assert mask.sum() <= target
        assert not mask.all(axis=0).any() and not mask.all(axis=1).any()  # no full row or column


def test_statistics_match_official_code():
    # chexfound_dinov2.md §8 (official code, 2,000 draws, 2B = 8, 14x14): 0.148 +- 0.169; masked only 0.297 +- 0.115
    rng = np.random.default_rng(0)
    fractions = np.concatenate([sample_batch_masks(8, (14, 14), rng).masks.float().mean(1).numpy() for _ in range(300)])
    assert fractions.mean() == pytest.approx(0.148, abs=0.01)
    assert fractions[fractions > 0].mean() == pytest.approx(0.297, abs=0.015)
    corner = np.mean([sample_batch_masks(8, (14, 14), rng).masks.reshape(8, 14, 14)[:, 0, 0].float().mean() for _ in range(100)])
    assert corner < 0.06  # corners are rarely covered (official ~0.02 per masked image)
