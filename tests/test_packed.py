"""oneDNN pre-packed linears (qwenvl.model.packed): same logits, exact unpack, saving unaffected."""
import pytest
import torch

import qwenvl
from qwenvl.model.packed import PackedLinear, is_packed, pack_model, packing_supported, unpack_model

pytestmark = pytest.mark.skipif(not packing_supported(torch.float32), reason="torch built without oneDNN")



def _batch(vlm):
    from PIL import Image
    import numpy as np

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    msgs = [[{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "what is it?"}]}],
            [{"role": "user", "content": "a longer text-only question for the second row"}]]
    return vlm.processor(msgs, max_pixels=28 * 28 * 12)


def test_packed_logits_equal_plain(ref_dir):
    path, _, _ = ref_dir
    plain = qwenvl.load(path, dtype=torch.float32, pack=False)
    packed = qwenvl.load(path, dtype=torch.float32, pack=True)
    assert not is_packed(plain.model) and is_packed(packed.model)
    names = {n for n, m in packed.model.named_modules() if isinstance(m, PackedLinear)}
    assert "model.layers.0.self_attn.qkv_fused" in names and "model.layers.0.mlp.gate_up_fused" in names
    assert "visual.blocks.0.mlp.gate_up_fused" in names and "visual.merger.mlp.0" in names and "lm_head" in names
    b = _batch(plain)
    a, p = plain.forward(b), packed.forward(b)
    m = b.attention_mask.bool()
    assert (a[m] - p[m]).abs().max().item() <= 1e-5 * max(1.0, a[m].abs().max().item())
    # greedy generation is unchanged
    msgs = [{"role": "user", "content": "count to five"}]
    assert plain.generate(msgs, max_new_tokens=12).token_ids == packed.generate(msgs, max_new_tokens=12).token_ids


def test_unpack_restores_weights_exactly(ref_dir):
    path, _, _ = ref_dir
    vlm = qwenvl.load(path, dtype=torch.float32, pack=False)
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    pack_model(vlm.model)
    unpack_model(vlm.model)
    after = vlm.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_save_from_packed_model_round_trips(ref_dir, tmp_path):
    path, _, _ = ref_dir
    vlm = qwenvl.load(path, dtype=torch.float32, pack=True)
    vlm.save(tmp_path / "out")
    assert is_packed(vlm.model)  # packed again after saving
    again = qwenvl.load(tmp_path / "out", dtype=torch.float32, pack=False)
    ref = qwenvl.load(path, dtype=torch.float32, pack=False)
    sa, sb = again.model.state_dict(), ref.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tied_lm_head_stays_plain(ref_dir_tied):
    path, _, _ = ref_dir_tied
    vlm = qwenvl.load(path, dtype=torch.float32, pack=True)
    assert type(vlm.model.lm_head) is torch.nn.Linear
    assert vlm.model.lm_head.weight is vlm.model.model.embed_tokens.weight


def test_pack_true_where_unsupported_is_a_clear_error(ref_dir):
    path, _, _ = ref_dir
    if packing_supported(torch.bfloat16):
        vlm = qwenvl.load(path, dtype=torch.bfloat16, pack=True)
        assert is_packed(vlm.model)
    else:
        with pytest.raises(ValueError, match="pack=False"):
            qwenvl.load(path, dtype=torch.bfloat16, pack=True)
        assert not is_packed(qwenvl.load(path, dtype=torch.bfloat16).model)  # automatic: off
