"""iBOT self-supervision (Zhou et al. 2022; DINOv2 variants): [CLS] self-distillation + masked image modelling.

Heads: h(x) = W_n * normalize(MLP(x)), W_n a weight-normalised linear (no bias) -> K logits.
Teacher targets (no grad) at temperature tau_t, student log-probs at tau_s:

    P_t = softmax((t - c) / tau_t)              (centering; c an EMA of the mean teacher logits)
       or SinkhornKnopp(t / tau_t)              (DINOv2: equipartition over the batch, no center)
    log P_s = log_softmax(s / tau_s)
    H(P_t, P_s) = -sum_k P_t[k] log P_s[k]

    L_[CLS] = mean over pairs (teacher global view i, student view j != i) and samples of
              H(P_t(cls_t[i]), P_s(cls_s[j]))                        (j over global and local crops)
    L_MIM   = mean over images with a mask of  ( mean over the image's masked tokens u of
              H(P_t(patch_t[i, u]), P_s(patch_s[i, u])) )            (teacher sees the unmasked view)
    L_iBOT  = cls_weight * L_[CLS] + patch_weight * L_MIM

The total tokenizer objective is alpha * L_rec + L_iBOT (PAPER.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from tcae import dist


class IBOTHead(nn.Module):
    """Projection head (DINO/iBOT/DINOv2): MLP (GELU) -> bottleneck -> L2-normalise -> weight-normed linear.

    forward(x (..., in_dim)) -> logits (..., out_dim).

    With `norm_last_layer` the weight-norm magnitude (`last_layer.parametrizations.weight.original0`,
    one per output) is fixed at 1 and not trained, so each logit is a cosine similarity between the
    normalised bottleneck and a prototype direction (bounded logits, stable temperatures).
    """

    def __init__(self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm_last_layer: bool = True) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        num_layers = max(num_layers, 1)
        if num_layers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(num_layers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        if norm_last_layer:
            magnitude.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)


# ---------------------------------------------------------------------------------------------- targets
@torch.no_grad()
def softmax_center(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """Centered, sharpened teacher probabilities softmax((t - c) / temp).

    teacher_logits (..., K); center broadcastable to it (e.g. (1, K)) -> float probs (..., K), no grad.
    """
    return F.softmax((teacher_logits.float() - center.float()) / temp, dim=-1)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temp: float, n_iters: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp teacher targets (SwAV / DINOv2): softmax-like assignments with equal prototype mass.

    Q = exp(t / temp) as a K x B matrix is scaled alternately so each prototype (row) holds 1/K of the
    mass and each sample (column) 1/B; the result times B gives each sample a distribution over K that
    sums to 1, while prototypes are used equally over the whole batch (all ranks together when
    torch.distributed is initialised: sums are all-reduced, B is the global number of samples).

    teacher_logits (N, K), N may differ per rank (masked patch tokens) and be 0 -> float probs (N, K), no grad.
    Every rank must call this the same number of times (collectives), even with no valid rows.
    """
    t = teacher_logits.float()
    n_local = t.shape[0]
    num_k = t.shape[1]
    # the global sample count stays on the device (no host sync); with no samples anywhere every
    # division below meets an empty tensor and the output is all zeros
    num_b = dist.all_reduce_(t.new_full((1,), float(n_local)))
    # exp of logits / 0.04 overflows for unnormalised heads: subtract the global max (cancels below)
    peak = t.max() if n_local > 0 else t.new_full((), float("-inf"))
    peak = dist.all_reduce_(peak.reshape(1), op="max")
    tiny = torch.finfo(torch.float32).tiny
    q = torch.exp((t - peak) / temp).t()  # (K, B_local)
    total = dist.all_reduce_(q.sum())
    q /= total.clamp_min(tiny)
    for _ in range(n_iters):
        rows = dist.all_reduce_(q.sum(dim=1, keepdim=True))  # mass per prototype, over all ranks' samples
        q /= rows.clamp_min(tiny)
        q /= num_k
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)  # mass per sample (local: columns are samples)
        q /= num_b
    q *= num_b
    return q.t()


class Center(nn.Module):
    """EMA of the mean teacher logit, subtracted before the teacher softmax (DINO centering; avoids collapse).

    `center`: buffer (1, K). update(teacher_logits (N, K)): c <- m c + (1 - m) mean_rows(teacher_logits),
    the mean taken over the rows of all ranks when torch.distributed is initialised (sum and count are
    all-reduced, so ranks with different row counts -- masked tokens -- are weighted correctly). Rows may
    be empty; with no rows on any rank the center is left unchanged.
    """

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        t = teacher_logits.detach().float().reshape(-1, self.center.shape[1])
        stats = dist.all_reduce_(torch.cat([t.sum(dim=0), t.new_full((1,), float(t.shape[0]))]))  # one all-reduce
        count = stats[-1]
        mean = (stats[:-1] / count.clamp(min=1)).to(self.center.dtype)
        updated = self.center * self.momentum + mean[None] * (1.0 - self.momentum)
        self.center.copy_(torch.where(count > 0, updated, self.center))  # decided on the device: no sync


# ---------------------------------------------------------------------------------------------- loss
class IBOTLoss(nn.Module):
    """iBOT loss: [CLS] distillation across views + masked patch-token prediction (see module docstring).

    forward(student_cls, teacher_cls, student_patch, teacher_patch, token_weight, num_masked_views,
            teacher_temp) ->
        {"loss": cls_weight * L_cls + patch_weight * L_mim, "ibot_cls": L_cls, "ibot_mim": L_mim}

    Shapes (all crop-major: crop 0 of every sample, then crop 1, ...; V_g global views, V_s >= V_g
    student views with the global ones first, B samples, M masked tokens, K / K_p head dims):
        student_cls   (V_s * B, K)   student head on every view (global, then local crops)
        teacher_cls   (V_g * B, K)   teacher head on the (unmasked) global crops
        student_patch (M, K_p)       student patch head on the masked tokens of the masked global crops
        teacher_patch (M, K_p)       teacher patch head on the same tokens of the unmasked global crops
        token_weight  (M,)           1 / (masked tokens of the token's view): each masked view weighs the same
        num_masked_views int         views with a mask (a host number: `tcae.data.MaskedTokens` has all three)
        teacher_temp  float

    Nothing here reads a device value on the host: the loss can run inside a training step that never syncs.
    The teacher inputs are detached. In "centering" mode the [CLS] and patch centers are updated after
    the loss from the teacher outputs (the patch center from masked tokens only, as in DINOv2, since only
    those are targets); "sinkhorn" mode uses Sinkhorn-Knopp targets and leaves the centers alone. With
    torch.distributed initialised the center/Sinkhorn statistics are all-reduced, so every rank must call
    forward each step.

    Departure from iBOT/DINOv2 (both divide the summed per-image MIM losses by *all* images): L_mim
    averages over the images that have a mask, so its scale does not depend on the share of masked views.
    Under torch.distributed that count is all-reduced: the rank average of L_mim (which DDP's gradient
    average differentiates) is the mean over every rank's masked images, however they fall on the ranks.
    """

    def __init__(self, out_dim: int, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "centering", cls_weight: float = 1.0, patch_weight: float = 1.0,
                 num_global_crops: int = 2) -> None:
        super().__init__()
        if centering not in ("centering", "sinkhorn"):
            raise ValueError(f"centering must be 'centering' or 'sinkhorn', got {centering!r}")
        self.student_temp = student_temp
        self.centering = centering
        self.cls_weight, self.patch_weight = cls_weight, patch_weight
        self.num_global_crops = num_global_crops
        self.cls_center = Center(out_dim, center_momentum)
        self.patch_center = Center(patch_out_dim, center_momentum)

    def teacher_probs(self, teacher_logits: torch.Tensor, center: Center, temp: float) -> torch.Tensor:
        """Teacher targets for rows (N, K) -> (N, K) probabilities (no grad)."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_logits, temp)
        return softmax_center(teacher_logits, center.center, temp)

    def forward(self, student_cls: torch.Tensor, teacher_cls: torch.Tensor, student_patch: torch.Tensor,
                teacher_patch: torch.Tensor, token_weight: torch.Tensor, num_masked_views: int,
                teacher_temp: float) -> dict[str, torch.Tensor]:
        v_g = self.num_global_crops
        if teacher_cls.shape[0] % v_g:
            raise ValueError(f"teacher_cls has {teacher_cls.shape[0]} rows, not a multiple of "
                             f"num_global_crops={v_g}")
        b = teacher_cls.shape[0] // v_g
        if student_cls.shape[0] % b or student_cls.shape[0] < teacher_cls.shape[0]:
            raise ValueError(f"student_cls has {student_cls.shape[0]} rows; expected a multiple of the batch "
                             f"{b} with at least the {v_g} global views first")
        m = token_weight.shape[0]
        if student_patch.shape[0] != m or teacher_patch.shape[0] != m:
            raise ValueError(f"student_patch {tuple(student_patch.shape)} and teacher_patch "
                             f"{tuple(teacher_patch.shape)} must hold one row per masked token ({m})")
        teacher_cls, teacher_patch = teacher_cls.detach(), teacher_patch.detach()

        # L_[CLS]: ce[i, j, b] = H(teacher view i, student view j) of sample b, for all pairs at once
        t_cls = rearrange(self.teacher_probs(teacher_cls, self.cls_center, teacher_temp),
                          "(v b) k -> v b k", v=v_g)
        s_cls = rearrange(F.log_softmax(student_cls.float() / self.student_temp, dim=-1), "(v b) k -> v b k", b=b)
        ce = -torch.einsum("ibk,jbk->ijb", t_cls, s_cls).mean(dim=-1)  # (V_g, V_s), batch mean
        off_diag = 1.0 - torch.eye(v_g, s_cls.shape[0], device=ce.device)  # j != i (a product: no mask gather)
        loss_cls = (ce * off_diag).sum() / (v_g * s_cls.shape[0] - v_g)

        # L_MIM over the masked tokens only
        s_rows = F.log_softmax(student_patch.float() / self.student_temp, dim=-1)  # (M, K_p)
        t_rows = self.teacher_probs(teacher_patch, self.patch_center, teacher_temp)
        per_token = -(t_rows * s_rows).sum(dim=-1)  # (M,)
        num_images = student_cls.new_full((), float(num_masked_views))
        if dist.world_size() > 1:
            # divide by the mean count per rank: DDP's gradient average over ranks (and the mean of the
            # logged values) is then the mean over all ranks' masked images, as with one process
            num_images = dist.all_reduce_mean(num_images)
        weight = token_weight.to(per_token.device, per_token.dtype)
        loss_mim = (per_token * weight).sum() / num_images.clamp(min=1e-6)  # 0 when nothing is masked

        if self.centering == "centering":
            self.cls_center.update(teacher_cls)
            self.patch_center.update(teacher_patch)
        loss = self.cls_weight * loss_cls + self.patch_weight * loss_mim
        return {"loss": loss, "ibot_cls": loss_cls, "ibot_mim": loss_mim}


def teacher_temperature(step: int, warmup_steps: int, start: float = 0.04, end: float = 0.07) -> float:
    """Teacher temperature: linear from `start` at step 0 to `end` at `warmup_steps`, then constant."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(end)
    return float(start + (end - start) * max(step, 0) / warmup_steps)
