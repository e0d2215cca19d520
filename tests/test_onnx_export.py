"""ONNX export (`cxrfm export onnx`): onnxruntime equals torch within 1e-4 at two batch sizes and two image sizes,
for the CheXFound pooled and last-n-block features and GLoRI logits + attention maps, on tiny models."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from cxrfm.cli import main
from cxrfm.export_onnx import bicubic_resample_matrix, export_onnx, exportable_pos_embed_for_grid
from cxrfm.modeling import CheXFoundConfig, CheXFoundModel, GLoRIConfig, GLoRIForMultiLabel

# Two batch sizes x two image sizes: the native 32 px (stored position embeddings) and 48 px (interpolated).
SHAPES = [(1, 32), (3, 48)]
LABELS = {0: "Atelectasis", 1: "Cardiomegaly", 2: "Edema"}


def _inputs(batch, side, seed):
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _session(path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _save_backbone(folder, **overrides):
    torch.manual_seed(0)
    CheXFoundModel(CheXFoundConfig.from_preset("tiny", **overrides)).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backbone_folder(tmp_path_factory):
    return _save_backbone(tmp_path_factory.mktemp("chexfound"))


@pytest.fixture(scope="module")
def one_block_folder(tmp_path_factory):
    """One block: export time grows with the graph, and the pooled output needs no more to be checked."""
    return _save_backbone(tmp_path_factory.mktemp("chexfound_1"), num_hidden_layers=1)


@pytest.fixture(scope="module")
def glori_folder(tmp_path_factory):
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("glori")
    # The tiny backbone (2 blocks) keeps the export short; the head reads both blocks.
    config = GLoRIConfig.from_preset(
        "tiny", backbone_config=CheXFoundConfig.from_preset("tiny"), n_last_blocks=2, id2label=LABELS
    )
    GLoRIForMultiLabel(config).eval().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("offset", [0.1, 0.0])
def test_exportable_position_embeddings_equal_the_models(offset):
    vit = CheXFoundModel(CheXFoundConfig.from_preset("tiny", image_size=64, interpolate_offset=offset)).vit
    for grid in [(4, 4), (3, 3), (5, 7), (4, 2), (1, 1), (9, 6)]:
        expected = vit.pos_embed_for_grid(*grid, torch.float32)
        torch.testing.assert_close(exportable_pos_embed_for_grid(vit, *grid, torch.float32), expected,
                                   atol=1e-6, rtol=0)
    # At the native 4x4 grid the stored embeddings are used unresampled, bit for bit.
    assert torch.equal(exportable_pos_embed_for_grid(vit, 4, 4, torch.float32), vit.pos_embed)


def test_bicubic_matrix_rows_sum_to_one_and_hand_value():
    matrix = bicubic_resample_matrix(3, 2, 0.1, torch.zeros(1))
    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(3))
    # Output pixel 0 of 2 -> 3 with scale 3.1/2: source (0 + .5) * 2/3.1 - .5 = -0.17742, floor -1, t = 0.82258;
    # taps -2..1 clamp to 0,0,0,1 with weights w(t+1), w(t), w(1-t), w(2-t) of the A = -0.75 cubic kernel.
    t = 0.5 * 2 / 3.1 - 0.5 + 1
    a = -0.75
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731
    expected = [far(t + 1) + near(t) + near(1 - t), far(2 - t)]
    torch.testing.assert_close(matrix[0], torch.tensor(expected, dtype=torch.float32))


@pytest.mark.slow  # each export is one torch.export + ONNX translation (5-10 s on 2 busy cores)
def test_backbone_pooled_through_the_cli(one_block_folder, tmp_path, capsys):
    path = tmp_path / "pooled.onnx"
    assert main(["export", "onnx", str(one_block_folder), str(path)]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    metadata = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    assert metadata == {"cxrfm_outputs": "pooler_output", "image_size": "32", "patch_size": "16"}

    model = CheXFoundModel.from_pretrained(one_block_folder).eval()
    session = _session(path)
    for seed, (batch, side) in enumerate(SHAPES):
        pixel_values = _inputs(batch, side, seed)
        with torch.no_grad():
            expected = model(pixel_values).pooler_output.numpy()
        (got,) = session.run(None, {"pixel_values": pixel_values.numpy()})
        assert got.shape == (batch, 32)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    # An existing file is refused with a one-line message (exit 2), not overwritten.
    assert main(["export", "onnx", str(one_block_folder), str(path)]) == 2
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err


@pytest.mark.slow
def test_backbone_last_blocks(backbone_folder, tmp_path):
    result = export_onnx(backbone_folder, tmp_path / "last.onnx", outputs="last4", n_last_blocks=2)
    assert result["outputs"] == ["patch_tokens", "cls_tokens"]
    model = CheXFoundModel.from_pretrained(backbone_folder).eval()
    session = _session(result["path"])
    for seed, (batch, side) in enumerate(SHAPES):
        pixel_values = _inputs(batch, side, seed)
        with torch.no_grad():
            layers = model.get_intermediate_layers(pixel_values, n=2)
        expected_patches = torch.cat([patches for patches, _ in layers], dim=-1).numpy()
        expected_cls = torch.cat([cls for _, cls in layers], dim=-1).numpy()
        patches, cls = session.run(None, {"pixel_values": pixel_values.numpy()})
        assert patches.shape == (batch, (side // 16) ** 2, 64) and cls.shape == (batch, 64)
        np.testing.assert_allclose(patches, expected_patches, atol=1e-4, rtol=0)
        np.testing.assert_allclose(cls, expected_cls, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_glori_logits_and_attention(glori_folder, tmp_path):
    result = export_onnx(glori_folder, tmp_path / "glori.onnx")
    assert result["outputs"] == ["logits", "attention_maps"]
    assert max(result["max_abs_diff"].values()) <= 1e-4
    metadata = {entry.key: entry.value for entry in onnx.load(str(result["path"])).metadata_props}
    assert metadata["id2label"] == '{"0": "Atelectasis", "1": "Cardiomegaly", "2": "Edema"}'

    model = GLoRIForMultiLabel.from_pretrained(glori_folder).eval()
    session = _session(result["path"])
    for seed, (batch, side) in enumerate(SHAPES):
        pixel_values = _inputs(batch, side, seed)
        with torch.no_grad():
            expected = model(pixel_values=pixel_values, output_attentions=True)
        logits, attention = session.run(None, {"pixel_values": pixel_values.numpy()})
        assert attention.shape == (batch, 3, side // 16, side // 16)
        np.testing.assert_allclose(logits, expected.logits.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(attention, expected.attention_maps.numpy(), atol=1e-4, rtol=0)


def test_bad_requests_are_named_errors(backbone_folder, tmp_path):
    with pytest.raises(ValueError, match="outputs='logits' needs a GLoRIForMultiLabel folder"):
        export_onnx(backbone_folder, tmp_path / "x.onnx", outputs="logits")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_onnx(tmp_path, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(backbone_folder, tmp_path / "x.bin")
    antialiased = _save_backbone(tmp_path / "antialiased", interpolate_antialias=True)
    with pytest.raises(ValueError, match="interpolate_antialias=True is not supported"):
        export_onnx(antialiased, tmp_path / "x.onnx")
