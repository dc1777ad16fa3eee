"""Recording training paths: the optimizer hook, manual steps, spilling to disk, train(), and
several optimizers on one plane. References: parameters copied by hand in the loop, a plain
eval-mode loss, numpy least squares and scikit-learn's PCA."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from tests.models import MLP


def _data(gen, n=48):
    return torch.randn(n, 5, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _flat(model):
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _loop(model, opt, x, y, steps, rec=None, copies=None, log=True):
    """A plain training loop; ``copies`` collects the weights after every step by hand."""
    for s in range(steps):
        lo = (s * 8) % len(x)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[lo:lo + 8]), y[lo:lo + 8])
        loss.backward()
        opt.step()
        if copies is not None:
            copies.append((_flat(model), loss.item()))
        if rec is not None and log:
            rec.log_loss(loss)


def test_optimizer_hook_records_every_n_steps(gen):
    torch.manual_seed(0)
    model = MLP()
    x, y = _data(gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    start = _flat(model)
    copies = []
    with fastscape.record(model, opt, every=3) as rec:
        _loop(model, opt, x, y, 10, rec=rec, copies=copies)
    traj = rec.trajectory
    # start, steps 3, 6, 9, and the final weights (step 10) on leaving the block
    assert traj.steps == [0, 3, 6, 9, 10]
    assert len(traj) == 5
    m = traj.matrix()
    assert m.dtype == torch.float32 and m.device.type == "cpu" and m.shape == (5, start.numel())
    torch.testing.assert_close(m[0], start, rtol=0, atol=0)
    for row, step in zip(m[1:], traj.steps[1:]):
        torch.testing.assert_close(row, copies[step - 1][0], rtol=0, atol=0)
    # each snapshot stores the mean loss of the steps it covers; none for the start
    losses = [c[1] for c in copies]
    assert np.isnan(traj.losses[0])
    np.testing.assert_allclose(traj.losses[1:], [np.mean(losses[0:3]), np.mean(losses[3:6]),
                                                 np.mean(losses[6:9]), losses[9]], rtol=1e-6)
    # the snapshot dict has the model's names and shapes
    snap = traj[-1]
    assert list(snap) == [n for n, _ in model.named_parameters()]
    for (n, p) in model.named_parameters():
        assert torch.equal(snap[n], p.detach())
    # the hook is gone: more steps record nothing
    _loop(model, opt, x, y, 2)
    assert len(traj) == 5


def test_recording_does_not_change_training(gen):
    x, y = _data(gen)
    torch.manual_seed(0)
    a = MLP()
    b = copy.deepcopy(a)
    opt_a = torch.optim.Adam(a.parameters(), lr=0.01)
    opt_b = torch.optim.Adam(b.parameters(), lr=0.01)
    _loop(a, opt_a, x, y, 6)
    with fastscape.record(b, opt_b, every=1) as rec:
        _loop(b, opt_b, x, y, 6, rec=rec)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert len(rec.trajectory) == 7


def test_manual_steps_without_an_optimizer():
    # a hand-written update (as in the linear-regression walk-through): w -= lr * grad
    w = torch.nn.Linear(1, 1)
    x = torch.linspace(0, 1, 10).reshape(-1, 1)
    y = 2 * x + 1
    expected, losses = [_flat(w)], []
    rec = fastscape.record(w, every=2)
    for _ in range(5):
        loss = F.mse_loss(w(x), y)
        w.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in w.parameters():
                p -= 0.1 * p.grad
        rec.step(loss)
        expected.append(_flat(w))
        losses.append(loss.item())
    traj = rec.close()
    assert traj.steps == [0, 2, 4, 5]
    for row, step in zip(traj.matrix(), traj.steps):
        torch.testing.assert_close(row, expected[step], rtol=0, atol=0)
    np.testing.assert_allclose(traj.losses[1:], [np.mean(losses[:2]), np.mean(losses[2:4]), losses[4]],
                               rtol=1e-6)
    assert rec.close() is traj  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        rec.step()


def test_snapshots_on_demand_per_epoch(gen):
    torch.manual_seed(0)
    model = MLP()
    x, y = _data(gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ends = []
    with fastscape.record(model, opt, every=None) as rec:
        for _ in range(3):
            _loop(model, opt, x, y, 4, rec=rec)
            rec.snapshot()
            ends.append(_flat(model))
    traj = rec.trajectory
    assert traj.steps == [0, 4, 8, 12]  # no extra snapshot at the end: the final weights are in
    for row, e in zip(traj.matrix()[1:], ends):
        assert torch.equal(row, e)
    rec2 = fastscape.record(model, every=None)
    rec2.snapshot(loss=torch.tensor(0.25))
    assert rec2.trajectory.losses == [pytest.approx(float("nan"), nan_ok=True), 0.25]


def test_spill_to_file_matches_memory(gen, tmp_path):
    x, y = _data(gen)
    torch.manual_seed(0)
    a = MLP()
    b = copy.deepcopy(a)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    path = tmp_path / "sub" / "path.f32"
    with fastscape.record(a, opt_a, every=2) as ra:
        _loop(a, opt_a, x, y, 7, rec=ra)
    with fastscape.record(b, opt_b, every=2, out=path) as rb:
        _loop(b, opt_b, x, y, 7, rec=rb)
    ta, tb = ra.trajectory, rb.trajectory
    assert len(tb) == len(ta) == 5 and tb.steps == ta.steps
    P = ta.numel
    assert path.stat().st_size == 5 * P * 4
    raw = np.fromfile(path, dtype=np.float32).reshape(5, P)
    np.testing.assert_array_equal(raw, ta.matrix().numpy())
    assert torch.equal(tb.matrix(), ta.matrix())
    for i in (0, 2, -1):
        for k in ta.names:
            assert torch.equal(tb[i][k], ta[i][k])
    np.testing.assert_allclose(tb.losses, ta.losses, equal_nan=True)
    # the memory map is copy-on-write: writing into it never changes the file
    tb.matrix()[0, 0] = 123.0
    np.testing.assert_array_equal(np.fromfile(path, dtype=np.float32).reshape(5, P), raw)
    assert "file" in repr(tb)


def test_float64_snapshots(gen):
    model = MLP().double()
    rec = fastscape.record(model, dtype=torch.float64)
    rec.close()
    assert rec.trajectory.matrix().dtype == torch.float64
    assert torch.equal(rec.trajectory.matrix()[0], _flat(model))


def test_recorder_errors(gen, tmp_path):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="`every` must be a positive integer or None; got 0"):
        fastscape.record(model, opt, every=0)
    with pytest.raises(TypeError, match="`optimizer` must be a torch.optim.Optimizer"):
        fastscape.record(model, "sgd")
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        fastscape.record({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="`dtype` must be torch.float32 or torch.float64"):
        fastscape.record(model, dtype=torch.float16)
    with pytest.raises(ValueError, match="`device` must be 'cpu' when `out` is given"):
        fastscape.record(model, out=tmp_path / "x.f32", device="meta")
    with fastscape.record(model, opt) as rec:
        with pytest.raises(RuntimeError, match="counts `optimizer.step\\(\\)` calls through a hook"):
            rec.step()
        with pytest.raises(ValueError, match="`loss` must be a scalar; got a tensor of shape \\(3,\\)"):
            rec.log_loss(torch.ones(3))
        with pytest.raises(TypeError, match="`loss` must be a scalar tensor or a number; got str"):
            rec.log_loss("0.1")
        with pytest.raises(IndexError, match="snapshot index 5 is out of range for 1 snapshots"):
            rec.trajectory[5]


def _eval_loss(model, params, x, y):
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(params[n])
        return float(F.cross_entropy(m(x), y))


def test_train_keeps_its_signature_and_records(gen):
    torch.manual_seed(0)
    model = MLP()
    x, y = _data(gen, 40)
    xe, ye = _data(gen, 30)
    loader = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]  # 4 steps per epoch
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    start = _flat(model)
    traj = fastscape.train(model, loader, loss_fn=F.cross_entropy, optimizer=opt, epochs=3, eval_data=(xe, ye))
    assert traj.steps == [0, 4, 8, 12]
    assert torch.equal(traj.matrix()[0], start)
    assert torch.equal(traj.matrix()[-1], _flat(model))  # trained in place
    for i in range(len(traj)):
        assert traj.losses[i] == pytest.approx(_eval_loss(model, traj[i], xe, ye), rel=1e-5)

    # every 3 steps, plus the final weights; the loss defaults to the training data
    model2 = MLP()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.2)
    traj2 = fastscape.train(model2, loader, loss_fn=F.cross_entropy, optimizer=opt2, epochs=2,
                            every_steps=3)
    assert traj2.steps == [0, 3, 6, 8]
    assert traj2.losses[2] == pytest.approx(_eval_loss(model2, traj2[2], x, y), rel=1e-5)
    assert model2.training  # back in train mode after each loss evaluation

    # every 2 epochs of 3: the last epoch is recorded anyway
    traj3 = fastscape.train(MLP(), loader, loss_fn=F.cross_entropy, optimizer=torch.optim.SGD(MLP().parameters(), lr=0.1),
                            epochs=3, every=2)
    assert traj3.steps == [0, 8, 12]


def test_train_errors(gen):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [_data(gen, 8)]
    with pytest.raises(ValueError, match="`epochs` must be a non-negative integer; got -1"):
        fastscape.train(model, data, loss_fn=F.cross_entropy, optimizer=opt, epochs=-1)
    with pytest.raises(ValueError, match="`every_steps` must be a positive integer; got 0"):
        fastscape.train(model, data, loss_fn=F.cross_entropy, optimizer=opt, epochs=1, every_steps=0)
    with pytest.raises(TypeError, match="`optimizer` must be a torch.optim.Optimizer; got function"):
        fastscape.train(model, data, loss_fn=F.cross_entropy, optimizer=lambda p: None, epochs=1)


def test_compare_optimizers_on_one_plane(gen):
    from sklearn.decomposition import PCA

    torch.manual_seed(0)
    model = MLP(d_in=5, hidden=8, d_out=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(gen, 48)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    opts = {"SGD": lambda p: torch.optim.SGD(p, lr=0.2),
            "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
            "Adam": lambda p: torch.optim.Adam(p, lr=0.02),
            "SGD again": lambda p: torch.optim.SGD(p, lr=0.2)}
    res = fastscape.compare_optimizers(model, loader, opts, loss_fn=F.cross_entropy, epochs=3, seed=7)
    for k, v in model.state_dict().items():  # the given model is never trained
        assert torch.equal(v, before[k])
    assert list(res.trajectories) == list(opts)
    start = _flat(model)
    for t in res.trajectories.values():
        assert torch.equal(t.matrix()[0], start) and len(t) == 4
    # the same seed gives every run the same shuffles: identical optimizers, identical paths
    assert torch.equal(res.trajectories["SGD"].matrix(), res.trajectories["SGD again"].matrix())
    assert not torch.equal(res.trajectories["SGD"].matrix(), res.trajectories["Adam"].matrix())
    for name, m in res.models.items():
        assert torch.equal(res.trajectories[name].matrix()[-1], _flat(m))

    # the plane: sklearn PCA of all snapshots pooled, through the first run's final weights
    pooled = torch.cat([t.matrix() for t in res.trajectories.values()]).double().numpy()
    pca = PCA(n_components=2).fit(pooled - pooled[len(res.trajectories["SGD"]) - 1])
    D = np.stack([torch.cat([d[k].reshape(-1) for k in res.trajectories["SGD"].names]).double().numpy()
                  for d in res.directions])
    for i in range(2):
        assert abs(abs(D[i] @ pca.components_[i]) - 1) < 1e-4
    np.testing.assert_allclose(res.explained_variance_ratio, pca.explained_variance_ratio_, rtol=1e-4)
    origin = res.trajectories["SGD"].matrix()[-1].double().numpy()
    for name, t in res.trajectories.items():
        a = t.matrix().double().numpy() - origin
        ref, *_ = np.linalg.lstsq(D.T, a.T, rcond=None)
        np.testing.assert_allclose(res.coords[name], ref.T, atol=1e-5)
        np.testing.assert_allclose(res.residuals[name], np.linalg.norm(a - ref.T @ D, axis=1), atol=1e-4)
    np.testing.assert_allclose(res.coords["SGD"][-1], 0.0, atol=1e-6)

    surf = res.loss_surface((x, y), loss_fn=F.cross_entropy, n=5, device="cpu", progress=False)
    (lo0, hi0), (lo1, hi1) = res.span()
    allc = np.concatenate(list(res.coords.values()))
    assert lo0 < allc[:, 0].min() and hi0 > allc[:, 0].max() and lo1 < allc[:, 1].min()
    assert surf.loss.shape == (5, 5) and np.isfinite(surf.loss).all()


def test_compare_optimizers_errors(gen):
    x, y = _data(gen, 8)
    data = [(x, y)]
    sgd = {"SGD": lambda p: torch.optim.SGD(p, lr=0.1)}
    with pytest.raises(ValueError, match="`optimizers` must be a non-empty dict"):
        fastscape.compare_optimizers(MLP(), data, {}, loss_fn=F.cross_entropy, epochs=1)
    with pytest.raises(ValueError, match="`origin` must be one of \\['SGD'\\]; got 'Adam'"):
        fastscape.compare_optimizers(MLP(), data, sgd, loss_fn=F.cross_entropy, epochs=1, origin="Adam")
    with pytest.raises(TypeError, match="`optimizers\\['bad'\\]` must return a torch.optim.Optimizer"):
        fastscape.compare_optimizers(MLP(), data, {"bad": lambda p: 3}, loss_fn=F.cross_entropy, epochs=1)
    with pytest.raises(TypeError, match="`model` must be an nn.Module or a callable returning one"):
        fastscape.compare_optimizers(3, data, sgd, loss_fn=F.cross_entropy, epochs=1)
    # a factory is called once
    res = fastscape.compare_optimizers(lambda: MLP(hidden=4), data, {**sgd, "Adam": lambda p: torch.optim.Adam(p)},
                                       loss_fn=F.cross_entropy, epochs=2)
    assert torch.equal(res.trajectories["SGD"].matrix()[0], res.trajectories["Adam"].matrix()[0])


# --------------------------------------------------------------------------- train: modes and batches


class _NetWithBNAndDropout(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.drop = torch.nn.Dropout(0.5)
        self.out = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.drop(self.bn(self.fc(x))))


def test_train_respects_submodules_in_eval_mode():
    torch.manual_seed(0)
    net = _NetWithBNAndDropout()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
    net.bn.eval()  # frozen BatchNorm: the user's choice; dropout stays in train mode
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)
    loader = [(x[:16], y[:16]), (x[16:], y[16:])]
    ref = copy.deepcopy(net)
    stats = net.bn.running_mean.clone()

    torch.manual_seed(1)
    fastscape.train(net, loader, loss_fn=F.cross_entropy, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                    epochs=2)
    assert [m.training for m in net.modules()] == [True, True, False, True, True]
    assert torch.equal(net.bn.running_mean, stats)

    # the reference: a hand-written loop that leaves the flags alone (same dropout draws)
    torch.manual_seed(1)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(ref(xb), yb).backward()
            opt.step()
    for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_train_takes_an_inputs_targets_pair_as_one_batch():
    from tests.integrity_case import make_case

    torch.manual_seed(0)
    a = MLP()
    b = copy.deepcopy(a)
    _, (x, y), _ = make_case()
    ta = fastscape.train(a, (x, y), loss_fn=F.cross_entropy, optimizer=torch.optim.SGD(a.parameters(), lr=0.1),
                         epochs=2)
    tb = fastscape.train(b, [(x, y)], loss_fn=F.cross_entropy, optimizer=torch.optim.SGD(b.parameters(), lr=0.1),
                         epochs=2)
    assert torch.equal(ta.matrix(), tb.matrix())
    assert ta.steps == [0, 1, 2]


def test_train_names_a_malformed_batch():
    from tests.integrity_case import make_case

    model = MLP()
    _, (x, y), _ = make_case()
    with pytest.raises(TypeError, match=r"`data` batch 0 must be an \(inputs, targets\) pair"):
        fastscape.train(model, [x], loss_fn=F.cross_entropy, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        epochs=1)
