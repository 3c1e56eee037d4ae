"""Logits parity with transformers 4.51.3 on tiny random checkpoints saved by the reference itself."""
import pytest
import torch

import qwenvl
from oracle import InputBuilder, reference_logits

CASES = {
    "text_only": [[23]],
    "one_image": [[5, ("image", (1, 16, 22)), 9]],
    "two_images": [[3, ("image", (1, 8, 20)), 4, ("image", (1, 22, 10)), 6]],
    "video_s0.5": [[4, ("video", (3, 10, 12), 0.5), 7]],
    "video_s1.0": [[4, ("video", (3, 10, 12), 1.0), 7]],
    "video_s9.375": [[4, ("video", (4, 10, 12), 9.375), 7]],
    "interleaved_multiturn": [[6, ("image", (1, 10, 14)), 5, ("video", (2, 8, 10), 0.5), 8, ("image", (1, 12, 8)),
                               4, 12]],
    "batch2_left_padded": [[3, ("image", (1, 12, 16)), 10], [5, ("video", (2, 8, 8), 1.0), 3, ("image", (1, 8, 12)), 4]],
    "batch_mixed_text_row": [[30], [2, ("image", (1, 8, 8)), 4]],
}


def _compare(ours, ref, mask):
    valid = mask.bool()
    return (ours[valid] - ref[valid]).abs().max().item()


@pytest.fixture(scope="module")
def loaded(ref_dir):
    path, hf, cfg = ref_dir
    return qwenvl.load(path, dtype=torch.float32), hf, cfg


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_logits_match_reference(loaded, case):
    vlm, hf, cfg = loaded
    inputs = InputBuilder(cfg, seed=hash(case) % 1000).batch(CASES[case])
    ref = reference_logits(hf, inputs)
    ours = vlm.forward(qwenvl.Batch.from_dict(inputs))
    assert ours.shape == ref.shape
    assert _compare(ours, ref, inputs["attention_mask"]) <= 1e-4


def test_wrong_second_per_grid_ts_is_detected(loaded):
    """Guard that the parity check is sensitive: feeding s=1.0 for a video sampled at s=0.5 must move logits."""
    vlm, hf, cfg = loaded
    inputs = InputBuilder(cfg, seed=3).batch(CASES["video_s0.5"])
    ref = reference_logits(hf, inputs)
    wrong = dict(inputs, second_per_grid_ts=torch.tensor([1.0]))
    ours = vlm.forward(qwenvl.Batch.from_dict(wrong))
    assert _compare(ours, ref, inputs["attention_mask"]) > 1e-2


def test_tied_embeddings_checkpoint(ref_dir_tied):
    path, hf, cfg = ref_dir_tied
    vlm = qwenvl.load(path, dtype="float32")
    assert vlm.model.lm_head.weight is vlm.model.model.embed_tokens.weight
    inputs = InputBuilder(cfg, seed=5).batch(CASES["one_image"])
    assert _compare(vlm.forward(qwenvl.Batch.from_dict(inputs)), reference_logits(hf, inputs),
                    inputs["attention_mask"]) <= 1e-4


# --------------------------------------------------------------------------------------------- bf16
BF16_CASES = ["text_only", "one_image", "two_images", "video_s0.5", "video_s9.375", "interleaved_multiturn",
              "batch2_left_padded"]


@pytest.fixture(scope="module")
def loaded_bf16(ref_dir):
    import copy

    path, hf, cfg = ref_dir
    return qwenvl.load(path, dtype=torch.bfloat16), copy.deepcopy(hf).to(torch.bfloat16), hf, cfg


@pytest.mark.parametrize("case", BF16_CASES)
def test_bf16_logits_agree_with_reference_bf16(loaded_bf16, case):
    """Tolerance: bf16 keeps 8 significant bits (unit roundoff 2^-8 ~ 0.4%), so with logits of magnitude ~5 one
    rounding is ~0.02 and the reference's own bf16 run lands ~0.05 from its fp32 run. Two bf16 implementations
    with different (equally valid) rounding orders cannot be closer than that. We require (1) our bf16 error
    against the fp32 reference to be at most 1.5x the reference bf16 error plus one rounding step at the logit
    scale, i.e. we are as accurate as the reference; (2) our bf16 and the reference bf16 to agree within 2x the
    reference's own error."""
    vlm, hf_bf16, hf_fp32, cfg = loaded_bf16
    inputs = InputBuilder(cfg, seed=hash(case) % 1000).batch(CASES[case])
    m = inputs["attention_mask"].bool()
    truth = reference_logits(hf_fp32, inputs)
    ref = reference_logits(hf_bf16, inputs).float()
    ours = vlm.forward(qwenvl.Batch.from_dict(inputs))
    assert ours.dtype == torch.bfloat16
    ours = ours.float()
    ulp = truth[m].abs().max().item() * 2 ** -8
    ref_err = (ref - truth)[m].abs().max().item()
    our_err = (ours - truth)[m].abs().max().item()
    assert our_err <= 1.5 * ref_err + ulp, (our_err, ref_err)
    assert (ours - ref)[m].abs().max().item() <= 2 * ref_err + ulp


# --------------------------------------------------------------------------------------------- real vision shape
def test_vision_tower_real_3b_shape_8_blocks():
    """The 3B vision tower (hidden 1280, 16 heads, window 112, full attention at 7/15/23/31) cut to 8 blocks on a
    448x644 image: several windows per row, border windows, and one full-attention block."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from qwenvl.config import preset
    from qwenvl.model.vision import VisionTransformer
    from qwenvl.tiny import randomize_

    ours_cfg = preset("3b").vision
    ours_cfg = type(ours_cfg)(**{**ours_cfg.__dict__, "depth": 8})
    hf_cfg = Qwen2_5_VLVisionConfig(depth=8, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                    out_hidden_size=2048, fullatt_block_indexes=[7, 15, 23, 31], window_size=112,
                                    tokens_per_second=2, patch_size=14, temporal_patch_size=2, spatial_merge_size=2)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = Qwen2_5_VisionTransformerPretrainedModel._from_config(hf_cfg).eval()
    randomize_(hf, seed=7, std=0.03)
    ours = VisionTransformer(ours_cfg).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    grid = torch.tensor([[1, 448 // 14, 644 // 14]])
    pix = torch.randn(int(grid.prod()), 1176, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pix, grid_thw=grid)
        out = ours(pix, grid)
    assert out.shape == ref.shape == (32 * 46 // 4, 2048)
    assert (out - ref).abs().max().item() <= 1e-4, (out - ref).abs().max().item()
    from qwenvl.model.packed import pack_model, packing_supported
    if packing_supported(torch.float32):  # the oneDNN-packed path load() uses on CPUs
        pack_model(ours)
        with torch.no_grad():
            out = ours(pix, grid)
        assert (out - ref).abs().max().item() <= 1e-4, (out - ref).abs().max().item()
