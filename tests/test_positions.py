"""Position maths: hand-computed tables from reference.md and random cases against the oracle's get_rope_index."""
import random

import pytest
import torch

from qwenvl.model import positions

IDS = dict(image_token_id=12, video_token_id=13, vision_start_token_id=10)


def test_worked_image_example():
    """reference.md §6.5: [A, B, VS, 6xIMG, VE, C] for a 56x84 image (grid 1x4x6)."""
    ids = torch.tensor([[1, 2, 10] + [12] * 6 + [11, 3]])
    pos, delta = positions.get_rope_index(ids, image_grid_thw=[[1, 4, 6]], **IDS)
    t, h, w = pos[:, 0].tolist()
    assert t == [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7]
    assert h == [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7]
    assert w == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7]
    assert delta.tolist() == [[-3]]


def test_video_temporal_ids_use_absolute_time():
    """s = 9.375 s per temporal patch (1 h video at 768 frames): t ids trunc(18.75 k) = 0, 18, 37, 56, 75, 93."""
    grid = [6, 2, 2]
    ids = torch.tensor([[10] + [13] * 6 + [11]])
    pos, _ = positions.get_rope_index(ids, video_grid_thw=[grid], second_per_grid_ts=[9.375], **IDS)
    t = pos[0, 0, 1:7].tolist()
    assert [x - 1 for x in t] == [0, 18, 37, 56, 75, 93]
    # next text continues after the largest temporal id
    assert pos[0, 0, 7].item() == 1 + 93 + 1


def test_frame_index_ablation_ignores_the_sampling_rate():
    """time_positions: frame_index (the Qwen2-VL scheme, issue 7's claim test): t ids are 0..t-1 for any s;
    images and text are unchanged."""
    grid = [6, 2, 2]
    ids = torch.tensor([[10] + [13] * 6 + [11] + [10] + [12] * 4 + [11]])
    for s in (0.5, 1.0, 9.375):
        pos, _ = positions.get_rope_index(ids, image_grid_thw=[[1, 4, 4]], video_grid_thw=[grid],
                                          second_per_grid_ts=[s], frame_index=True, **IDS)
        assert [x - 1 for x in pos[0, 0, 1:7].tolist()] == [0, 1, 2, 3, 4, 5]
        assert pos[0, 0, 7].item() == 1 + 5 + 1
    ref, _ = positions.get_rope_index(ids, image_grid_thw=[[1, 4, 4]], video_grid_thw=[grid],
                                      second_per_grid_ts=[0.5], **IDS)
    assert torch.equal(pos[:, :, 8:], ref[:, :, 8:] - ref[0, 0, 7] + pos[0, 0, 7])  # image block: same shape


def test_text_only_with_left_padding():
    ids = torch.tensor([[0, 0, 5, 6, 7], [5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos, delta = positions.get_rope_index(ids, mask, **IDS)
    assert pos[0, 0].tolist() == [1, 1, 0, 1, 2]
    assert pos[0, 1].tolist() == [0, 1, 2, 3, 4]
    assert delta.tolist() == [[-2], [0]]


def test_window_index_matches_worked_example():
    """reference.md §5.3: lh=39, lw=69 merged tokens -> 10 x 18 = 180 windows, border windows smaller."""
    idx, cu = positions.window_index([[1, 78, 138]])
    assert len(cu) - 1 == 180
    lens = (cu[1:] - cu[:-1]).tolist()
    assert sum(lens) == 78 * 138
    assert lens[0] == 64 and lens[17] == 4 * 1 * 4  # last column: 69 mod 4 = 1 merged token wide, 4 patches each
    assert sorted(idx.tolist()) == list(range(39 * 69))


def test_full_cu_seqlens_per_temporal_group():
    cu = positions.full_cu_seqlens([[2, 4, 6], [1, 8, 8]])
    assert cu.tolist() == [0, 24, 48, 112]


def _random_case(rng: random.Random):
    rows, images, videos, spg = [], [], [], []
    for _ in range(rng.randint(1, 3)):
        ids = []
        for _ in range(rng.randint(0, 3)):
            ids += [rng.randrange(20, 90) for _ in range(rng.randint(1, 6))]
            kind = rng.choice(["image", "video"])
            t = 1 if kind == "image" else rng.randint(1, 5)
            grid = [t, 2 * rng.randint(1, 6), 2 * rng.randint(1, 6)]
            ids += [10] + [12 if kind == "image" else 13] * (t * grid[1] * grid[2] // 4) + [11]
            if kind == "image":
                images.append(grid)
            else:
                videos.append(grid)
                spg.append(2.0 / rng.choice([0.5, 1.0, 2.0, 3.7, 4.0, 0.2133, 2.5, 7.0]))
        ids += [rng.randrange(20, 90) for _ in range(rng.randint(1, 5))]
        rows.append(ids)
    T = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return input_ids, mask, images, videos, spg


@pytest.mark.parametrize("seed", range(40))
def test_rope_index_matches_oracle(seed):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(vision_config=dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=16,
                                              out_hidden_size=16, tokens_per_second=2),
                           hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           intermediate_size=16, vocab_size=100, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                           **IDS)
    ref_fn = Qwen2_5_VLForConditionalGeneration.get_rope_index

    class Holder:
        config = cfg

    input_ids, mask, images, videos, spg = _random_case(random.Random(seed))
    ig = torch.tensor(images) if images else None
    vg = torch.tensor(videos) if videos else None
    ref_pos, ref_delta = ref_fn(Holder(), input_ids, ig, vg, spg or None, mask)
    pos, delta = positions.get_rope_index(input_ids, mask, ig, vg, spg or None, **IDS)
    assert torch.equal(pos, ref_pos)
    assert torch.equal(delta, ref_delta.view(-1, 1))


def test_varlen_kernel_contract_matches_the_sdpa_path():
    """The flash-attn varlen call (one kernel over all windows, cu_seqlens int32 + max length) gives the same
    result as the per-group SDPA path. flash-attn itself needs CUDA; a reference varlen function with its exact
    signature stands in here, so what is checked is our boundaries, lengths and layout."""
    import torch.nn.functional as F

    from qwenvl.model.vision import SegmentPlan, flash_varlen, segment_attention

    def varlen(q, k, v, cu_q, cu_k, max_q, max_k):
        assert cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k) and max_q == max_k
        assert max_q == int((cu_q[1:] - cu_q[:-1]).max())
        outs = []
        for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            o = F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)))
            outs.append(o.transpose(0, 1))
        return torch.cat(outs)

    grid = torch.tensor([[1, 20, 28], [2, 8, 12]])
    _, cu = positions.window_index(grid, 2, 112, 14)
    plan = SegmentPlan.from_cu_seqlens(cu)
    n = int(cu[-1])
    q, k, v = (torch.randn(n, 4, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    want = segment_attention(q, k, v, plan)
    got = segment_attention(q, k, v, plan, flash=varlen)
    assert torch.allclose(got, want, atol=1e-6)
    assert flash_varlen(q) is None  # CPU / fp32: the SDPA path is used
