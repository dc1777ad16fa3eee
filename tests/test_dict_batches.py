"""Dict batches, as a Hugging Face DataLoader yields them, in training and in the views: the same
batch forms as ``loss_surface`` (``{"input_ids", "attention_mask", "labels"}`` and
``({"input_ids": ..., "attention_mask": ...}, targets)`` pairs). Skipped without transformers.

Reference: a plain loop that calls the model the Hugging Face way, ``model(**inputs)``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from tests.models import assert_unchanged, snapshot
from tests.test_zoo import _loader, lm_loss

transformers = pytest.importorskip("transformers")


def _gpt2(dropout=0.0):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16,
                                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return transformers.GPT2LMHeadModel(config).eval()


def _split(batch):
    return {k: v for k, v in batch.items() if k != "labels"}, batch["labels"]


def _mean_loss(model, loader):
    """The sample-weighted mean of ``lm_loss`` over ``loader``, called directly (eval mode)."""
    total = n = 0
    with torch.no_grad():
        for batch in loader:
            inputs, y = _split(batch)
            total += float(lm_loss(model(**inputs), y)) * len(y)
            n += len(y)
    return total / n


def test_train_from_collator_dicts_matches_a_plain_loop():
    model = _gpt2()
    ref = copy.deepcopy(model)
    loader = _loader()
    traj = fastscape.train(model, loader, loss_fn=lm_loss, epochs=2,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.5))
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    losses = [_mean_loss(ref.eval(), loader)]
    for _ in range(2):
        ref.train()
        for batch in loader:
            inputs, y = _split(batch)
            opt.zero_grad()
            lm_loss(ref(**inputs), y).backward()
            opt.step()
        losses.append(_mean_loss(ref.eval(), loader))
    assert not model.training  # the flags as given
    for (k, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=k)
    np.testing.assert_allclose(traj.losses, losses, rtol=1e-5)
    assert losses[-1] < losses[0]  # it did train


def test_train_from_one_pair_with_named_inputs():
    batch = next(iter(_loader()))
    inputs, y = _split(batch)
    a, b = _gpt2(), _gpt2()
    ta = fastscape.train(a, (inputs, y), loss_fn=lm_loss, epochs=1, optimizer=torch.optim.SGD(a.parameters(), lr=0.5))
    tb = fastscape.train(b, [batch], loss_fn=lm_loss, epochs=1, optimizer=torch.optim.SGD(b.parameters(), lr=0.5))
    assert torch.equal(ta.matrix(), tb.matrix())
    assert ta.steps == [0, 1]


def test_train_names_what_a_dict_batch_lacks():
    model = _gpt2()
    ids = next(iter(_loader()))["input_ids"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"batch 0 is a dict without a 'labels' entry"):
        fastscape.train(model, [{"input_ids": ids}], loss_fn=lm_loss, epochs=1, optimizer=opt)
    with pytest.raises(TypeError, match=r"GPT2LMHeadModel.forward has no parameter 'tokens'"):
        fastscape.train(model, [({"tokens": ids}, ids)], loss_fn=lm_loss, epochs=1, optimizer=opt)
    with pytest.raises(TypeError, match=r"returns a CausalLMOutput.*not a tensor: read its logits"):
        fastscape.train(model, _loader(), loss_fn=F.cross_entropy, epochs=1, optimizer=opt)


def test_loss_and_gradient_and_lr_steps_from_collator_dicts():
    from fastscape._views import loss_and_gradient

    model = _gpt2()
    loader = _loader()
    snap = snapshot(model)
    loss, grad = loss_and_gradient(model, loader, loss_fn=lm_loss)
    ref = copy.deepcopy(model)
    total = n = 0
    for batch in loader:  # the whole-data mean's gradient: each batch's weighted by its samples
        inputs, y = _split(batch)
        total = total + lm_loss(ref(**inputs), y) * len(y)
        n += len(y)
    (total / n).backward()
    assert loss == pytest.approx(float(total.detach() / n), rel=1e-5)
    assert set(grad) == {k for k, _ in ref.named_parameters()}  # the tied LM head once, as its embedding
    for k, p in ref.named_parameters():
        torch.testing.assert_close(grad[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)

    dirs = fastscape.random_directions(model, 2, seed=0)
    steps = fastscape.lr_steps(model, loader, dirs, loss_fn=lm_loss, lrs=[0.1, 1.0])
    for lr, value in zip([0.1, 1.0], steps.losses):
        stepped = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in stepped.named_parameters():
                p -= lr * grad[k]
        assert value == pytest.approx(_mean_loss(stepped, loader), rel=1e-5)
    assert_unchanged(model, snap)


def test_cross_sections_from_named_input_pairs():
    model = _gpt2()
    batch = next(iter(_loader()))
    inputs, y = _split(batch)
    entry = "transformer.ln_f.bias[3]"
    cs = fastscape.cross_sections(model, [(inputs, y)], loss_fn=lm_loss, names=[entry], span=0.5, n=3)
    for offset, value in zip(cs.offsets, cs.losses[0]):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            moved.transformer.ln_f.bias[3] += offset
        assert value == pytest.approx(_mean_loss(moved, [batch]), rel=1e-5)


def test_train_curve_from_collator_dicts_keeps_its_ends():
    """A curve trained on collator dicts (the attention mask reaches ``attention_mask``, not
    GPT-2's second positional parameter): its ends are the two models, whose losses a direct
    loop computes; neither model is modified."""
    from fastscape.connect import evaluate_curve, train_curve

    a = _gpt2()
    torch.manual_seed(1)
    b = transformers.GPT2LMHeadModel(a.config).eval()
    snaps = snapshot(a), snapshot(b)
    loader = _loader()
    curve = train_curve(a, b, loader, loss_fn=lm_loss, epochs=1, batch_size=4, lr=0.01)
    prof = evaluate_curve(curve, a, loader, loss_fn=lm_loss, n=3, line=False)
    np.testing.assert_allclose(prof.curve["loss"][[0, -1]], [_mean_loss(a, loader), _mean_loss(b, loader)],
                               rtol=2e-5)
    assert_unchanged(a, snaps[0])
    assert_unchanged(b, snaps[1])


class _Positional(torch.nn.Module):
    """The same GPT-2 called with positional inputs: the reference way of feeding it."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ids, mask):
        return self.lm(input_ids=ids, attention_mask=mask)


def _pairs(loader):
    return [((b["input_ids"], b["attention_mask"]), b["labels"]) for b in loader]


@pytest.mark.filterwarnings("ignore::fastscape.curvature.ConvergenceWarning")  # 6 steps on both sides, alike
def test_curvature_and_sharpness_take_collator_dicts():
    """curvature_surface's losses are a direct loop's; its curvature and the sharpness measures
    equal the same model fed positionally (the attention mask reaches ``attention_mask``)."""
    from fastscape.curvature import adaptive_sharpness, curvature_surface, epsilon_sharpness

    model = _gpt2()
    wrapped = _Positional(model).eval()
    loader = _loader()
    dirs = fastscape.random_directions(model, 1, seed=0, params="transformer.h.1.mlp")
    kw = dict(loss_fn=lm_loss, grid=(-0.5, 0.5, 2), max_iter=6, trace_probes=2)
    s = curvature_surface(model, loader, dirs, **kw)
    ref = curvature_surface(wrapped, _pairs(loader), [{f"lm.{k}": v for k, v in dirs[0].items()}], **kw)
    for i, c in enumerate(s.coords[0]):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in m.named_parameters():
                p += float(c) * dirs[0][k]
        np.testing.assert_allclose(s.loss[i], _mean_loss(m, loader), rtol=1e-5)
    for name in ("lambda_max", "lambda_min", "trace"):
        np.testing.assert_allclose(s.metrics[name], ref.metrics[name], rtol=1e-4, atol=1e-6, err_msg=name)
    for fn in (epsilon_sharpness, adaptive_sharpness):
        got = fn(model, loader, loss_fn=lm_loss, samples=4, steps=1, starts=1)
        want = fn(wrapped, _pairs(loader), loss_fn=lm_loss, samples=4, steps=1, starts=1)
        assert got == pytest.approx(want, rel=1e-4), fn.__name__
