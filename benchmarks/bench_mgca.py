"""MGCA benchmark: the batched token-wise path against a per-sample loop of the same equations, and pretraining
steps/s on CPU.

1. CTA + word merge at the paper's shapes (batch 144, 112 text tokens -> 111 word slots, 196 patches, d = 128):
   cxrfm's batched code (`word_slots` + `merge_word_pieces` scatter-adds, `clip_token_weights` with one
   `nanquantile`, `token_alignment_loss` on (B, T, T) similarities) against the official way (a Python loop over
   the batch and its tokens for the merge, `torch.quantile` per sample, cross-entropy on the flattened rows).
   Both must give the same word embeddings, weights and losses to 1e-5; the time ratio is printed (goal >= 5x).
   The official code already batches the cross-attention and the losses, so both sides run the same six
   (B, T, d) x (B, d, T) matmuls (~4.3 GFLOP); their time is printed as the floor that bounds the whole-CTA ratio.
2. Pretraining steps/s of the tiny preset on the phantom set (batch 32, 1 thread), recipe objective included.

    python benchmarks/bench_mgca.py [--repeats 3]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrfm.modeling.mgca import (
    clip_token_weights, cross_attention_parameter_free, merge_word_pieces, token_alignment_loss, word_slots,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the loops the tests check against
from mgca_official_reference import official_aggregate_tokens, official_clip_weights, official_cta_direction  # noqa: E402

BATCH, LENGTH, PATCHES, HIDDEN, DIM = 144, 112, 196, 768, 128


def make_inputs(seed: int = 0):
    """Captions of 20-112 tokens with ~30% continuation pieces; some fill the length (no padding)."""
    rng = np.random.default_rng(seed)
    word_ids = np.full((BATCH, LENGTH), -1)
    attention_mask = np.zeros((BATCH, LENGTH), dtype=np.int64)
    tokens = []
    for b in range(BATCH):
        length = LENGTH if b % 9 == 0 else int(rng.integers(20, LENGTH))
        attention_mask[b, :length] = 1
        row, word = ["[CLS]"], -1
        for position in range(1, length - 1):
            continuation = position > 1 and rng.random() < 0.3
            word += 0 if continuation else 1
            word_ids[b, position] = word
            row.append("##x" if continuation else "w")
        row += ["[SEP]"] + ["[PAD]"] * (LENGTH - length)
        tokens.append(row)
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(BATCH, LENGTH, DIM, generator=generator)
    cls_attention = torch.rand(BATCH, LENGTH, generator=generator) * torch.as_tensor(attention_mask)
    patches = F.normalize(torch.randn(BATCH, PATCHES, DIM, generator=generator), dim=-1)
    patch_attention = torch.rand(BATCH, PATCHES, generator=generator)
    return tokens, torch.as_tensor(word_ids), torch.as_tensor(attention_mask), hidden, cls_attention, patches, patch_attention


def cross_attend(queries, keys, temperature=0.1, key_mask=None):
    """The official parameter-free cross-attention, as `mgca_module.py` writes it (scores divided after the bmm)."""
    scores = torch.bmm(queries, keys.transpose(1, 2)) / temperature
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
    return F.normalize(torch.bmm(scores.softmax(-1), keys), dim=-1)


def library_cross_attend(queries, keys, key_mask=None):
    return F.normalize(cross_attention_parameter_free(queries, keys, 0.1, key_mask)[0], dim=-1)


def batched_prepare(inputs):
    """Word merge and token weights: scatter-adds and one nanquantile per modality."""
    _, word_ids, attention_mask, hidden, cls_attention, patches, patch_attention = inputs
    shifted = torch.cat([cls_attention[:, 1:], cls_attention.new_zeros(BATCH, 1)], dim=1)
    slots = word_slots(word_ids, attention_mask, "sum", keep_special=True, drop_last_word_when_unpadded=True)
    words, word_weights, valid = merge_word_pieces(hidden, shifted, slots, "sum")
    words = F.normalize(words, dim=-1)
    word_weights = clip_token_weights(word_weights, valid, (0.1, 0.9))
    patch_weights = clip_token_weights(patch_attention, torch.ones_like(patch_attention, dtype=torch.bool), (0.1, 0.9))
    return words, word_weights, valid, patch_weights


def batched(inputs):
    patches = inputs[5]
    words, word_weights, valid, patch_weights = batched_prepare(inputs)
    word_loss = token_alignment_loss(words, library_cross_attend(words, patches), word_weights, 0.1, None, False)
    patch_loss = token_alignment_loss(
        patches, library_cross_attend(patches, words, valid), patch_weights, 0.1, None, False
    )
    return words, word_weights, word_loss + patch_loss


def loop_prepare(inputs):
    """The official code's structure: merge per caption token by token, quantiles per sample."""
    tokens, _, _, hidden, cls_attention, _, patch_attention = inputs
    merged = [official_aggregate_tokens(tokens[b], hidden[b], cls_attention[b]) for b in range(BATCH)]
    words = F.normalize(torch.stack([embeds for embeds, _, _ in merged]), dim=-1)
    valid = torch.zeros(BATCH, LENGTH - 1, dtype=torch.bool)
    for b, (_, _, count) in enumerate(merged):
        valid[b, : count] = True
    word_weights = official_clip_weights(torch.stack([weights for _, weights, _ in merged]), nonzero_only=True)
    patch_weights = official_clip_weights(patch_attention, nonzero_only=False)
    return words, word_weights, valid, patch_weights


def per_sample_loop(inputs):
    patches = inputs[5]
    words, word_weights, valid, patch_weights = loop_prepare(inputs)
    word_loss = official_cta_direction(words, cross_attend(words, patches), word_weights, 0.1)
    patch_loss = official_cta_direction(patches, cross_attend(patches, words, key_mask=valid), patch_weights, 0.1)
    return words, word_weights, word_loss + patch_loss


def matmul_floor(inputs):
    """The six batched matmuls of the CTA alone (attention scores and outputs both ways, two similarity maps)."""
    patches = inputs[5]
    words = F.normalize(inputs[3][:, 1:], dim=-1)
    for queries, keys in ((words, patches), (patches, words)):
        scores = torch.bmm(queries, keys.transpose(1, 2))
        attended = torch.bmm(scores, keys)
        torch.bmm(queries, attended.transpose(1, 2))


def best_time(function, inputs, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(inputs)
        times.append(time.perf_counter() - start)
    return min(times), result


def pretraining_steps_per_second(steps: int = 10) -> float:
    from cxrfm.training.pretrain_mgca import (
        ImageReportCollator, MGCAObjective, build_model_and_processor, load_pairs, parse_args,
    )

    args = parse_args(["--config", "training/configs/mgca_tiny.yaml", "--output_dir", "/tmp/bench_mgca"])
    model, processor = build_model_and_processor(args)
    collate = ImageReportCollator(processor)
    data = load_pairs(args)["train"]
    objective = MGCAObjective(model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    batches = [collate([data[i] for i in range(s * 32, s * 32 + 32)]) for s in range(min(steps, len(data) // 32))]
    objective.compute_loss(model, batches[0])["ita"].backward()  # warm-up
    optimizer.zero_grad()
    start = time.perf_counter()
    for batch in batches:
        sum(objective.compute_loss(model, batch).values()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return len(batches) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inputs = make_inputs()
    with torch.no_grad():
        loop_prepare_time, _ = best_time(loop_prepare, inputs, args.repeats)
        batched_prepare_time, _ = best_time(batched_prepare, inputs, args.repeats)
        loop_time, (loop_words, loop_weights, loop_loss) = best_time(per_sample_loop, inputs, args.repeats)
        batched_time, (words, weights, loss) = best_time(batched, inputs, args.repeats)
        floor_time, _ = best_time(matmul_floor, inputs, args.repeats)
    max_difference = max(
        (words - loop_words).abs().max().item(), (weights - loop_weights).abs().max().item(), abs(loss.item() - loop_loss.item())
    )
    print(f"CTA + word merge, batch {BATCH}, {LENGTH - 1} words, {PATCHES} patches, d={DIM}, {args.threads} thread(s)")
    print(f"  word merge + token weights (the looped part): loop {loop_prepare_time * 1000:8.1f} ms, "
          f"batched {batched_prepare_time * 1000:8.1f} ms, speed-up {loop_prepare_time / batched_prepare_time:.1f}x")
    print(f"  whole CTA (+ cross-attention and losses, batched in both): loop {loop_time * 1000:8.1f} ms, "
          f"batched {batched_time * 1000:8.1f} ms, speed-up {loop_time / batched_time:.1f}x")
    print(f"  matmul floor shared by both: {floor_time * 1000:8.1f} ms, so the whole-CTA speed-up cannot exceed "
          f"{loop_time / floor_time:.1f}x")
    print(f"  losses {loop_loss.item():.6f} / {loss.item():.6f}; max |difference| of words, weights, loss = "
          f"{max_difference:.2e} (<= 1e-5: {max_difference <= 1e-5})")
    print(f"Pretraining, tiny preset, phantom, batch 32: {pretraining_steps_per_second():.2f} steps/s")


if __name__ == "__main__":
    main()
