"""Expected guided-diffusion state-dict layouts, written out from reading openai/guided-diffusion's unet.py.

Independent of fastdiff's code: each function lists {key: shape} for one module as guided-diffusion
builds it (Sequential indices included), so a checkpoint loads with strict=True.
"""


def resblock(p, cin, cout, emb, scale_shift, dims=2):
    """ResBlock: in_layers [GN, SiLU, conv], emb_layers [SiLU, Linear], out_layers [GN, SiLU, Dropout, conv]."""
    k = (3,) * dims
    d = {
        f"{p}.in_layers.0.weight": (cin,), f"{p}.in_layers.0.bias": (cin,),
        f"{p}.in_layers.2.weight": (cout, cin, *k), f"{p}.in_layers.2.bias": (cout,),
        f"{p}.emb_layers.1.weight": (2 * cout if scale_shift else cout, emb),
        f"{p}.emb_layers.1.bias": (2 * cout if scale_shift else cout,),
        f"{p}.out_layers.0.weight": (cout,), f"{p}.out_layers.0.bias": (cout,),
        f"{p}.out_layers.3.weight": (cout, cout, *k), f"{p}.out_layers.3.bias": (cout,),
    }
    if cin != cout:  # 1x1 skip (use_conv is never set by the UNet)
        d[f"{p}.skip_connection.weight"] = (cout, cin, *((1,) * dims))
        d[f"{p}.skip_connection.bias"] = (cout,)
    return d


def attention(p, c):
    """AttentionBlock: norm (GN), qkv (Conv1d c -> 3c), proj_out (Conv1d c -> c)."""
    return {f"{p}.norm.weight": (c,), f"{p}.norm.bias": (c,), f"{p}.qkv.weight": (3 * c, c, 1),
            f"{p}.qkv.bias": (3 * c,), f"{p}.proj_out.weight": (c, c, 1), f"{p}.proj_out.bias": (c,)}


def torso(in_ch, mc, nrb, attn, mult, ss, updown, conv_resample=True, dims=2):
    """time_embed, input_blocks, middle_block; returns (keys, ch, ds, skip channels, feature size)."""
    emb = 4 * mc
    d = {"time_embed.0.weight": (emb, mc), "time_embed.0.bias": (emb,),
         "time_embed.2.weight": (emb, emb), "time_embed.2.bias": (emb,)}
    ch = int(mult[0] * mc)
    d["input_blocks.0.0.weight"] = (ch, in_ch, *((3,) * dims))
    d["input_blocks.0.0.bias"] = (ch,)
    chans, ds, i, feat = [ch], 1, 1, ch
    for level, m in enumerate(mult):
        for _ in range(nrb):
            out = int(m * mc)
            d.update(resblock(f"input_blocks.{i}.0", ch, out, emb, ss, dims))
            ch = out
            if ds in attn:
                d.update(attention(f"input_blocks.{i}.1", ch))
            chans.append(ch)
            feat += ch
            i += 1
        if level != len(mult) - 1:
            if updown:
                d.update(resblock(f"input_blocks.{i}.0", ch, ch, emb, ss, dims))
            elif conv_resample:
                d[f"input_blocks.{i}.0.op.weight"] = (ch, ch, *((3,) * dims))
                d[f"input_blocks.{i}.0.op.bias"] = (ch,)
            chans.append(ch)
            feat += ch
            ds *= 2
            i += 1
    d.update(resblock("middle_block.0", ch, ch, emb, ss, dims))
    d.update(attention("middle_block.1", ch))
    d.update(resblock("middle_block.2", ch, ch, emb, ss, dims))
    return d, ch, ds, chans, feat + ch


def unet(in_ch, mc, out_ch, nrb, attn, mult, ss=False, updown=False, num_classes=None, conv_resample=True,
         dims=2):
    """Full UNetModel layout."""
    d, ch, ds, chans, _ = torso(in_ch, mc, nrb, attn, mult, ss, updown, conv_resample, dims)
    emb = 4 * mc
    if num_classes is not None:
        d["label_emb.weight"] = (num_classes, emb)
    j = 0
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(nrb + 1):
            out = int(m * mc)
            d.update(resblock(f"output_blocks.{j}.0", ch + chans.pop(), out, emb, ss, dims))
            ch = out
            n = 1
            if ds in attn:
                d.update(attention(f"output_blocks.{j}.1", ch))
                n = 2
            if level and i == nrb:
                if updown:
                    d.update(resblock(f"output_blocks.{j}.{n}", ch, ch, emb, ss, dims))
                elif conv_resample:
                    d[f"output_blocks.{j}.{n}.conv.weight"] = (ch, ch, *((3,) * dims))
                    d[f"output_blocks.{j}.{n}.conv.bias"] = (ch,)
                ds //= 2
            j += 1
    d.update({"out.0.weight": (ch,), "out.0.bias": (ch,),
              "out.2.weight": (out_ch, int(mult[0] * mc), *((3,) * dims)), "out.2.bias": (out_ch,)})
    return d


def encoder(image_size, in_ch, mc, out_ch, nrb, attn, mult, ss=False, updown=False, pool="adaptive",
            num_head_channels=-1):
    """EncoderUNetModel layout for each pool head."""
    d, ch, ds, _, feat = torso(in_ch, mc, nrb, attn, mult, ss, updown)
    if pool == "adaptive":
        d.update({"out.0.weight": (ch,), "out.0.bias": (ch,), "out.3.weight": (out_ch, ch, 1, 1),
                  "out.3.bias": (out_ch,)})
    elif pool == "attention":
        s = image_size // ds
        d.update({"out.0.weight": (ch,), "out.0.bias": (ch,), "out.2.positional_embedding": (ch, s * s + 1),
                  "out.2.qkv_proj.weight": (3 * ch, ch, 1), "out.2.qkv_proj.bias": (3 * ch,),
                  "out.2.c_proj.weight": (out_ch, ch, 1), "out.2.c_proj.bias": (out_ch,)})
    elif pool == "spatial":
        d.update({"out.0.weight": (2048, feat), "out.0.bias": (2048,), "out.2.weight": (out_ch, 2048),
                  "out.2.bias": (out_ch,)})
    else:
        d.update({"out.0.weight": (2048, feat), "out.0.bias": (2048,), "out.1.weight": (2048,),
                  "out.1.bias": (2048,), "out.3.weight": (out_ch, 2048), "out.3.bias": (out_ch,)})
    return d
