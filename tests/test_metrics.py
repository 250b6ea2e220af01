"""World-model metrics: closed forms, independent references and the weight-loading paths.

Networks are randomly initialised and saved in the official file formats (lpips `vgg.pth`,
torchvision `vgg16-397923af.pth`, a TorchScript module with the StyleGAN-V I3D signature).
"""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from worldvla.eval import metrics as M
from worldvla.eval.video_metrics import fixtures
from worldvla.eval.video_metrics import weights as W

# ---------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    return fixtures.write_random_lpips(tmp_path_factory.mktemp("lpips"), seed=0)


@pytest.fixture(scope="module")
def lpips_model(lpips_files):
    lin, vgg = lpips_files
    with pytest.warns(UserWarning, match="sha256"):  # random weights: checksum differs from the real files
        return M.load_lpips(lin, vgg)


@pytest.fixture(scope="module")
def i3d_path(tmp_path_factory):
    return fixtures.write_tiny_i3d(tmp_path_factory.mktemp("i3d") / W.I3D_FILE, feature_dim=16)


@pytest.fixture(scope="module")
def i3d(i3d_path):
    return M.load_i3d(i3d_path, trusted_sha256=W.sha256_file(i3d_path))  # the opt-in: this exact file


def random_clips(rng, n, t, side=64, noise=0):
    """n uint8 clips (t, side, side, 3): smooth moving gradients (+ optional noise)."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    clips = []
    for i in range(n):
        phase = rng.uniform(0, 2 * np.pi, 3)
        frames = [np.stack([np.sin(2 * np.pi * (xx + 0.05 * f + i * 0.1) + p) * np.cos(3 * yy + p)
                            for p in phase], -1) for f in range(t)]
        arr = (np.stack(frames) * 0.5 + 0.5) * 255 + rng.normal(0, noise, (t, side, side, 3))
        clips.append(np.clip(arr, 0, 255).astype(np.uint8))
    return clips


# ---------------------------------------------------------------------------------------------------
# PSNR


@pytest.mark.parametrize("d", [0.01, 0.05, 0.2])
def test_psnr_constant_offset_closed_form(d):
    a = torch.full((2, 3, 16, 16), 0.4, dtype=torch.float64)
    got = M.psnr(a, a + d)
    expected = 10 * math.log10(1.0 / (d * d + 1e-8))  # piqa: epsilon added to the MSE
    torch.testing.assert_close(got, torch.full((2,), expected, dtype=torch.float64), rtol=0, atol=1e-9)
    assert abs(expected - 10 * math.log10(1 / d**2)) < 1e-3  # ~ 10 log10(1 / d^2)


def test_psnr_gaussian_noise_level(rng):
    sigma = 0.05
    a = torch.from_numpy(rng.uniform(0.3, 0.7, (1, 3, 128, 128)))
    b = a + torch.from_numpy(rng.normal(0, sigma, a.shape))
    assert abs(M.psnr(a, b).item() - 10 * math.log10(1 / sigma**2)) < 0.1


def test_identical_frames_give_perfect_scores(rng, lpips_model):
    x = torch.from_numpy(rng.uniform(0, 1, (3, 3, 32, 32))).float()
    assert torch.allclose(M.psnr(x, x), torch.full((3,), 80.0))  # 10 log10(1 / 1e-8)
    assert torch.allclose(M.ssim(x, x), torch.ones(3), atol=1e-6)
    assert torch.equal(M.lpips_distance(lpips_model, x, x), torch.zeros(3))


def test_uint8_inputs_are_channels_last(rng):
    u = rng.integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    v = rng.integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    t_u, t_v = M.to_unit(u), M.to_unit(v)
    assert t_u.shape == (2, 3, 20, 24) and t_u.max() <= 1
    torch.testing.assert_close(M.psnr(u, v), M.psnr(t_u, t_v))


# ---------------------------------------------------------------------------------------------------
# SSIM


def numpy_ssim(x, y, size=11, sigma=1.5, c1=0.01**2, c2=0.03**2):
    """Independent reference: explicit 2-D Gaussian window slid over every valid position."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r**2 / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for ch in range(x.shape[0]):
        px = np.lib.stride_tricks.sliding_window_view(x[ch], (size, size))
        py = np.lib.stride_tricks.sliding_window_view(y[ch], (size, size))
        mx, my = (px * w).sum((-1, -2)), (py * w).sum((-1, -2))
        vx = (((px - mx[..., None, None]) ** 2) * w).sum((-1, -2))
        vy = (((py - my[..., None, None]) ** 2) * w).sum((-1, -2))
        cxy = ((px - mx[..., None, None]) * (py - my[..., None, None]) * w).sum((-1, -2))
        s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


@pytest.mark.parametrize("noise", [0.02, 0.2, 1.0])
def test_ssim_matches_numpy_reference(rng, noise):
    x = rng.uniform(0, 1, (3, 37, 45))
    y = np.clip(x + rng.normal(0, noise, x.shape), 0, 1) if noise < 1 else rng.uniform(0, 1, x.shape)
    got = M.ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None]).item()
    assert abs(got - numpy_ssim(x, y)) < 1e-9
    got32 = M.ssim(torch.from_numpy(x).float()[None], torch.from_numpy(y).float()[None]).item()
    assert abs(got32 - numpy_ssim(x, y)) < 1e-4


def test_ssim_constant_images_closed_form():
    a, b = 0.3, 0.7
    c1 = 0.01**2
    x, y = torch.full((1, 3, 20, 20), a, dtype=torch.float64), torch.full((1, 3, 20, 20), b, dtype=torch.float64)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # no variance: only the luminance term remains
    assert abs(M.ssim(x, y).item() - expected) < 1e-12


def test_gaussian_window():
    g = M.gaussian_window(11, 1.5, torch.float64)
    assert g.shape == (11,) and abs(g.sum().item() - 1) < 1e-12 and g.argmax() == 5
    torch.testing.assert_close(g, g.flip(0))


# ---------------------------------------------------------------------------------------------------
# preprocessing


def test_resize_area_matches_opencv(rng):
    cv2 = pytest.importorskip("cv2")
    frames = rng.integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
    ref = np.stack([cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in frames])
    np.testing.assert_array_equal(M.resize_area(frames, 256), ref)
    for k in (3, 4, 8):  # other integer factors round half to even in OpenCV
        f = rng.integers(0, 256, (1, 24 * k, 24 * k, 3), dtype=np.uint8)
        np.testing.assert_array_equal(M.resize_area(f, 24)[0], cv2.resize(f[0], (24, 24), interpolation=cv2.INTER_AREA))
    odd = rng.integers(0, 256, (1, 300, 200, 3), dtype=np.uint8)
    np.testing.assert_array_equal(M.resize_area(odd, 256)[0], cv2.resize(odd[0], (256, 256),
                                                                          interpolation=cv2.INTER_AREA))


def test_resize_area_box_mean_without_opencv(rng):
    frames = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    out = M.resize_area(frames, 32)
    block = frames[1, 3:6, 6:9, 2].astype(float).mean()
    assert out.shape == (3, 32, 32, 3) and abs(int(out[1, 1, 2, 2]) - block) <= 0.5
    assert M.resize_area(frames, 96) is frames
    clip = M.preprocess_clip(frames, 32)
    assert clip.shape == (3, 3, 32, 32) and clip.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------
# LPIPS


def reference_lpips(lin_sd, vgg_sd, x, y):
    """Functional LPIPS-VGG straight from the two state dicts (lpips package semantics)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    convs = sorted({int(k.split(".")[1]) for k in vgg_sd})
    pools_after = {3, 8, 15, 22}  # relu indices followed by a max pool inside the five stages
    taps = {3, 8, 15, 22, 29}  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3

    def feats(img):
        h, out = (img - shift) / scale, []
        for i in convs:
            h = F.relu(F.conv2d(h, vgg_sd[f"features.{i}.weight"], vgg_sd[f"features.{i}.bias"], padding=1))
            if i + 1 in taps:
                out.append(h)
            if i + 1 in pools_after:
                h = F.max_pool2d(h, 2)
        return out

    total = 0
    for k, (a, b) in enumerate(zip(feats(x), feats(y))):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        total = total + ((a - b) ** 2 * lin_sd[f"lin{k}.model.1.weight"]).sum(1).mean((1, 2))
    return total


def test_lpips_random_weights_official_formats(lpips_files, lpips_model, rng):
    lin, vgg = lpips_files
    lin_sd, vgg_sd = torch.load(lin, weights_only=True), torch.load(vgg, weights_only=True)
    assert "lin0.model.1.weight" in lin_sd and "features.0.weight" in vgg_sd and "features.28.bias" in vgg_sd
    x = torch.from_numpy(rng.uniform(0, 1, (2, 3, 32, 32))).float()
    y = torch.from_numpy(rng.uniform(0, 1, (2, 3, 32, 32))).float()
    d_xy = M.lpips_distance(lpips_model, x, y)
    d_yx = M.lpips_distance(lpips_model, y, x)
    torch.testing.assert_close(d_xy, d_yx, rtol=1e-5, atol=1e-6)  # symmetric
    assert (d_xy > 0).all()
    assert torch.equal(M.lpips_distance(lpips_model, x, x), torch.zeros(2))
    with torch.no_grad():
        ref = reference_lpips(lin_sd, vgg_sd, 2 * x - 1, 2 * y - 1)
    torch.testing.assert_close(d_xy, ref, rtol=1e-4, atol=1e-6)
    assert lpips_model.sources["lpips_lin"]["path"] == str(lin)


def test_lpips_missing_weights_raise_clear_error(tmp_path, lpips_files, monkeypatch):
    monkeypatch.delenv(W.METRICS_DIR_ENV, raising=False)
    monkeypatch.setattr(W, "_lpips_package_file", lambda name: None)
    monkeypatch.setattr(W, "_torch_hub_file", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"metrics/vgg\.pth.*lpips"):
        M.load_lpips(metrics_dir=tmp_path / "metrics")
    with pytest.raises(M.MissingWeightsError, match=r"vgg16-397923af\.pth"):
        M.load_lpips(lpips_files[0], metrics_dir=tmp_path / "metrics", verify=False)
    with pytest.raises(FileNotFoundError, match="ckpts/metrics"):
        M.load_lpips(tmp_path / "nope.pth")


def test_lpips_rejects_wrong_file(tmp_path, lpips_files):
    bad = tmp_path / "bad.pth"
    torch.save({"lin0.model.1.weight": torch.ones(1, 3, 1, 1)}, bad)
    with pytest.raises(KeyError, match="lin0"):
        M.load_lpips(bad, lpips_files[1], verify=False)


# ---------------------------------------------------------------------------------------------------
# FVD


def scipy_frechet(a, b, eps=1e-6):
    """Direct computation from two feature matrices."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a = np.cov(a, rowvar=False, bias=True) + eps * np.eye(a.shape[1])
    s_b = np.cov(b, rowvar=False, bias=True) + eps * np.eye(b.shape[1])
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_reference(rng):
    a = rng.normal(0, 1, (200, 12)).astype(np.float32)
    b = (rng.normal(0.3, 1.5, (150, 12)) @ rng.normal(0, 0.5, (12, 12))).astype(np.float32)
    got = M.fvd_from_features(a, b)
    ref = scipy_frechet(a.astype(np.float64), b.astype(np.float64))
    assert abs(got - ref) <= 1e-8 * max(1.0, abs(ref))
    stats = M.FeatureStats()
    stats.append(a[:70])
    stats.append(a[70:])
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(cov, np.cov(a, rowvar=False, bias=True), atol=1e-10)
    np.testing.assert_allclose(mu, a.mean(0, dtype=np.float64), atol=1e-12)


def test_frechet_distance_closed_forms(rng):
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s = np.diag(rng.uniform(0.5, 2.0, d))
    assert abs(M.frechet_distance(mu1, s, mu2, s) - ((mu1 - mu2) ** 2).sum()) < 1e-9  # equal covariances
    s2 = 4 * s  # commuting covariances: tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(a) - sqrt(b))^2
    expected = ((np.sqrt(np.diag(s) + 1e-6) - np.sqrt(np.diag(s2) + 1e-6)) ** 2).sum()
    assert abs(M.frechet_distance(mu1, s, mu1, s2) - expected) < 1e-9
    a = rng.normal(size=(40, 16))
    assert abs(M.fvd_from_features(a, a)) < 1e-6


def test_i3d_torchscript_loading_and_fvd_of_set_with_itself(i3d, i3d_path, rng):
    assert isinstance(i3d.module, torch.jit.ScriptModule) and i3d.sha256 == W.sha256_file(i3d_path)
    clips = torch.stack([M.preprocess_clip(c) for c in random_clips(rng, 5, 10, side=64)])  # (5, 10, 3, 256, 256)
    feats = i3d(clips)
    assert feats.shape == (5, 16)  # return_features=True: features, not the 5 logits
    assert abs(M.fvd_from_features(feats, feats)) < 1e-6
    other = torch.stack([M.preprocess_clip(c // 3) for c in random_clips(rng, 5, 10, side=64)])
    assert M.fvd_from_features(feats, i3d(other)) > 1e-3


def test_i3d_checksum_and_missing_file(i3d_path, tmp_path, monkeypatch):
    from worldvla.eval.video_metrics.fvd import UntrustedTorchScriptError

    monkeypatch.delenv(W.METRICS_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # default folder: ./ckpts/metrics
    with pytest.raises(UntrustedTorchScriptError, match=f"not the trusted I3D sha256 {W.I3D_SHA256}"):
        M.load_i3d(i3d_path)  # default: only the published file's checksum is trusted
    with pytest.raises(UntrustedTorchScriptError):  # a digest prefix is not a pin
        M.load_i3d(i3d_path, trusted_sha256=W.sha256_file(i3d_path)[:8])
    with pytest.raises(FileNotFoundError, match=r"ckpts/metrics/i3d_torchscript\.pt"):
        M.load_i3d()
    with pytest.raises(FileNotFoundError, match="dropbox"):
        M.load_i3d(tmp_path / "i3d.pt")


class MarkerOnLoad(torch.nn.Module):
    """A TorchScript module whose __setstate__ (run by torch.jit.load) creates the file `marker`."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.buf = torch.zeros(1, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker, self.training = state[0], state[1]
        self.buf = torch.from_file(self.marker, True, 1, dtype=torch.uint8)  # shared=True creates the file


def test_torchscript_payload_is_refused_before_it_runs(tmp_path, capsys):
    from worldvla.eval.video_metrics.__main__ import main
    from worldvla.eval.video_metrics.fvd import UntrustedTorchScriptError

    marker = tmp_path / "PWNED"
    path = tmp_path / "metrics" / W.I3D_FILE
    path.parent.mkdir()
    torch.jit.save(torch.jit.script(MarkerOnLoad(str(marker))), str(path))
    assert not marker.exists()
    digest = W.sha256_file(path)
    with pytest.raises(UntrustedTorchScriptError) as err:
        M.load_i3d(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and digest in msg and W.I3D_SHA256 in msg and "\n" not in msg
    with pytest.raises(UntrustedTorchScriptError):
        M.load_i3d(metrics_dir=path.parent)  # the default location: same check
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a--episode=1--success=gt--.mp4").write_bytes(b"")
    (videos / "a--episode=1--success=inf--.mp4").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:  # the CLI, FVD only: one line, no traceback
        main([str(videos), "suite=s", f"out_dir={tmp_path / 'out'}", f"metrics_dir={path.parent}",
              "metrics=[fvd]", "kinds=[inf]"])
    assert exit_.value.code == 2 and capsys.readouterr().err == f"error: {msg}\n"
    assert not marker.exists()
    M.load_i3d(path, trusted_sha256=digest)  # the explicit opt-in loads it, and so runs its code:
    assert marker.exists()  # the payload is live, the refusal above is what kept it from running


# ---------------------------------------------------------------------------------------------------
# evaluation over clips + report


def test_evaluate_sets_per_frame_and_report(lpips_model, i3d, rng, tmp_path):
    gt = random_clips(rng, 4, 6, side=32)
    gt.append(random_clips(rng, 1, 3, side=32)[0])  # too short: skipped, and listed
    noisy = [np.clip(c.astype(int) + rng.integers(-40, 41, c.shape), 0, 255).astype(np.uint8) for c in gt]
    noisy[1] = noisy[1][:5]  # a shorter generated clip truncates its trajectory
    res = M.evaluate_sets(gt, {"gt_recons": gt, "inf": noisy}, lpips=lpips_model, i3d=i3d, size=32,
                          min_frames=4, fvd_horizons=[4, 6], batch_size=8)
    same, inf = res["gt_recons"], res["inf"]
    assert same["num_clips"] == inf["num_clips"] == 4 and len(same["skipped"]) == 1
    assert [row["frames"] for row in inf["per_clip"]] == [6, 5, 6, 6]
    assert same["summary"]["psnr"] == pytest.approx(80.0)
    assert same["summary"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert same["summary"]["lpips"] == 0.0
    assert abs(same["summary"]["fvd"]) < 1e-6 and abs(same["fvd_by_horizon"]["4"]["fvd"]) < 1e-6
    assert len(inf["per_frame"]["psnr"]) == 6 and inf["per_frame"]["count"][-1] == 3
    assert inf["summary"]["psnr"] < 40 and inf["summary"]["ssim"] < 0.99 and inf["summary"]["lpips"] > 0
    assert inf["summary"]["fvd"] > 0 and inf["fvd_by_horizon"]["6"]["clips"] == 3
    # set mean = mean over clips of per-clip frame means (official averaging)
    assert inf["summary"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in inf["per_clip"]]))

    paths = M.write_metrics_report(res, tmp_path / "report", "libero_goal_val_ind")
    data = json.loads(paths["json"].read_text())
    assert set(data["results"]) == {"gt_recons", "inf"}
    md = paths["markdown"].read_text()
    assert "| Model | FVD↓ | PSNR↑ | SSIM↑ | LPIPS↓ | clips |" in md
    assert "| gt_recons | 0.00 | 80.00 | 100.00 | 0.00 | 4 |" in md  # SSIM, LPIPS x 100
    for key in ("psnr", "ssim", "lpips", "fvd"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_clips_requires_weights_unless_deselected(rng, tmp_path, monkeypatch):
    monkeypatch.setattr(W, "_lpips_package_file", lambda name: None)
    monkeypatch.setattr(W, "_torch_hub_file", lambda name: None)
    gt = random_clips(rng, 2, 10, side=32)
    with pytest.raises(FileNotFoundError):
        M.evaluate_clips(gt, gt, size=32, metrics_dir=tmp_path)
    res = M.evaluate_clips(gt, gt, size=32, metrics=("psnr", "ssim"), metrics_dir=tmp_path)
    assert set(res["summary"]) == {"mse", "psnr", "ssim"}
    paths = M.write_metrics_report(res, tmp_path, "pixels only")
    assert "lpips" not in paths and "fvd" not in paths and paths["psnr"].exists()
    assert "| generated | - | 80.00 | 100.00 | - | 2 |" in paths["markdown"].read_text()


def test_official_video_folder_pairing(tmp_path, rng):
    imageio = pytest.importorskip("imageio.v2")
    clip = random_clips(rng, 1, 10, side=64)[0]
    stem = "2025_01_01-task=goal--episode=3--success={}--view=third.mp4"
    for kind in ("gt", "gt_recons", "inf"):
        imageio.mimwrite(tmp_path / stem.format(kind), list(clip), fps=10, macro_block_size=1)
    imageio.mimwrite(tmp_path / stem.replace("episode=3", "episode=4").format("gt"), list(clip), fps=10,
                     macro_block_size=1)  # no generated partner: ignored
    names, gts, gens = M.find_official_videos(tmp_path)
    assert len(names) == 1 and gens["inf"][0].name == stem.format("inf")
    video = M.read_video(gts[0])
    assert video.shape == (10, 64, 64, 3) and video.dtype == np.uint8
    assert np.abs(video.astype(int) - clip).mean() < 12  # lossy codec


# ---------------------------------------------------------------------------------------------------
# parity with the libraries the official script uses (run only where they are installed)


def test_parity_with_piqa(rng):
    piqa = pytest.importorskip("piqa")
    x = torch.from_numpy(rng.uniform(0, 1, (3, 3, 64, 64))).float()
    y = (x + 0.1 * torch.from_numpy(rng.normal(size=x.shape)).float()).clamp(0, 1)
    ref_psnr = piqa.PSNR(epsilon=1e-08, value_range=1.0, reduction="none")(x, y)
    ref_ssim = piqa.SSIM(window_size=11, sigma=1.5, n_channels=3, reduction="none")(x, y)
    torch.testing.assert_close(M.psnr(x, y), ref_psnr)
    torch.testing.assert_close(M.ssim(x, y), ref_ssim)


def test_parity_with_lpips_package(tmp_path, rng):
    lpips = pytest.importorskip("lpips")
    ref = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()  # package lin weights, random backbone
    backbone = {}
    for s in range(1, 6):
        for k, v in getattr(ref.net, f"slice{s}").state_dict().items():
            backbone[f"features.{k}"] = v
    torch.save(backbone, tmp_path / W.VGG16_FILE)
    ours = M.load_lpips(vgg_path=tmp_path / W.VGG16_FILE, metrics_dir=tmp_path, verify=False)
    x = torch.from_numpy(rng.uniform(-1, 1, (2, 3, 32, 32))).float()
    y = torch.from_numpy(rng.uniform(-1, 1, (2, 3, 32, 32))).float()
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y), ref(x, y).flatten())
