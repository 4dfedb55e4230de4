"""tcae.losses: L1, LPIPS loading, PatchGAN / hinge / adaptive weight / LeCam, and iBOT.

The iBOT loss is checked against `reference_ibot`, a plain re-computation of its formula with explicit
loops over views, images and tokens (torch.softmax / torch.log, float64), independent of the einsum /
boolean-gather code path of `IBOTLoss`.
"""

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tcae.data import MaskedTokens
from tcae.losses import (
    Center,
    IBOTHead,
    IBOTLoss,
    LeCam,
    LPIPSLoss,
    PatchDiscriminator,
    adaptive_gan_loss,
    build_perceptual,
    hinge_d_loss,
    hinge_g_loss,
    l1_loss,
    load_lpips,
    sinkhorn_knopp,
    teacher_temperature,
)


def ibot(crit, s_cls, t_cls, s_patch, t_patch, masks, teacher_temp):
    """IBOTLoss on full (V*B, n, K) patch outputs and bool masks, as the trainer feeds it: the masked rows
    gathered by host-computed MaskedTokens."""
    mt = MaskedTokens.from_masks(masks)
    return crit(s_cls, t_cls, mt.gather(s_patch), mt.gather(t_patch), mt.weight, mt.num_views, teacher_temp)


VGG_FILE = "vgg16-397923af.pth"
VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


def test_l1_loss():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), -0.5)
    b[0, 0, 0, 0] = 1.5
    assert l1_loss(a, b).item() == pytest.approx((0.5 * (96 - 1) + 1.5) / 96)


# ---------------------------------------------------------------------------------------------- LPIPS
@pytest.fixture(scope="module")
def vgg_hub(tmp_path_factory):
    """A torch hub dir whose checkpoints/ holds a torchvision-format VGG16 file with RANDOM weights.

    Only the `features.*` entries (what LPIPS reads) plus one classifier entry (ignored) are saved, to
    keep the file small; the keys are exactly torchvision's. Values computed with it are not LPIPS.
    """
    import torchvision

    hub = tmp_path_factory.mktemp("hub")
    (hub / "checkpoints").mkdir()
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in torchvision.models.vgg16(weights=None).features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)
    torch.save(state, hub / "checkpoints" / VGG_FILE)
    return hub, state


def test_backbone_urls_are_torchvisions():
    import torchvision.models as tvm

    from tcae.losses.perceptual import backbone_url

    assert backbone_url("vgg") == tvm.VGG16_Weights.IMAGENET1K_V1.url == VGG_URL
    assert backbone_url("alex") == tvm.AlexNet_Weights.IMAGENET1K_V1.url
    assert backbone_url("squeeze") == tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1.url


def test_lpips_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        LPIPSLoss()
    msg = str(err.value)
    assert VGG_FILE in msg and str(tmp_path / "hub" / "checkpoints" / VGG_FILE) in msg and VGG_URL in msg
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_lpips(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=VGG_FILE):
        build_perceptual("lpips")
    assert build_perceptual("none") is None
    with pytest.raises(ValueError, match="unknown perceptual"):
        build_perceptual("l2")


def test_lpips_loads_backbone_from_explicit_path(vgg_hub):
    hub, state = vgg_hub
    loss = LPIPSLoss(backbone_weights=hub / "checkpoints" / VGG_FILE)
    # the trunk holds the file's weights (layer index 10 lives in lpips' third slice)
    trunk = loss.net.net.state_dict()
    assert torch.equal(trunk["slice3.10.weight"], state["features.10.weight"])
    assert torch.equal(trunk["slice5.28.bias"], state["features.28.bias"])
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training and not loss.net.training

    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    d = loss(y, x)  # random backbone: only the mechanism is checked, the value is not LPIPS
    assert d.ndim == 0 and torch.isfinite(d) and d.item() >= 0
    d.backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-7)


def test_lpips_default_path_and_eval_loader(vgg_hub, monkeypatch):
    hub, _ = vgg_hub
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    net = load_lpips()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.path == hub / "checkpoints" / VGG_FILE
    bad = hub / "not_vgg.pth"
    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision vgg state dict"):
        LPIPSLoss(backbone_weights=bad)


# ---------------------------------------------------------------------------------------------- GAN
def test_hinge_losses_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = 0, 0.5, 2  -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + f) = 0, 1, 2    -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(5 / 6 + 1)
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)
    assert hinge_d_loss(torch.full((2, 1, 3, 3), 1.0), torch.full((2, 1, 3, 3), -1.0)).item() == 0.0


def test_adaptive_gan_loss_equals_the_direct_form():
    """w from the direct last-layer gradients; value and every trained parameter's gradient as
    (rec + gan_weight * w * g).backward() gives, the discriminator (frozen for L_G) untouched."""
    torch.manual_seed(0)
    body, last = torch.nn.Linear(6, 8), torch.nn.Linear(8, 12)  # a "decoder": body, then its last layer
    disc = torch.nn.Linear(12, 1).requires_grad_(False)
    h, target = torch.randn(5, 6), torch.randn(5, 12)

    def losses():
        out = last(torch.tanh(body(h)))
        return out, (out - target).abs().mean() + 0.1 * out.pow(2).mean(), hinge_g_loss(disc(out))

    # direct form: two backward passes to the last layer, then the loss
    _, rec, g = losses()
    grad_rec, grad_g = (torch.autograd.grad(t, last.weight, retain_graph=True)[0] for t in (rec, g))
    w_direct = grad_rec.norm() / (grad_g.norm() + 1e-4)
    (rec + 0.5 * w_direct * g).backward()
    trained = {**{f"body.{n}": p for n, p in body.named_parameters()},
               **{f"last.{n}": p for n, p in last.named_parameters()}}
    direct = {n: p.grad.clone() for n, p in trained.items()}
    direct_value = (rec + 0.5 * w_direct * g).item()
    for p in trained.values():
        p.grad = None

    out, rec, g = losses()
    loss, w = adaptive_gan_loss(out, rec, g, last.weight, gan_weight=0.5)
    assert not w.requires_grad and w.item() == pytest.approx(w_direct.item(), rel=1e-5)
    assert loss.item() == pytest.approx(direct_value, rel=1e-6)
    loss.backward()
    for n, p in trained.items():
        torch.testing.assert_close(p.grad, direct[n], rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")
    assert all(p.grad is None for p in disc.parameters())
    out, rec, g = losses()
    assert adaptive_gan_loss(out, rec, g, last.weight, 0.5, max_weight=1e-3)[1].item() == pytest.approx(1e-3)


@pytest.mark.parametrize("size,out", [(32, 2), (64, 6)])
def test_patch_discriminator_shape_and_per_sample(size, out):
    torch.manual_seed(0)
    disc = PatchDiscriminator(3, base_channels=16, num_layers=3)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in disc.modules())
    x = torch.randn(3, 3, size, size)
    logits = disc(x)
    assert logits.shape == (3, 1, out, out)
    # GroupNorm: a sample's logits do not depend on the rest of the batch
    torch.testing.assert_close(disc(x[:1]), logits[:1], rtol=1e-4, atol=1e-5)


def test_lecam_ema_and_regulariser():
    lc = LeCam(decay=0.99)
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    # EMAs start at 0: relu(real - 0)^2 -> (1 + 9) / 2 ; relu(0 - fake)^2 -> (4 + 0) / 2
    assert lc(real, fake).item() == pytest.approx(5.0 + 2.0)
    lc.update(real, fake)
    assert lc.ema_real.item() == pytest.approx(0.01 * 2.0)
    assert lc.ema_fake.item() == pytest.approx(0.01 * -1.0)
    lc.update(real, fake)
    assert lc.ema_real.item() == pytest.approx(0.99 * 0.02 + 0.02)
    er, ef = lc.ema_real.item(), lc.ema_fake.item()
    expect = (max(1 - ef, 0) ** 2 + max(3 - ef, 0) ** 2) / 2 + (max(er + 2, 0) ** 2 + max(er - 0, 0) ** 2) / 2
    assert lc(real, fake).item() == pytest.approx(expect)
    assert set(lc.state_dict()) == {"ema_real", "ema_fake"}


# ---------------------------------------------------------------------------------------------- iBOT
def plain_sinkhorn(logits, temp, iters=3):
    """Sinkhorn-Knopp written out: K x N matrix, row (prototype) then column (sample) scaling."""
    q = torch.exp(logits.double() / temp).T.clone()
    q = q / q.sum()
    k, n = q.shape
    for _ in range(iters):
        for r in range(k):
            q[r] = q[r] / q[r].sum() / k
        for c in range(n):
            q[:, c] = q[:, c] / q[:, c].sum() / n
    return (q * n).T


def reference_ibot(s_cls, t_cls, s_patch, t_patch, masks, v_g, teacher_temp, student_temp,
                   cls_center, patch_center, sinkhorn):
    """L_cls, L_mim by the formula, one term at a time."""
    s_cls, t_cls, s_patch, t_patch = (t.detach().double() for t in (s_cls, t_cls, s_patch, t_patch))
    b = t_cls.shape[0] // v_g
    v_s = s_cls.shape[0] // b
    n = masks.shape[1]
    masked = [(r, u) for r in range(masks.shape[0]) for u in range(n) if masks[r, u]]

    def log_student(x):
        return torch.log(torch.softmax(x / student_temp, dim=-1))

    if sinkhorn:
        p_cls = plain_sinkhorn(t_cls, teacher_temp)
        p_rows = plain_sinkhorn(torch.stack([t_patch[r, u] for r, u in masked]), teacher_temp) if masked else None
        p_patch = {ru: p_rows[i] for i, ru in enumerate(masked)}
    else:
        p_cls = torch.stack([torch.softmax((t_cls[r] - cls_center.double()[0]) / teacher_temp, dim=-1)
                             for r in range(t_cls.shape[0])])
        p_patch = {(r, u): torch.softmax((t_patch[r, u] - patch_center.double()[0]) / teacher_temp, dim=-1)
                   for r, u in masked}

    total, pairs = 0.0, 0
    for i in range(v_g):  # teacher global view
        for j in range(v_s):  # student view
            if i == j:
                continue
            pair = 0.0
            for s in range(b):
                pair += -(p_cls[i * b + s] * log_student(s_cls[j * b + s])).sum().item()
            total += pair / b
            pairs += 1
    l_cls = total / pairs

    mim, images = 0.0, 0
    for r in range(masks.shape[0]):
        toks = [u for u in range(n) if masks[r, u]]
        if not toks:
            continue
        img = sum(-(p_patch[(r, u)] * log_student(s_patch[r, u])).sum().item() for u in toks)
        mim += img / len(toks)
        images += 1
    l_mim = mim / images if images else 0.0
    return l_cls, l_mim


def ibot_inputs(seed=0, v_g=2, v_l=3, b=3, n=5, k=7, kp=6, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    s_cls = torch.randn(((v_g + v_l) * b, k), generator=g) * scale
    t_cls = torch.randn((v_g * b, k), generator=g) * scale
    s_patch = torch.randn((v_g * b, n, kp), generator=g) * scale
    t_patch = torch.randn((v_g * b, n, kp), generator=g) * scale
    masks = torch.rand((v_g * b, n), generator=g) < 0.5
    masks[0] = False  # an image without mask (e.g. the unmasked reconstruction crop)
    masks[1] = True  # a fully masked one
    return s_cls, t_cls, s_patch, t_patch, masks


@pytest.mark.parametrize("centering", ["centering", "sinkhorn"])
@pytest.mark.parametrize("v_l", [0, 3])
def test_ibot_loss_matches_reference_first_step(centering, v_l):
    inputs = ibot_inputs(v_l=v_l)
    crit = IBOTLoss(7, 6, student_temp=0.1, centering=centering, cls_weight=0.7, patch_weight=1.3)
    out = ibot(crit, *inputs, teacher_temp=0.04)
    l_cls, l_mim = reference_ibot(*inputs, 2, 0.04, 0.1, torch.zeros(1, 7), torch.zeros(1, 6),
                                  centering == "sinkhorn")
    assert out["ibot_cls"].item() == pytest.approx(l_cls, rel=1e-5)
    assert out["ibot_mim"].item() == pytest.approx(l_mim, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.7 * l_cls + 1.3 * l_mim, rel=1e-5)


def test_ibot_loss_nonzero_center_and_center_update():
    s_cls, t_cls, s_patch, t_patch, masks = ibot_inputs(seed=1)
    crit = IBOTLoss(7, 6, student_temp=0.1, center_momentum=0.9)
    g = torch.Generator().manual_seed(5)
    c_cls, c_patch = torch.randn((1, 7), generator=g), torch.randn((1, 6), generator=g)
    crit.cls_center.center.copy_(c_cls)
    crit.patch_center.center.copy_(c_patch)
    out = ibot(crit, s_cls, t_cls, s_patch, t_patch, masks, teacher_temp=0.055)
    l_cls, l_mim = reference_ibot(s_cls, t_cls, s_patch, t_patch, masks, 2, 0.055, 0.1, c_cls, c_patch, False)
    assert out["ibot_cls"].item() == pytest.approx(l_cls, rel=1e-5)
    assert out["ibot_mim"].item() == pytest.approx(l_mim, rel=1e-5)
    # centers moved after the loss: c <- 0.9 c + 0.1 mean(teacher); patch center from masked tokens only
    new_cls = 0.9 * c_cls + 0.1 * t_cls.mean(0, keepdim=True)
    masked_rows = torch.stack([t_patch[r, u] for r in range(masks.shape[0]) for u in range(5) if masks[r, u]])
    new_patch = 0.9 * c_patch + 0.1 * masked_rows.mean(0, keepdim=True)
    torch.testing.assert_close(crit.cls_center.center, new_cls)
    torch.testing.assert_close(crit.patch_center.center, new_patch)
    assert set(crit.state_dict()) == {"cls_center.center", "patch_center.center"}
    # the next step uses the updated centers
    inputs2 = ibot_inputs(seed=2)
    out2 = ibot(crit, *inputs2, teacher_temp=0.07)
    ref2 = reference_ibot(*inputs2, 2, 0.07, 0.1, new_cls, new_patch, False)
    assert out2["ibot_cls"].item() == pytest.approx(ref2[0], rel=1e-5)
    assert out2["ibot_mim"].item() == pytest.approx(ref2[1], rel=1e-5)


def test_ibot_sinkhorn_leaves_centers():
    crit = IBOTLoss(7, 6, centering="sinkhorn")
    ibot(crit, *ibot_inputs(), teacher_temp=0.04)
    assert crit.cls_center.center.abs().sum() == 0 and crit.patch_center.center.abs().sum() == 0


@pytest.mark.parametrize("centering", ["centering", "sinkhorn"])
def test_ibot_mim_reads_masked_tokens_only(centering):
    s_cls, t_cls, s_patch, t_patch, masks = ibot_inputs(seed=3)
    base = ibot(IBOTLoss(7, 6, centering=centering), s_cls, t_cls, s_patch, t_patch, masks, 0.04)["ibot_mim"]
    s2, t2 = s_patch.clone(), t_patch.clone()
    s2[~masks] = torch.randn_like(s2[~masks]) * 5
    t2[~masks] = 0.0  # the trainer leaves unmasked teacher rows at zero
    other = ibot(IBOTLoss(7, 6, centering=centering), s_cls, t_cls, s2, t2, masks, 0.04)["ibot_mim"]
    assert other.item() == pytest.approx(base.item(), rel=1e-6)
    r, u = masks.nonzero()[0].tolist()
    s2[r, u, 0] += 3.0  # one logit: a shift of all logits would not change the softmax
    changed = ibot(IBOTLoss(7, 6, centering=centering), s_cls, t_cls, s2, t2, masks, 0.04)["ibot_mim"]
    assert changed.item() != pytest.approx(base.item(), rel=1e-6)


def test_ibot_no_masks_and_gradients():
    s_cls, t_cls, s_patch, t_patch, masks = (t.clone() for t in ibot_inputs(seed=4))
    for t in (s_cls, t_cls, s_patch, t_patch):
        t.requires_grad_(True)
    out = ibot(IBOTLoss(7, 6), s_cls, t_cls, s_patch, t_patch, torch.zeros_like(masks), 0.04)
    assert out["ibot_mim"].item() == 0.0 and torch.isfinite(out["loss"])
    out["loss"].backward()  # still one graph when nothing is masked
    assert t_cls.grad is None and t_patch.grad is None  # no gradient into the teacher
    assert s_cls.grad is not None and s_cls.grad.abs().sum() > 0

    s_patch.grad = None
    ibot(IBOTLoss(7, 6), s_cls, t_cls, s_patch, t_patch, masks, 0.04)["loss"].backward()
    assert t_cls.grad is None and t_patch.grad is None
    assert s_patch.grad[masks].abs().sum() > 0 and s_patch.grad[~masks].abs().sum() == 0


def test_ibot_loss_rejects_bad_shapes():
    s_cls, t_cls, s_patch, t_patch, masks = ibot_inputs()
    with pytest.raises(ValueError, match="num_global_crops"):
        ibot(IBOTLoss(7, 6, num_global_crops=4), s_cls, t_cls, s_patch, t_patch, masks, 0.04)
    mt = MaskedTokens.from_masks(masks)
    with pytest.raises(ValueError, match="one row per masked token"):
        IBOTLoss(7, 6)(s_cls, t_cls, mt.gather(s_patch)[1:], mt.gather(t_patch), mt.weight, mt.num_views, 0.04)
    with pytest.raises(ValueError, match="centering"):
        IBOTLoss(7, 6, centering="kmeans")


def test_ibot_head_shape_and_frozen_magnitude():
    torch.manual_seed(0)
    head = IBOTHead(24, out_dim=40, hidden_dim=32, bottleneck_dim=8, num_layers=3)
    x = torch.randn(2, 5, 24)
    y = head(x)
    assert y.shape == (2, 5, 40) and head.out_dim == 40
    assert y.abs().max() <= 1 + 1e-5  # unit magnitude x unit bottleneck: cosine logits
    mag = head.last_layer.parametrizations.weight.original0
    assert not mag.requires_grad and torch.all(mag == 1)
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(x).pow(2).sum().backward()
    opt.step()
    assert torch.all(mag == 1)
    assert head.last_layer.parametrizations.weight.original1.grad.abs().sum() > 0
    teacher = copy.deepcopy(head)  # the EMA teacher is a deep copy
    torch.testing.assert_close(teacher(x), head(x))
    free = IBOTHead(24, 40, 32, 8, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    assert IBOTHead(24, 40, 32, 8, num_layers=1)(x).shape == (2, 5, 40)


def test_sinkhorn_normalisation():
    torch.manual_seed(0)
    logits = torch.randn(12, 5)
    q = sinkhorn_knopp(logits, 0.1, n_iters=3)
    torch.testing.assert_close(q.double(), plain_sinkhorn(logits, 0.1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12))  # each sample: a distribution
    q = sinkhorn_knopp(logits, 0.1, n_iters=200)
    torch.testing.assert_close(q.sum(dim=0), torch.full((5,), 12 / 5), rtol=1e-4, atol=1e-4)  # equipartition
    # no rows (no masked token anywhere): an empty result, no error
    assert sinkhorn_knopp(logits[:0], 0.1).shape == (0, 5)
    # huge logits at a small temperature stay finite (the global max is subtracted)
    assert torch.isfinite(sinkhorn_knopp(logits * 100, 0.04)).all()


def test_center_update():
    c = Center(3, momentum=0.9)
    c.update(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    torch.testing.assert_close(c.center, torch.tensor([[0.2, 0.2, 0.2]]))
    c.update(torch.zeros(0, 3))  # no rows: unchanged
    torch.testing.assert_close(c.center, torch.tensor([[0.2, 0.2, 0.2]]))


def test_teacher_temperature():
    assert teacher_temperature(0, 100) == pytest.approx(0.04)
    assert teacher_temperature(50, 100) == pytest.approx(0.055)
    assert teacher_temperature(100, 100) == pytest.approx(0.07)
    assert teacher_temperature(10_000, 100) == pytest.approx(0.07)
    assert teacher_temperature(0, 0, 0.01, 0.02) == pytest.approx(0.02)


# ------------------------------------------------------------------ distributed statistics (2 CPU ranks)
def _dist_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        logits = torch.randn(8, 5)  # same on both ranks; rank 0 owns rows 0-2, rank 1 rows 3-7
        rows = logits[:3] if rank == 0 else logits[3:]
        q = sinkhorn_knopp(rows, 0.1)
        center = Center(5)
        center.update(rows)
        # adaptive GAN weight and iBOT loss on this rank's half of a batch (_adaptive_case, _ibot_case)
        last, disc, h, target = _adaptive_case()
        half = slice(3 * rank, 3 * rank + 3)
        w = adaptive_gan_loss(*_adaptive_losses(last, disc, h[half], target[half]), last.weight, 0.5)[1]
        ib = _ibot_case()
        keep = torch.tensor([v * 4 + 2 * rank + i for v in range(3) for i in range(2)])  # crop-major rows
        g_rows = keep[:4]
        s_patch = ib["s_patch"][g_rows].clone().requires_grad_(True)
        out = ibot(IBOTLoss(7, 6), ib["s_cls"][keep], ib["t_cls"][g_rows], s_patch, ib["t_patch"][g_rows],
                                     ib["masks"][g_rows], 0.04)
        out["loss"].backward()
        torch.save({"q": q, "center": center.center, "w": w, "ibot": {k: v.detach() for k, v in out.items()},
                    "grad": s_patch.grad}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _adaptive_case():
    torch.manual_seed(1)
    return torch.nn.Linear(8, 12), torch.nn.Linear(12, 1), torch.randn(6, 8), torch.randn(6, 12)


def _adaptive_losses(last, disc, h, target):
    out = last(h)
    return out, (out - target).abs().mean(), hinge_g_loss(disc(out))


def _ibot_case() -> dict[str, torch.Tensor]:
    """B=4 samples, 2 global + 1 local view, 3 tokens; masked: view 1 of sample 0 (rank 0) and of samples 2, 3
    (rank 1), so the ranks hold 1 and 2 masked images."""
    torch.manual_seed(2)
    masks = torch.zeros(8, 3, dtype=torch.bool)
    masks[4, 0] = masks[6, 1:] = masks[7, :] = True
    return {"s_cls": torch.randn(12, 7), "t_cls": torch.randn(8, 7), "s_patch": torch.randn(8, 3, 6),
            "t_patch": torch.randn(8, 3, 6), "masks": masks}


def test_distributed_losses_equal_the_single_process_ones(tmp_path):
    """Sinkhorn, centers, the adaptive GAN weight and the iBOT loss (its gradient as DDP averages it) on two
    gloo ranks, each with half the batch, equal one process with the whole batch."""
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    torch.manual_seed(0)
    logits = torch.randn(8, 5)
    # the two ranks together give exactly the single-process result on all 8 rows
    torch.testing.assert_close(torch.cat([r0["q"], r1["q"]]), sinkhorn_knopp(logits, 0.1))
    torch.testing.assert_close(r0["center"], 0.1 * logits.mean(0, keepdim=True))
    torch.testing.assert_close(r1["center"], r0["center"])

    last, disc, h, target = _adaptive_case()
    w = adaptive_gan_loss(*_adaptive_losses(last, disc, h, target), last.weight, 0.5)[1]
    assert r0["w"].item() == pytest.approx(w.item(), rel=1e-5) and r1["w"].item() == pytest.approx(w.item(), rel=1e-5)

    ib = _ibot_case()
    s_patch = ib["s_patch"].clone().requires_grad_(True)
    one = ibot(IBOTLoss(7, 6), ib["s_cls"], ib["t_cls"], s_patch, ib["t_patch"], ib["masks"], 0.04)
    one["loss"].backward()
    for key in ("loss", "ibot_cls", "ibot_mim"):  # DDP differentiates (and the loop logs) the rank mean
        torch.testing.assert_close((r0["ibot"][key] + r1["ibot"][key]) / 2, one[key].detach())
    rows = [[0, 1, 4, 5], [2, 3, 6, 7]]
    for r, grad in enumerate((r0["grad"], r1["grad"])):
        torch.testing.assert_close(grad / 2, s_patch.grad[rows[r]])
