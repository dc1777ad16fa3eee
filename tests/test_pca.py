"""PCA directions against scikit-learn, projection against numpy.linalg.lstsq, and the loss
along a path against a plain per-point loop."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
import fastscape._pca as pca_module
from tests.models import MLP, SmallCNN, trained_bn_stats


def _random_path(model, gen, T=9, scale=0.2):
    """A made-up path of parameter dicts: a drifting random walk that ends at the model's weights."""
    names = [n for n, _ in model.named_parameters()]
    final = {n: p.detach().clone() for n, p in model.named_parameters()}
    snaps, cur = [], {n: final[n] + torch.randn(final[n].shape, generator=gen) for n in names}
    for t in range(T - 1):
        snaps.append({n: v.clone() for n, v in cur.items()})
        cur = {n: v + (final[n] - v) * 0.3 + scale * torch.randn(v.shape, generator=gen) for n, v in cur.items()}
    snaps.append(final)
    return snaps


def _mat(snaps, names=None):
    names = names or list(snaps[0])
    return np.stack([torch.cat([s[k].reshape(-1) for k in names]).double().numpy() for s in snaps])


def _dmat(dirs, names):
    return np.stack([torch.cat([d[k].reshape(-1) for k in names]).double().numpy() for d in dirs])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_pca_equals_sklearn(gen, n):
    from sklearn.decomposition import PCA

    model = MLP()
    snaps = _random_path(model, gen, T=11)
    names = list(snaps[0])
    dirs, ratio = fastscape.pca_directions(snaps, n=n)
    X = _mat(snaps)
    ref = PCA(n_components=n, svd_solver="full").fit(X - X[-1])
    D = _dmat(dirs, names)
    assert isinstance(dirs, fastscape.Directions) and len(dirs) == n
    assert dirs.info["kind"] == "pca" and dirs.info["n_snapshots"] == 11
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-5)
    np.testing.assert_allclose(dirs.info["explained_variance"], ref.explained_variance_, rtol=1e-5)
    for i in range(n):
        sign = np.sign(D[i] @ ref.components_[i])
        np.testing.assert_allclose(sign * D[i], ref.components_[i], atol=2e-5)
    # unit norm, orthogonal, shaped like the parameters, float32 on the CPU
    np.testing.assert_allclose(D @ D.T, np.eye(n), atol=1e-5)
    for k, p in model.named_parameters():
        assert dirs[0][k].shape == p.shape and dirs[0][k].dtype == torch.float32
    # the start of the path sits on the negative side of every axis
    assert (fastscape.project(snaps, dirs)[0] < 0).all()


def test_pca_of_a_recorded_trajectory_equals_sklearn(gen):
    from sklearn.decomposition import PCA

    torch.manual_seed(0)
    model = MLP()
    x, y = torch.randn(64, 5, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    with fastscape.record(model, opt) as rec:
        for _ in range(15):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    traj = rec.trajectory
    dirs, ratio = fastscape.pca_directions(traj)
    X = traj.matrix().double().numpy()
    ref = PCA(n_components=2).fit(X - X[-1])
    D = _dmat(dirs, traj.names)
    np.testing.assert_allclose(np.abs(np.sum(D * ref.components_, axis=1)), 1.0, atol=1e-5)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-5)


def test_pca_recovers_a_planted_plane(gen):
    # snapshots = w* + a_t u + b_t v (+ tiny noise): the PCs span {u, v}
    P, T = 3000, 25
    u, v = torch.randn(P, generator=gen, dtype=torch.float64), torch.randn(P, generator=gen, dtype=torch.float64)
    t = torch.linspace(0, 1, T, dtype=torch.float64)
    coeff = torch.stack([3 * (1 - t), torch.sin(6 * t)], dim=1)
    W = 0.5 + coeff @ torch.stack([u, v]) + 1e-6 * torch.randn(T, P, generator=gen, dtype=torch.float64)
    snaps = [{"w": W[i].reshape(30, 100)} for i in range(T)]
    dirs, ratio = fastscape.pca_directions(snaps, n=2)
    D = _dmat(dirs, ["w"])
    Q, _ = np.linalg.qr(torch.stack([u, v]).numpy().T)  # orthonormal basis of the planted plane
    np.testing.assert_allclose(np.linalg.norm(D @ Q, axis=1), 1.0, atol=1e-8)
    assert ratio.sum() > 1 - 1e-9
    assert dirs[0]["w"].dtype == torch.float64


def test_pca_without_a_p_by_p_matrix(gen):
    # P = 3 million: a P x P matrix would need 72 TB; T x T with column chunks needs megabytes
    P, T = 3_000_000, 6
    base = torch.randn(P, generator=gen)
    steps = torch.randn(T, 3, generator=gen)
    basis = torch.randn(3, P, generator=gen)
    snaps = [{"w": base + steps[i] @ basis} for i in range(T)]
    dirs, ratio = fastscape.pca_directions(snaps, n=2)
    d = dirs[0]["w"].double()
    assert d.shape == (P,) and abs(float(d.norm()) - 1) < 1e-5
    # PC1 is the top right-singular vector of the centred matrix: check against the small problem
    X = torch.stack([s["w"] for s in snaps]).double()
    Xc = X - X.mean(0)
    s1 = torch.linalg.svdvals(Xc @ Xc.T)[0].sqrt()
    assert float((Xc @ d).norm()) == pytest.approx(float(s1), rel=1e-6)


def test_pca_chunking_gives_the_same_answer(gen, monkeypatch):
    model = MLP()
    snaps = _random_path(model, gen)
    whole, r1 = fastscape.pca_directions(snaps, n=2)
    monkeypatch.setattr(pca_module, "_CHUNK_ELEMS", 37)  # many tiny column chunks
    pieces, r2 = fastscape.pca_directions(snaps, n=2)
    np.testing.assert_allclose(r1, r2, rtol=1e-10)
    for a, b in zip(whole, pieces):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_pca_errors(gen):
    model = MLP()
    snaps = _random_path(model, gen, T=4)
    with pytest.raises(ValueError, match="`n` must be at most the number of snapshots minus one \\(3\\)"):
        fastscape.pca_directions(snaps, n=4)
    with pytest.raises(ValueError, match="`n` must be a positive integer; got 0"):
        fastscape.pca_directions(snaps, n=0)
    with pytest.raises(ValueError, match="does not move: all snapshots are equal"):
        fastscape.pca_directions([snaps[0]] * 3, n=1)
    line = [{"w": torch.ones(5) * t} for t in range(4)]
    with pytest.raises(ValueError, match="spans only 1 direction\\(s\\)"):
        fastscape.pca_directions(line, n=2)
    with pytest.raises(TypeError, match="`trajectory` must be a Trajectory or a list of parameter dicts"):
        fastscape.pca_directions(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="`trajectory` holds no snapshots"):
        fastscape.pca_directions([])
    bad = [dict(s) for s in snaps]
    bad[2]["net.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="`trajectory\\[2\\]\\['net.0.weight'\\]` has shape \\(3, 3\\)"):
        fastscape.pca_directions(bad)


def test_project_equals_lstsq_with_non_orthogonal_directions(gen):
    model = MLP()
    snaps = _random_path(model, gen)
    names = list(snaps[0])
    d1 = {k: torch.randn(v.shape, generator=gen) for k, v in snaps[0].items()}
    d2 = {k: 0.8 * d1[k] + 0.3 * torch.randn(v.shape, generator=gen) for k, v in snaps[0].items()}  # cos ~ 0.94
    d3 = {k: torch.randn(v.shape, generator=gen) * 2 for k, v in snaps[0].items()}
    X, D = _mat(snaps), _dmat([d1, d2, d3], names)
    for origin in (None, snaps[3]):
        o = X[-1] if origin is None else X[3]
        ref, *_ = np.linalg.lstsq(D.T, (X - o).T, rcond=None)
        coords, res = fastscape.project(snaps, [d1, d2, d3], origin=origin, return_residuals=True)
        assert coords.shape == (len(snaps), 3)
        np.testing.assert_allclose(coords, ref.T, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(res, np.linalg.norm((X - o) - ref.T @ D, axis=1), rtol=1e-6)
        np.testing.assert_allclose(fastscape.project(snaps, [d1, d2, d3], origin=origin), coords)
    # a point in the plane is recovered exactly, with no residual
    inside = [{k: snaps[-1][k] + 0.7 * d1[k] - 1.5 * d2[k] for k in names}, snaps[-1]]
    c, r = fastscape.project(inside, [d1, d2], return_residuals=True)
    np.testing.assert_allclose(c[0], [0.7, -1.5], atol=1e-5)
    assert r[0] < 1e-4 and r[1] == 0


def test_project_accepts_a_model_as_origin_and_spilled_trajectories(gen, tmp_path):
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(32, 5, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    with fastscape.record(model, opt, out=tmp_path / "p.f32") as rec:
        for _ in range(6):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    traj = rec.trajectory
    dirs = fastscape.random_directions(model, 2, seed=3)
    a = fastscape.project(traj, dirs, origin=model)
    b = fastscape.project([traj[i] for i in range(len(traj))], dirs)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a[-1], 0.0, atol=1e-7)


def test_project_errors(gen):
    model = MLP()
    snaps = _random_path(model, gen, T=3)
    d = {k: torch.ones_like(v) for k, v in snaps[0].items()}
    with pytest.raises(TypeError, match="`directions` must be a non-empty list of direction dicts; got dict"):
        fastscape.project(snaps, d)
    short = dict(d)
    short.pop("net.0.bias")
    with pytest.raises(ValueError, match="`directions\\[1\\]` must have the trajectory's keys; missing \\['net.0.bias'\\]"):
        fastscape.project(snaps, [d, short])
    wrong = {**d, "net.0.bias": torch.ones(2)}
    with pytest.raises(ValueError, match="`origin\\['net.0.bias'\\]` has shape \\(2,\\)"):
        fastscape.project(snaps, [d], origin=wrong)


def _loop_loss(model, params, x, y, loss_fn):
    """The loss at one point: copy ``params`` into a float64 copy of the model, eval mode."""
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        named = dict(m.named_parameters())
        for k, v in params.items():
            named[k].copy_(v.double())
        return float(loss_fn(m(x.double()), y))


def test_path_loss_matches_a_per_point_loop(gen):
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = torch.randn(20, 1, 8, 8, generator=gen), torch.randint(0, 4, (20,), generator=gen)
    trained_bn_stats(model, x)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    snaps = _random_path(model, gen, T=7, scale=0.05)
    names = list(snaps[0])

    # 1. at the snapshots themselves
    got = fastscape.path_loss(model, (x, y), snaps, loss_fn=F.cross_entropy, device="cpu", chunk_size=3)
    ref = [_loop_loss(model, s, x, y, F.cross_entropy) for s in snaps]
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-5)

    # 2. at the path's shadow on a plane (coordinates by least squares)
    dirs = [{k: 0.05 * torch.randn(p.shape, generator=gen) for k, p in model.named_parameters()} for _ in range(2)]
    X, D = _mat(snaps, names), _dmat(dirs, names)
    c, *_ = np.linalg.lstsq(D.T, (X - X[-1]).T, rcond=None)
    shadow = [{k: snaps[-1][k].double() + float(c[0, t]) * dirs[0][k].double() + float(c[1, t]) * dirs[1][k].double()
               for k in names} for t in range(len(snaps))]
    ref2 = [_loop_loss(model, s, x, y, F.cross_entropy) for s in shadow]
    got2 = fastscape.path_loss(model, (x, y), snaps, loss_fn=F.cross_entropy, directions=dirs, device="cpu")
    np.testing.assert_allclose(got2, ref2, rtol=2e-4, atol=1e-5)

    # 3. plain plane coordinates: the origin defaults to the model's weights
    coords = np.array([[0.0, 0.0], [0.3, -0.2], [-1.0, 0.5]])
    got3 = fastscape.path_loss(model, (x, y), coords, loss_fn=F.cross_entropy, directions=dirs, device="cpu",
                               batch_size=7)
    w = {k: p.detach() for k, p in model.named_parameters()}
    ref3 = [_loop_loss(model, {k: w[k] + a * dirs[0][k] + b * dirs[1][k] for k in names}, x, y, F.cross_entropy)
            for a, b in coords]
    np.testing.assert_allclose(got3, ref3, rtol=2e-4, atol=1e-5)

    # the model is untouched: weights, buffers and train flag
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert model.training


def test_path_loss_agrees_with_the_surface(gen):
    # the path's heights and the surface come from the same evaluator: at grid points they coincide
    torch.manual_seed(0)
    model = MLP()
    x, y = torch.randn(30, 5, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    dirs = fastscape.random_directions(model, 2, seed=0)
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 5), device="cpu",
                                  progress=False)
    coords = np.array([[-1.0, 0.5], [0.0, 0.0], [0.5, -0.5]])
    h = fastscape.path_loss(model, (x, y), coords, loss_fn=F.cross_entropy, directions=dirs, device="cpu")
    np.testing.assert_allclose(h, [surf.loss[0, 3], surf.loss[2, 2], surf.loss[3, 1]], rtol=1e-5)


def test_path_loss_errors(gen):
    model = MLP()
    x, y = torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)
    dirs = fastscape.random_directions(model, 2, seed=0)
    with pytest.raises(ValueError, match="`directions` is required when `trajectory` is an array"):
        fastscape.path_loss(model, (x, y), np.zeros((3, 2)), loss_fn=F.cross_entropy)
    with pytest.raises(ValueError, match="coordinates must have shape \\(T, 2\\); got \\(3, 3\\)"):
        fastscape.path_loss(model, (x, y), np.zeros((3, 3)), loss_fn=F.cross_entropy, directions=dirs)
    other = MLP(hidden=4)
    snaps = [{k: p.detach() for k, p in other.named_parameters()}] * 2
    with pytest.raises(ValueError, match="`trajectory`'s 'net.0.weight' has shape \\(4, 5\\)"):
        fastscape.path_loss(model, (x, y), snaps, loss_fn=F.cross_entropy)
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        fastscape.path_loss(snaps, (x, y), snaps, loss_fn=F.cross_entropy)


# --------------------------------------------------------------------------- the gradient steps' projection


def test_lr_steps_land_at_the_least_squares_coordinates_of_a_slanted_plane(gen):
    """``fastscape.lr_steps`` places the start and each landing by the same least squares as
    :func:`fastscape.project`: checked against numpy's lstsq on a plane whose directions are
    neither orthogonal nor holding every parameter (biases are zero in them), so the residuals
    are the parts of the steps the plane misses."""
    torch.manual_seed(0)
    model = MLP().double()
    x, y = torch.randn(40, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (40,), generator=gen)
    d1, d2 = fastscape.random_directions(model, 2, seed=3)
    d2 = {k: d2[k] + 0.5 * d1[k] for k in d1}  # slanted: 0.5 of d1 in d2
    lrs = [0.1, 1.0]
    steps = fastscape.lr_steps(model, (x, y), [d1, d2], loss_fn=F.cross_entropy, lrs=lrs)

    # the reference: autograd's gradient of the full-batch loss, and numpy's least squares
    names = [k for k, _ in model.named_parameters()]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, [p for _, p in model.named_parameters()])
    g = np.concatenate([t.detach().numpy().ravel() for t in grads])
    D = np.stack([np.concatenate([d[k].numpy().ravel() for k in names]) for d in (d1, d2)], axis=1)
    for lr, end, res in zip(lrs, steps.ends, steps.residuals):
        want, *_ = np.linalg.lstsq(D, -lr * g, rcond=None)
        np.testing.assert_allclose(end, want, rtol=1e-9, atol=1e-12)
        assert res == pytest.approx(np.linalg.norm(-lr * g - D @ want), rel=1e-9)
        assert res > 1e-6  # the plane misses the biases' part of the step
    np.testing.assert_allclose(steps.start, 0.0, atol=1e-12)
    assert steps.loss == pytest.approx(float(loss.detach()), rel=1e-12)
