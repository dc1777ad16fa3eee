"""Models from the zoos as given: a Hugging Face causal LM fed dict batches, a LoRA adapter made
with peft (timm and torchvision models: ``test_zoo_vision.py``). Skipped where the package is absent
(CI installs `.[test]`).

Reference: a per-point loop that loads each grid point into a copy of the model and calls it
directly, the Hugging Face way (``model(**inputs)``), sample-weighted over the batches.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from tests.models import assert_unchanged, snapshot

AXES = [np.linspace(-0.5, 0.5, 3), np.linspace(-0.5, 0.5, 3)]


def lm_loss(out, y):  # the one line a causal LM needs: next-token cross-entropy on .logits
    return F.cross_entropy(out.logits[:, :-1].flatten(0, 1), y[:, 1:].flatten())


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    return transformers.GPT2LMHeadModel(config).eval()


def _loader():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (10, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[:, -3:] = 0
    samples = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": ids[i]} for i in range(10)]
    return torch.utils.data.DataLoader(samples, batch_size=4)  # yields dicts, as a HF collator does


def _loop(model, loader, dirs, axes):
    m = copy.deepcopy(model).double().eval()
    named = dict(m.named_parameters())
    origin = {k: v.detach().double().clone() for k, v in named.items()}
    out = np.empty([len(a) for a in axes])
    for idx in np.ndindex(*out.shape):
        with torch.no_grad():
            for k in dirs[0]:
                named[k].copy_(origin[k] + sum(float(axes[i][idx[i]]) * d[k].double() for i, d in enumerate(dirs)))
            total = n = 0
            for batch in loader:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                total += float(lm_loss(m(**inputs), batch["labels"])) * len(batch["labels"])
                n += len(batch["labels"])
        out[idx] = total / n
    return out


@pytest.mark.parametrize("strategy", ["auto", "vmap", "loop"])
def test_gpt2_from_dict_batches_matches_calling_it_directly(strategy):
    model = _gpt2()
    loader = _loader()
    dirs = fastscape.random_directions(model, 2, seed=0)
    assert "lm_head.weight" not in dirs[0]  # tied to transformer.wte.weight: one entry, moved once
    snap = snapshot(model)
    s = fastscape.loss_surface(model, loader, dirs, loss_fn=lm_loss, grid=AXES, strategy=strategy, progress=False)
    assert_unchanged(model, snap)
    np.testing.assert_allclose(s.loss, _loop(model, loader, dirs, AXES), rtol=2e-5, atol=2e-5)


def test_lora_adapter_drawn_over_the_adapter_only():
    peft = pytest.importorskip("peft")
    base = _gpt2()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True,
                                                      init_lora_weights=False)).eval()
    loader = _loader()
    dirs = fastscape.random_directions(model, 2, seed=0)  # default: what requires grad, the adapter
    moving = {k for k, v in dirs[0].items() if bool(v.any())}
    assert moving and all("lora_" in k for k in moving)
    s = fastscape.loss_surface(model, loader, dirs, loss_fn=lm_loss, grid=AXES, progress=False)
    np.testing.assert_allclose(s.loss, _loop(model, loader, dirs, AXES), rtol=2e-5, atol=2e-5)
    assert not np.allclose(s.loss, s.loss[1, 1])  # the adapter does move the loss


def test_the_obvious_wrong_ways_say_what_to_write():
    model = _gpt2()
    loader = _loader()
    dirs = fastscape.random_directions(model, 2, seed=0)
    kw = dict(grid=3, progress=False)
    with pytest.raises(TypeError, match=r"returns a CausalLMOutput.*not a tensor: read its logits.*out\.logits"):
        fastscape.loss_surface(model, loader, dirs, loss_fn=F.cross_entropy, **kw)
    batch = next(iter(loader))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with pytest.raises(Exception, match=r"input 1 to `past_key_values`.*give the inputs as a dict"):
        fastscape.loss_surface(model, [((ids, mask), ids)], dirs, loss_fn=lm_loss, **kw)
    with pytest.raises(TypeError, match=r"dict without a 'labels' entry.*\(inputs, targets\) pairs"):
        fastscape.loss_surface(model, [{"input_ids": ids}], dirs, loss_fn=lm_loss, **kw)
    with pytest.raises(TypeError, match=r"GPT2LMHeadModel.forward has no parameter 'tokens'"):
        fastscape.loss_surface(model, [({"tokens": ids}, ids)], dirs, loss_fn=lm_loss, **kw)
    # named inputs without labels in the dict work as a pair, the same as the collator's dicts
    pair = fastscape.loss_surface(model, [({"input_ids": ids, "attention_mask": mask}, ids)], dirs, loss_fn=lm_loss,
                                  **kw)
    coll = fastscape.loss_surface(model, [batch], dirs, loss_fn=lm_loss, **kw)
    np.testing.assert_array_equal(pair.loss, coll.loss)


def test_hessian_of_the_lora_adapter():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_gpt2(), peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True,
                                                         init_lora_weights=False)).eval()
    vecs, vals = fastscape.curvature.hessian_eigenpairs(model, _loader(), loss_fn=lm_loss, n=1, max_iter=20, tol=1e-2)
    assert all(not bool(v.any()) for k, v in vecs[0].items() if "lora_" not in k)
    assert np.isfinite(vals).all()
