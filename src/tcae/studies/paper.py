"""The paper's side of `tcae repro`: its tables and notes, the experiments' cells, and the scales.

A scale (:class:`Scale`) fixes everything a grid needs besides the cells: the tokenizer and DiT configs,
their steps, sample counts and the evaluation split. ``tiny`` runs on a CPU: on `builtin:digits` (default;
no compression: 64 real pixel values, 128 latent numbers) or on `builtin:fashion`, where the tiny scale
mirrors the paper's regime (:data:`FASHION_MAPPING`); ``small`` and ``base`` are for GPUs on a real data set.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Scale:
    """Everything a scale fixes: configs, steps, sample counts, the evaluation split.

    `decoder_config` / `decoder_steps`: phase 2 (decoder fine-tuning, encoder frozen, no SSL) after phase 1,
    the same budget for every cell (0 steps: phase 1 only); `convergence_every`: DiT steps between the
    checkpoints sampled for the convergence curve (0: none); `convergence_steps`: more snapshot steps besides
    those (dense early points, where the DiT-limited budget and the steps to reach it lie); `dit_limited_step`:
    the DiT budget (a snapshot step) at which generation is limited by the DiT rather than the decoder, chosen
    on val (0: not chosen);
    `curve_steps` / `curve_decoder_steps`: the phase-1 / phase-2 budgets `tcae repro curves` tries;
    `curve_budget_steps` (0: none): the most phase-1 steps the experiments' compute affords, `budget_note` why;
    `extra` / `dit_extra`: overrides of every cell's tokenizer / DiT; `mapping`: markdown table of how
    the scale maps onto the paper's regime (for the report)."""

    tokenizer_config: str
    dit_config: str
    data: str
    image_size: int
    num_classes: int
    tokenizer_steps: int
    dit_steps: int
    per_class: int
    base_channels: int
    extra: list[str] = field(default_factory=list)
    dit_extra: list[str] = field(default_factory=list)
    eval_split: str = "val"
    sample_steps: int = 50
    convergence_every: int = 0
    convergence_steps: tuple[int, ...] = ()
    mapping: str = ""
    decoder_config: str = ""
    decoder_steps: int = 0
    dit_limited_step: int = 0
    curve_steps: tuple[int, ...] = ()
    curve_decoder_steps: tuple[int, ...] = ()
    curve_budget_steps: int = 0
    budget_note: str = ""

    def __post_init__(self) -> None:
        step = self.dit_limited_step
        snapshot = step == self.dit_steps or step in self.convergence_steps or (
            self.convergence_every and step % self.convergence_every == 0)
        if step and (step > self.dit_steps or not snapshot):
            raise ValueError(f"dit_limited_step={step} is not a DiT snapshot (every {self.convergence_every} steps, "
                             f"at {list(self.convergence_steps)} or the last, {self.dit_steps})")


FASHION_MAPPING = """\
| | paper (ImageNet 256x256) | tiny (Fashion-MNIST) |
|---|---|---|
| image | 256x256x3: 196,608 real values | 32x32 (28x28x1 padded): 784 real values |
| patch size p, fine tokens | 8, 32x32 | 4, 8x8 |
| staged: 2x2 merge -> coarse tokens | 16x16 | 4x4 |
| latent (f) | 8x8x128 = 8,192 numbers (f=32) | 2x2x8 = 32 numbers (f=16) |
| f_tok->lat staged / single-stage | 4 / 16 | 4 / 16 |
| latent numbers per real pixel value | 8,192 / 196,608 = 1/24 | 32 / 784 = 1/24.5 |
| token-scaling p (p/f) | 4, 8, 16 (1/8, 1/4, 1/2) | 2, 4, 8 (1/8, 1/4, 1/2) |
| channels experiment | c=128 vs 256 | c=8 vs 16 |
| DiT | LightningDiT on 8x8 latents | dit-tiny (4 blocks, width 128) on 2x2 latents |
"""

# why the fashion grid's phase 1 stops at 4000 steps (docs/evidence-fashion/curves: the plateau is further out)
FASHION_BUDGET = ("the four experiments are 10 distinct cells x 3 seeds = 30 (cell, seed) runs in the about 18 "
                  "worker-hours issue 22's 24 leave after the curves; at 4000 phase-1 steps a run takes about 30 min "
                  "of one 1-thread worker (both phases, DiT, evaluation: 15 h for 30), at 8000 about 55 min (27 h). "
                  "Found later: a p=2 run costs about 5x (p=2's FLOPs), so token-scaling's p=2 single-stage cell was "
                  "cut (docs/evidence-fashion/README.md)")

SCALES = {
    "tiny": Scale("digits", "dit-tiny", "builtin:digits", 32, 10, tokenizer_steps=400, dit_steps=1500,
                  per_class=30, base_channels=32),
    "small": Scale("s", "dit-s", "", 256, 1000, tokenizer_steps=100_000, dit_steps=100_000, per_class=10,
                   base_channels=128),
    "base": Scale("b", "dit-b", "", 256, 1000, tokenizer_steps=500_000, dit_steps=400_000, per_class=50,
                  base_channels=128),
}
# (scale, data kind) -> the scale on that data, where it differs from SCALES[scale]
DATA_SCALES = {
    # steps chosen on val by `tcae repro curves` (docs/evidence-fashion/curves): phase 1 at the budget's cap (no
    # plateau), phase 2 where doubling changes val PSNR by < 0.3 dB. DiT snapshots every 160 steps and densely
    # before 320: on val the baseline's FD falls below 3x its rFD between 160 and 320 DiT steps, so the DiT-limited
    # budget and the steps TC-AE needs to reach the baseline's FD there lie in the first few hundred steps
    ("tiny", "fashion"): Scale("fashion", "dit-tiny", "builtin:fashion", 32, 10, tokenizer_steps=4000,
                               dit_steps=1600, per_class=100, base_channels=8, dit_extra=["ema_decay=0.995"],
                               eval_split="test", convergence_every=160, mapping=FASHION_MAPPING, decoder_steps=500,
                               convergence_steps=(20, 40, 60, 80, 100, 120, 140, 200, 240, 280),
                               # the last snapshot where the baseline's FD >= 3x its rFD on val, seed 0 (3.17x;
                               # 2.90x at 280): docs/evidence-fashion/stc-ssl-val/report.md
                               dit_limited_step=240,
                               decoder_config="fashion-decoder", curve_steps=(1000, 2000, 4000, 8000),
                               curve_decoder_steps=(500, 1000, 2000, 4000), curve_budget_steps=4000,
                               budget_note=FASHION_BUDGET),
}


def resolve_scale(scale_name: str, data: str | None) -> tuple[Scale, str]:
    """(the scale for this data, the data spec): `DATA_SCALES[(scale, kind)]` where there is one."""
    from tcae.data import parse_spec

    if scale_name not in SCALES:
        raise ValueError(f"unknown scale {scale_name!r}; choose from {', '.join(SCALES)}")
    scale = SCALES[scale_name]
    data = data or scale.data
    if not data:
        raise ValueError(f"--scale {scale_name} needs --data (an ImageNet folder or shards)")
    scale = DATA_SCALES.get((scale_name, parse_spec(data).kind), scale)
    return scale, data


# The paper's numbers (ImageNet 256x256) that each experiment is compared against.
PAPER = {
    "stc-ssl": {
        "single-stage, no SSL": {"rFID": 1.33, "gFID": 44.72, "IS": 33.62},
        "staged, no SSL": {"rFID": 0.75, "gFID": 32.92, "IS": 43.58},
        "single-stage, SSL": {"rFID": 0.90, "gFID": 25.36, "IS": 52.38},
        "staged, SSL": {"rFID": 0.90, "gFID": 16.39, "IS": 71.33},
    },
    "ssl-method": {"iBOT": {"gFID": 17.22, "IS": 69.00}, "DINO": {"gFID": 20.38, "IS": 62.12},
                   "none": {}},
    "channels": {"c": {"claim": "c=256 reconstructs better than c=128 but generates worse"}},
    "token-scaling": {"p": {"claim": "smaller p reconstructs better; generation improves only with STC"}},
    # not one of the paper's tables: why SSL does not help at the tiny scale (issue 12, item 6)
    # the system-level table (DC-AE-f32c32 and TC-AE, both 64 latent tokens; GFLOPs as written, MACs in fact)
    "dcae": {"TC-AE": {"gFID": 7.16, "GFLOPs": 164}, "DC-AE": {"gFID": 17.31, "GFLOPs": 607}},
    "ssl-causes": {"alpha, recon view": {"claim": "none: the paper gives neither alpha (L = alpha * L_rec + L_iBOT) "
                                                  "nor which view the reconstruction sees"}},
    # not one of the paper's tables: why STC does not help at the tiny scale (issue 22, item 6)
    "stc-causes": {"compute": {"claim": "none: the paper does not say whether its STC ablation is FLOP-matched"}},
}
# the staged model's coarse depth at which tcae-tiny's encode + decode FLOPs equal the single-stage model's at
# 32 px (measured by tcae.models.flops: 0.150 vs 0.147 GFLOPs; 6 blocks: 0.123, 10: 0.176)
STC_MATCHED_COARSE_DEPTH = 8
PAPER_NOTES = {
    "stc-ssl": ["Linear probe at p=8, A1 (tokens) / A2 (latents): without STC 62.9 / 5.33, with STC 39.1 / 12.1; "
                "structural loss 1 - A2/A1: 0.92 -> 0.69.",
                "Diffusion converges up to 4.7x faster with TC-AE (STC + SSL), 2.7x with STC alone."],
    "ssl-method": ["At p=16: iBOT gFID 17.22 / IS 69.00, DINO 20.38 / 62.12, DINOv2 (external) 28.22 / 49.19."],
    "channels": ["Going from 128 to 256 latent channels improves reconstruction but hurts generation."],
    "token-scaling": ["More tokens (smaller p) reconstruct better at a fixed latent budget; without STC that does "
                      "not carry over to generation, with STC it does."],
    "dcae": ["TC-AE vs DC-AE at the same latent shape (64 tokens, 8x8): TC-AE generates better (gFID 17.31 -> "
             "7.16 without CFG) and reconstructs better (the issue's reading of the paper's table trained under "
             "identical settings) at 0.27x DC-AE's cost (164 vs 607; the paper writes GFLOPs, the numbers are "
             "GMACs).",
             "Here both are trained by tcae with the same objective, phase budgets, data and DiT protocol: "
             "DC-AE is diffusers' AutoencoderDC (preset dc-ae-tiny at the tiny scale: f=16, c=8, the TC-AE "
             "cells' 2x2x8 latent; TC-AE costs 0.26x its FLOPs there), without iBOT (a conv autoencoder has no "
             "token sequence), without DC-AE's high-resolution adaptation phase."],
    "ssl-causes": ["Not a paper experiment: two choices the paper leaves to us, tested as causes of SSL not "
                   "helping at the tiny scale. (1) alpha in L = alpha * L_rec + L_iBOT: our L_rec is L1 alone (no "
                   "LPIPS, no GAN at the tiny scale), about 0.1 against an iBOT loss of about 8, so at alpha=1 "
                   "iBOT's gradients dominate the encoder. (2) The reconstruction input: with SSL it is global "
                   "crop 0, a random resized crop (area 0.6-1, flipped, resampled), while without SSL the "
                   "tokenizer trains on the exact images evaluation reconstructs; `ssl.recon_view=full` gives "
                   "the SSL run those same images."],
    "stc-causes": ["Not a paper experiment: a cause tested for STC not helping at the tiny scale. The staged "
                   "model's coarse blocks see 4x fewer tokens (after the 2x2 merge) than the single-stage model's, "
                   "so at the same widths and depths it costs about half the FLOPs (column GFLOPs enc+dec) with "
                   "about the same parameters, and its decoder reconstructs worse. The FLOP-matched cell gives the "
                   f"staged model {STC_MATCHED_COARSE_DEPTH} coarse blocks on each side instead of 2: the "
                   "single-stage model's FLOPs (with about 2.5x its parameters). If it reconstructs and generates "
                   "like the single-stage model or better, the staged cells lose to compute, not to staging."],
}
# alpha values of the ssl-causes cells (the staged TC-AE, SSL on); alpha=30 was also run on val
# (docs/repro-fashion/ssl-causes-val/staged-SSL-alpha-30): no better than 10, so not carried to test
SSL_ALPHAS = (1, 10)


def experiment_cells(name: str, scale: Scale) -> dict[str, list[str]]:
    """Cell name -> tokenizer overrides."""
    c = scale.base_channels
    # without SSL the objective is L_rec itself: alpha (the weight of L_rec against L_iBOT, a default of the SSL
    # configs) is set back to 1, as every no-SSL cell was measured (with grad clipping, scaling L_rec is not free)
    no_ssl = ["ssl=false", "loss.alpha=1"]
    if name == "stc-ssl":
        return {"single-stage, no SSL": ["model.staged=false", *no_ssl], "staged, no SSL": no_ssl,
                "single-stage, SSL": ["model.staged=false"], "staged, SSL": []}
    if name == "ssl-method":
        # DINO: [CLS] self-distillation on global + local crops only: no masked views, no patch (MIM) loss
        return {"iBOT": [], "DINO": ["ssl.patch_weight=0", "ssl.mask_sample_prob=0"], "none": no_ssl}
    if name == "ssl-causes":  # every cell names both settings: the configs' defaults differ (fashion: 10, full)
        return {"staged, no SSL": no_ssl,
                **{f"staged, SSL, alpha={a}": [f"loss.alpha={a}", "ssl.recon_view=crop"] for a in SSL_ALPHAS},
                **{f"staged, SSL, alpha={a}, full-image recon": [f"loss.alpha={a}", "ssl.recon_view=full"]
                   for a in SSL_ALPHAS}}
    if name == "stc-causes":  # the stc-ssl no-SSL cells, and the staged one at the single-stage one's FLOPs
        if scale.image_size > 64:  # the matched depth is tcae-tiny's at 32 px; the GPU presets need their own
            raise ValueError("stc-causes is defined at the tiny scale only: its FLOP-matched coarse depth "
                             f"({STC_MATCHED_COARSE_DEPTH}) matches tcae-tiny's FLOPs at 32 px, not the "
                             f"{scale.tokenizer_config!r} config's")
        return {"single-stage, no SSL": ["model.staged=false", *no_ssl], "staged, no SSL": no_ssl,
                "staged, no SSL, FLOP-matched": [*no_ssl, f"model.coarse_depth={STC_MATCHED_COARSE_DEPTH}"]}
    if name == "channels":
        return {f"c={c}": [f"model.latent_channels={c}"], f"c={2 * c}": [f"model.latent_channels={2 * c}"]}
    if name == "token-scaling":
        sizes = (2, 4, 8) if scale.image_size <= 64 else (4, 8, 16)
        return {f"p={p}, {'staged' if st else 'single-stage'}": [f"model.patch_size={p}",
                                                                 f"model.staged={str(st).lower()}"]
                for st in (False, True) for p in sizes}
    if name == "dcae":
        # TC-AE: the staged SSL cell (stc-ssl's "staged, SSL"); DC-AE: the published design scaled to the same
        # latent shape (the scale's config sets model.patch_size, which a DC-AE does not take: cleared)
        dcae = "dc-ae-tiny" if scale.image_size <= 64 else "dc-ae-f32c32"
        return {"TC-AE": [], "DC-AE": [f"model.name={dcae}", "model.patch_size=null", f"model.latent_channels={c}",
                                       *no_ssl]}
    raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(PAPER)}")
