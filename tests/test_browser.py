"""The written HTML pages render in a real browser: headless Chromium, driven over
``--remote-debugging-pipe`` (the Chrome DevTools Protocol on file descriptors 3
and 4), loads each page from disk, waits for plotly to draw, takes a screenshot
and collects every JavaScript exception and console error.

Skipped only when no Chromium/Chrome binary exists (CI installs Debian's).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import subprocess
import tempfile
import time

import numpy as np
import pytest
import torch
from torch import nn

import fastscape
from fastscape import plot
from fastscape._surface import Surface
from fastscape.plot._save import find_chrome

CHROME = find_chrome()
pytestmark = pytest.mark.skipif(CHROME is None, reason="no Chromium/Chrome binary on this machine")


class Chromium:
    """A minimal CDP client over Chromium's debugging pipe (no network port, no extra package)."""

    def __init__(self, binary: str, width: int = 1280, height: int = 800):
        self.profile = tempfile.TemporaryDirectory(prefix="fastscape-chromium-")
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        os.set_inheritable(to_chrome_r, True)
        os.set_inheritable(from_chrome_w, True)
        # the child must see the pipe ends as fds 3 (commands in) and 4 (replies out);
        # lift both above 4 first so neither dup2 can clobber the other
        def child_fds():
            high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--enable-unsafe-swiftshader", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={self.profile.name}",
             f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, pass_fds=(3, 4),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        try:
            self._attach(width, height)
        except BaseException:
            self.close()
            raise

    def _attach(self, width, height):
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(domain, session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _read(self, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the debugging pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, *, session: bool = False, timeout: float = 30.0, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                        returnByValue=True)
        return res.get("result", {}).get("value")

    def open(self, url: str, *, ready: str = "true", timeout: float = 30.0):
        """Load ``url``; wait until ``ready`` (a JS expression) is true; return (png bytes, errors)."""
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        end = time.monotonic() + timeout
        while self.evaluate("document.readyState") != "complete" or not self.evaluate(ready):
            if time.monotonic() > end:
                raise TimeoutError(f"{url} did not become ready: {ready}")
            time.sleep(0.1)
        # two animation frames so WebGL scenes have painted
        self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))))")
        png = base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])
        return png, self.errors()

    def errors(self) -> list[str]:
        # drain events that arrived after the last reply
        while select.select([self._r], [], [], 0.05)[0] or b"\0" in self._buf:
            self.events.append(self._read(1.0))
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it may close the pipe before answering
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        self.profile.cleanup()


@pytest.fixture(scope="module")
def browser():
    b = Chromium(CHROME)
    yield b
    b.close()


PLOT_READY = ("(() => { const g = document.querySelector('.js-plotly-plot');"
              " return !!(g && g._fullLayout && g.querySelector('.main-svg')); })()")


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _check_rendered(browser, path):
    png, errors = browser.open(path.resolve().as_uri(), ready=PLOT_READY)
    px = _pixels(png)
    assert errors == [], f"JavaScript errors in {path.name}: {errors}"
    assert px.shape[0] > 100 and px.shape[1] > 100
    colours = np.unique(px.reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"{path.name} rendered almost uniformly ({len(colours)} colours)"
    # the plot, not just a white page with axes: a good share of non-white pixels
    assert (px.min(axis=2) < 235).mean() > 0.01
    text = browser.evaluate("document.body.innerText")
    assert "WebGL is not supported" not in (text or "")
    return px


# ------------------------------------------------------------------ the checker itself can fail


def test_checker_sees_javascript_errors(browser, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><p>x</p><script>console.error('boom'); undefinedFunction();</script></body></html>")
    _, errors = browser.open(page.as_uri())
    assert any("boom" in e for e in errors)
    assert any("undefinedFunction" in e for e in errors)


def test_checker_sees_a_blank_page(browser, tmp_path):
    page = tmp_path / "blank.html"
    page.write_text("<html><body style='background:#fff'></body></html>")
    png, errors = browser.open(page.as_uri())
    assert errors == []
    assert len(np.unique(_pixels(png).reshape(-1, 3), axis=0)) == 1


# ------------------------------------------------------------------ every plotly view


def _plane():
    x = np.linspace(-1, 1, 25)
    y = np.linspace(-2, 2, 31)
    loss = (x[:, None] ** 2 + 0.5 * y[None, :] ** 2 + 0.1).copy()
    loss[:3, :3] = np.inf  # a diverged corner: a gap
    return Surface(coords=[x, y], loss=loss)


def test_surface3d_renders(browser, tmp_path):
    path = np.stack([np.linspace(-0.8, 0, 10), np.linspace(1.5, 0, 10)], axis=1)
    fig = plot.surface3d(_plane(), path=path, points={"A": (0.5, -1.0)})
    _check_rendered(browser, plot.save(fig, tmp_path / "surface.html"))


def test_volume_renders(browser, tmp_path):
    c = np.linspace(-1, 1, 9)
    loss = c[:, None, None] ** 2 + c[None, :, None] ** 2 + 2 * c[None, None, :] ** 2
    vol = Surface(coords=[c, c, c], loss=loss)
    for kind in ("isosurface", "slices"):
        _check_rendered(browser, plot.save(plot.volume(vol, kind=kind), tmp_path / f"volume_{kind}.html"))


def test_animations_render(browser, tmp_path):
    path = np.stack([np.linspace(-0.8, 0, 12), np.linspace(1.5, 0, 12)], axis=1)
    fig = plot.animate_path(_plane(), path)
    _check_rendered(browser, plot.save(fig, tmp_path / "path.html"))
    # play it: the animation runs without error and the path grows
    browser.evaluate("Plotly.animate(document.querySelector('.js-plotly-plot'), null,"
                     " {frame: {duration: 0, redraw: true}, transition: {duration: 0}})"
                     ".then(() => 1)")
    n = browser.evaluate("document.querySelector('.js-plotly-plot')._fullData[1].x.length")
    assert n == len(path)
    assert browser.errors() == []

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 4), nn.Sigmoid(), nn.Linear(4, 1))
    snaps = [{k: v * s for k, v in net.state_dict().items()} for s in (0.5, 1.0, 1.5)]
    x = torch.linspace(-2, 2, 200).reshape(-1, 1)
    pred = fastscape.snapshot_predictions(net, snaps, x)
    fig = plot.animate_fit(pred, data=(x, torch.sin(x)))
    _check_rendered(browser, plot.save(fig, tmp_path / "fit.html"))


def test_hidden_space_renders(browser, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 2))
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    y = (x.norm(dim=1) > 1).long()
    fig = plot.hidden_space(fastscape.hidden_activations(net, x), y)
    _check_rendered(browser, plot.save(fig, tmp_path / "hidden.html"))


# ------------------------------------------------------------------ pages that read at a glance

RECTS = """(sel => [...document.querySelectorAll(sel)].map(e => { const q = e.getBoundingClientRect();
    return {text: e.textContent, l: q.left, t: q.top, r: q.right, b: q.bottom}; }))"""


def _rects(browser, selector):
    return browser.evaluate(f"{RECTS}({json.dumps(selector)})")


def _apart(a, b) -> bool:
    return a["r"] <= b["l"] or b["r"] <= a["l"] or a["b"] <= b["t"] or b["b"] <= a["t"]


@pytest.mark.parametrize("size", [(1280, 800), (800, 600)])
def test_pages_fill_the_window(browser, tmp_path, size):
    """Every plotly page takes the whole window, whatever its size: no blank quarter, no scroll bars."""
    path = np.stack([np.linspace(-0.8, 0, 10), np.linspace(1.5, 0, 10)], axis=1)
    c = np.linspace(-1, 1, 9)
    pages = {"surface": plot.surface3d(_plane(), path=path), "path": plot.animate_path(_plane(), path),
             "volume": plot.volume(Surface(coords=[c, c, c], loss=c[:, None, None] ** 2 + c[None, :, None] ** 2
                                                                   + c[None, None, :] ** 2))}
    browser.call("Emulation.setDeviceMetricsOverride", session=True, width=size[0], height=size[1],
                 deviceScaleFactor=1, mobile=False)
    try:
        for name, fig in pages.items():
            page = plot.save(fig, tmp_path / f"{name}.html")
            png, errors = browser.open(page.resolve().as_uri(), ready=PLOT_READY)
            assert errors == []
            (div,) = _rects(browser, ".js-plotly-plot")
            assert (div["l"], div["t"]) == (0, 0) and (div["r"], div["b"]) == size, name
            scroll = browser.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            assert tuple(scroll) == size, name
            # drawn content reaches into the right and bottom quarters of the window
            ink = _pixels(png).min(axis=2) < 230
            rows, cols = np.nonzero(ink)
            assert cols.max() > 0.8 * size[0] and rows.max() > 0.75 * size[1], name
    finally:
        browser.call("Emulation.setDeviceMetricsOverride", session=True, width=1280, height=800,
                     deviceScaleFactor=1, mobile=False)


@pytest.mark.parametrize("size", [(1280, 800), (700, 600)])
def test_play_pause_leave_the_slider_label_visible(browser, tmp_path, size):
    path = np.stack([np.linspace(-0.8, 0, 12), np.linspace(1.5, 0, 12)], axis=1)
    page = plot.save(plot.animate_path(_plane(), path), tmp_path / "path.html")
    browser.call("Emulation.setDeviceMetricsOverride", session=True, width=size[0], height=size[1],
                 deviceScaleFactor=1, mobile=False)
    try:
        _, errors = browser.open(page.resolve().as_uri(), ready=PLOT_READY)
        assert errors == []
        buttons = _rects(browser, ".updatemenu-button")
        assert [b["text"] for b in buttons] == ["Play", "Pause"]
        (label,) = [t for t in _rects(browser, ".slider-container text") if t["text"].startswith("recorded snapshot")]
        for b in buttons:
            assert _apart(b, label), (b, label)
        # the whole label is inside the window
        assert label["l"] >= 0 and label["r"] <= size[0] and label["b"] <= size[1]
    finally:
        browser.call("Emulation.setDeviceMetricsOverride", session=True, width=1280, height=800,
                     deviceScaleFactor=1, mobile=False)
