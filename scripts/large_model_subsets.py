"""Large models where only part moves: resnet18 planes for fc, layer4 and all parameters on one
colour scale, and the plane of a LoRA adapter on a tiny GPT-2, with the time each took.

resnet18 (torchvision's, or the same architecture from benchmarks/resnet18.py where torchvision
does not load) is untrained, with BatchNorm statistics warmed on the data, on random CIFAR-sized
images: the panels compare how far the loss moves along the same kind of direction (random,
filter-normalised) when only the head, only the last stage or every parameter moves. The GPT-2
(2 layers, width 64, random init, no download) gets a LoRA adapter (peft) trained for a few steps
on random tokens, so that its B matrices are not zero, then a plane over the adapter alone.

Run from the repository root::

    PYTHONPATH=. python scripts/large_model_subsets.py [--out docs/large_model_subsets.png] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastscape  # noqa: E402
from benchmarks.resnet18 import workload  # noqa: E402


def lm_loss(out, y):
    """Next-token cross-entropy on a Hugging Face causal LM's ``.logits``."""
    return F.cross_entropy(out.logits[:, :-1].flatten(0, 1), y[:, 1:].flatten())


def resnet_planes(res: int, n: int) -> tuple[dict, dict, str]:
    w = workload(n)
    surfaces, seconds = {}, {}
    for title, params in (("fc only", "fc"), ("layer4 only", "layer4"), ("all parameters", None)):
        dirs = fastscape.random_directions(w["model"], 2, seed=0, params=params)
        t = time.perf_counter()
        surfaces[title] = fastscape.loss_surface(w["model"], (w["x"], w["y"]), dirs, loss_fn=w["loss_fn"],
                                                 grid=(-1, 1, res), progress=False)
        seconds[title] = time.perf_counter() - t
    return surfaces, seconds, w["source"]


def lora_plane(res: int):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100, n_positions=32))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (32, 24), generator=g)
    loader = [{"input_ids": ids[i:i + 8], "attention_mask": torch.ones_like(ids[i:i + 8]), "labels": ids[i:i + 8]}
              for i in range(0, 32, 8)]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(20):  # a few steps, so that the adapter's B matrices leave zero
        for batch in loader:
            opt.zero_grad()
            model(**batch).loss.backward()
            opt.step()
    model.eval()
    dirs = fastscape.random_directions(model, 2, seed=0)  # default: what requires grad, the adapter
    t = time.perf_counter()
    surface = fastscape.loss_surface(model, loader, dirs, loss_fn=lm_loss, grid=(-1, 1, res), progress=False)
    moving = sum(int(v.numel()) for v in dirs[0].values() if bool(v.any()))
    return surface, time.perf_counter() - t, moving


def draw(surfaces: dict, lora, out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(19, 4.6), layout="constrained")
    axes = fig.subplots(1, 4)
    lo = min(float(np.nanmin(s.loss)) for s in surfaces.values())
    hi = max(float(np.nanmax(s.loss)) for s in surfaces.values())
    levels = np.geomspace(lo, hi, 30)  # one colour scale for the three resnet18 panels
    for ax, (title, s) in zip(axes, surfaces.items()):  # each panel's own range in its title: a flat one is
        span = f"loss {np.nanmin(s.loss):.3f}-{np.nanmax(s.loss):.3f}"  # read as flat, not as empty
        fastscape.plot.contour(s, ax=ax, levels=levels, colorbar=title == "all parameters",
                               title=f"resnet18, {title}: {span}\n({s.meta['strategy']}, {s.meta['seconds']:.1f} s)")
    if lora is not None:
        s, seconds, moving = lora
        fastscape.plot.contour(s, ax=axes[3], title=f"tiny GPT-2, LoRA adapter only ({moving:,} weights)\n"
                                                    f"(own colour scale; {s.meta['strategy']}, {seconds:.1f} s)")
    else:
        axes[3].set_axis_off()
        axes[3].text(0.5, 0.5, "transformers and peft not installed:\nno LoRA panel", ha="center", va="center")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/large_model_subsets.png")
    p.add_argument("--quick", action="store_true", help="7x7 planes on 16 images (a rehearsal)")
    p.add_argument("--res", type=int, default=None, help="grid points per axis (default 11, --quick 7)")
    args = p.parse_args(argv)
    res = args.res or (7 if args.quick else 11)
    surfaces, seconds, source = resnet_planes(res, 16 if args.quick else 64)
    for s, t in zip(surfaces.values(), seconds.values()):
        s.meta["seconds"] = t
    try:
        lora = lora_plane(res)
    except ImportError:
        lora = None
    draw(surfaces, lora, Path(args.out))
    print(f"resnet18 from {source}, {res}x{res} planes, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for title, s in surfaces.items():
        print(f"  {title:<15} {seconds[title]:7.1f} s  auto -> {s.meta['strategy']} (chunk {s.meta['chunk_size']}); "
              f"loss {np.nanmin(s.loss):.3f} .. {np.nanmax(s.loss):.3f}")
    if lora is not None:
        s, t, moving = lora
        print(f"  LoRA (GPT-2)    {t:7.1f} s  auto -> {s.meta['strategy']}; {moving} adapter weights move; "
              f"loss {np.nanmin(s.loss):.3f} .. {np.nanmax(s.loss):.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
