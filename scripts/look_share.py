"""Where the answer looks: for each decoder layer and head, the attention mass that the positions predicting an
answer's digits put on the target's cells (the click's named element, the referred or pointed object), averaged
over those positions (embedded-runs/notes.md, thirtieth session). The softmax runs over the whole causal row, as in
the model; the second figure printed is the share the target's cells would get from attention spread evenly over
the picture.

    python scripts/look_share.py MODEL FILE.jsonl[,FILE2.jsonl] [N records per file, default 30]
"""
import sys

import torch

import qwenvl
from qwenvl.model.layers import apply_rotary
from qwenvl.train.click_aux import target_cells
from qwenvl.train.data import SFTData
from qwenvl.train.packing import collate


def main(model: str, files: list[str], n: int) -> None:
    vlm = qwenvl.load(model, dtype=torch.float32, pack=False)
    tok, layers, v = vlm.tokenizer, vlm.model.model.layers, vlm.config.vision
    for f in files:
        d = SFTData([f], vlm.processor)
        mass = torch.zeros(len(layers), layers[0].self_attn.n_heads)
        cnt, even = 0, 0.0
        for i in range(min(n, len(d))):
            s, meta = d[i], d.record(i)["meta"]
            b = collate([s])
            cap = {}
            hooks = [lay.self_attn.register_forward_pre_hook(lambda m, a, k=li: cap.__setitem__(k, a[:3]))
                     for li, lay in enumerate(layers)]
            with torch.no_grad():
                vlm.model(b.input_ids, pixel_values=b.pixel_values, image_grid_thw=b.image_grid_thw,
                          position_ids=b.position_ids, segments=b.segments, return_hidden=True)
            for h in hooks:
                h.remove()
            g = s.image_grid_thw[0]
            rows, cols = int(g[1]) // v.spatial_merge_size, int(g[2]) // v.spatial_merge_size
            tgt = target_cells(meta, (rows, cols), v.patch_size * v.spatial_merge_size)
            img = (b.input_ids[0] == vlm.config.image_token_id).nonzero().view(-1)
            lab = b.labels[0]
            qpos = [t for t in range(len(lab)) if lab[t] >= 0 and tok.decode([int(lab[t])]).strip().isdigit()]
            if not tgt or not qpos:
                continue
            tpos = img[tgt]
            for li, lay in enumerate(layers):
                x, cos, sin = cap[li]
                a = lay.self_attn
                T = x.shape[1]
                q = a.q_proj(x).view(1, T, a.n_heads, a.head_dim).transpose(1, 2)
                k = a.k_proj(x).view(1, T, a.n_kv, a.head_dim).transpose(1, 2)
                c, sn = cos.unsqueeze(1), sin.unsqueeze(1)
                q, k = apply_rotary(q, c, sn), apply_rotary(k, c, sn)
                k = k.repeat_interleave(a.n_heads // a.n_kv, dim=1)
                with torch.no_grad():
                    for t in qpos:
                        p = (torch.einsum("hd,htd->ht", q[0, :, t], k[0, :, :t + 1]) / a.head_dim ** 0.5).softmax(-1)
                        mass[li] += p[:, tpos].sum(-1)
            cnt += len(qpos)
            even += len(tgt) / (rows * cols) * len(qpos)
        print(f"{f}: {cnt} digit positions; an even spread over the picture gives its target {even / max(cnt, 1):.3f}")
        print("rows: decoder layers 1..N; columns: heads")
        print((mass / max(cnt, 1)).numpy().round(3))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]) if len(sys.argv) > 3 else 30)
