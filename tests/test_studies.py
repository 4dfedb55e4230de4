"""The research harness (`tcae.studies`, `tcae repro`, `tcae demo`) through its public API and the CLI:
the scales and their mapping onto the paper's regime, the experiments' cells, cell keys (identical runs
shared across cells, experiments and sessions), running and resuming a (cell, seed), several workers on one
grid (locks, --no-wait, --report-only, --only), the report's spread and verdict rule, the demo."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tcae.cli.main import main as cli
from tcae.config import TRAIN_ALIASES, TrainConfig, load_config, model_overrides
from tcae.models import create_model
from tcae.models.dcae import is_dcae_name
from tcae.studies import paper
from tcae.studies.cells import cell_key, eval_dir_name, run_cell
from tcae.studies.experiments import run_experiment
from tcae.studies.paper import DATA_SCALES, PAPER, SCALES, SSL_ALPHAS, experiment_cells, resolve_scale
from tcae.studies.report import METRICS, claims, compare, speedup, steps_to_reach, summarize, write_report
from tcae.studies.stages import split_spec
from tcae.tokenizers import create_dcae
from tcae.util import LockBusy, file_lock, slug, write_json_atomic

FASHION = DATA_SCALES[("tiny", "fashion")]
DIGITS = "builtin:digits"


def files_under(root: Path) -> dict[str, int]:
    """Relative path -> mtime_ns of every file under `root`."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def _model(overrides: list[str], scale: paper.Scale = FASHION):
    cfg = load_config(TrainConfig, scale.tokenizer_config, overrides, TRAIN_ALIASES)
    over = model_overrides(cfg.model)
    over.setdefault("image_size", cfg.data.image_size)
    if is_dcae_name(cfg.model.name):
        return create_dcae(cfg.model.name, **over)
    return create_model(cfg.model.name, **over)


# ---------------------------------------------------------------------------- scales and cells
def test_scale_chosen_by_data():
    assert resolve_scale("tiny", None) == (SCALES["tiny"], DIGITS)
    assert resolve_scale("tiny", DIGITS)[0] is SCALES["tiny"]
    assert resolve_scale("tiny", "builtin:fashion")[0] is FASHION
    assert resolve_scale("tiny", "builtin:fashion@/x")[0] is FASHION
    with pytest.raises(ValueError, match="needs --data"):
        resolve_scale("small", None)


def test_fashion_tiny_scale_mirrors_the_papers_ratios():
    """f_tok->lat 4 (staged) / 16 (single-stage), latent numbers per real pixel value ~1/24, p/f of the
    token-scaling cells 1/8, 1/4, 1/2, channels c vs 2c: measured on the models the cells build."""
    real_values = 28 * 28 * 1
    for staged, f_tok_lat in ((True, 4), (False, 16)):
        model = _model([] if staged else ["model.staged=false"])
        cfg = model.config
        tokens = (32 // cfg.patch_size) ** 2
        coarse = (32 // cfg.token_stride) ** 2
        z = model.encode(torch.zeros(1, 3, 32, 32))
        assert z.shape == (1, 8, 2, 2) and tokens == 64
        assert coarse // (z.shape[2] * z.shape[3]) == f_tok_lat
        assert real_values / z.numel() == pytest.approx(24.5)  # the paper: 256*256*3 / (8*8*128) = 24
    assert 256 * 256 * 3 / (8 * 8 * 128) == 24
    cells = experiment_cells("token-scaling", FASHION)
    ratios = sorted({_model(o).config.patch_size / _model(o).config.compression for o in cells.values()})
    assert ratios == [1 / 8, 1 / 4, 1 / 2]  # the paper: p in 4, 8, 16 at f=32
    assert list(experiment_cells("channels", FASHION)) == ["c=8", "c=16"]
    assert "1/24.5" in FASHION.mapping and "4 / 16" in FASHION.mapping


EXPECTED_CELLS = {
    "stc-ssl": {"single-stage, no SSL", "staged, no SSL", "single-stage, SSL", "staged, SSL"},
    "ssl-method": {"iBOT", "DINO", "none"},
    "ssl-causes": {"staged, no SSL", "staged, SSL, alpha=1", "staged, SSL, alpha=10",
                   "staged, SSL, alpha=1, full-image recon", "staged, SSL, alpha=10, full-image recon"},
    "stc-causes": {"single-stage, no SSL", "staged, no SSL", "staged, no SSL, FLOP-matched"},
    "dcae": {"TC-AE", "DC-AE"},
}


@pytest.mark.parametrize("scale_name", list(SCALES))
@pytest.mark.parametrize("experiment", list(PAPER))
def test_experiment_cells(experiment, scale_name):
    scale = SCALES[scale_name]
    if experiment == "stc-causes" and scale.image_size > 64:  # its matched depth is tcae-tiny's
        with pytest.raises(ValueError, match="tiny scale only"):
            experiment_cells(experiment, scale)
        return
    cells = experiment_cells(experiment, scale)
    c = scale.base_channels
    expected = EXPECTED_CELLS.get(experiment) or {
        "channels": {f"c={c}", f"c={2 * c}"},
        "token-scaling": {f"p={p}, {st}" for st in ("staged", "single-stage")
                          for p in ((2, 4, 8) if scale.image_size <= 64 else (4, 8, 16))},
    }[experiment]
    assert set(cells) == expected
    if experiment in ("stc-ssl", "ssl-method", "dcae"):  # the report sets the paper's rows beside these cells
        assert set(cells) == set(PAPER[experiment])
    for cell, overrides in cells.items():
        # every override is a valid key of the scale's tokenizer config ...
        cfg = load_config(TrainConfig, scale.tokenizer_config, [*scale.extra, *overrides], TRAIN_ALIASES)
        # ... and sets what the cell's name says
        if "no SSL" in cell or cell == "none":
            assert cfg.ssl.enabled is False
        if "single-stage" in cell:
            assert cfg.model.staged is False
        elif "staged" in cell:
            assert cfg.model.staged in (None, True)
        if cell == "DINO":  # DINO: no patch loss and no masked views
            assert cfg.ssl.patch_weight == 0 and cfg.ssl.mask_sample_prob == 0
        if cell.startswith("c="):
            assert cfg.model.latent_channels == int(cell[2:])
        if cell.startswith("p="):
            assert cfg.model.patch_size == int(cell[2:cell.index(",")])
        if cell == "DC-AE":  # the same latent channels as the TC-AE cells, no iBOT
            assert cfg.model.name.startswith("dc-ae") and cfg.model.latent_channels == c and not cfg.ssl.enabled
        if scale_name == "tiny":  # the tiny cells also build and encode at the scale's image size
            model = _model(overrides, scale)
            size = scale.image_size
            assert model.config.image_size == size
            latent = model.encode(torch.zeros(1, 3, size, size))
            assert latent.shape[1] == model.config.latent_channels


def test_unknown_experiment_and_scale():
    with pytest.raises(ValueError, match="unknown experiment"):
        experiment_cells("nope", SCALES["tiny"])
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        resolve_scale("huge", None)


def test_dino_cell_has_no_masks_and_no_patch_loss(tmp_path):
    """The ssl-method experiment's DINO cell: no masked global crops and no patch (MIM) loss, in a real step."""
    from tcae.training.tokenizer import TokenizerTrainer

    dino = experiment_cells("ssl-method", SCALES["tiny"])["DINO"]
    cfg = load_config(TrainConfig, "digits", [f"run_dir={tmp_path}", "steps=1", "batch_size=4", "progress=false",
                                              "model.fine_depth=1", "model.coarse_depth=1", *dino], TRAIN_ALIASES)
    assert cfg.ssl.enabled and cfg.ssl.mask_sample_prob == 0 and cfg.ssl.patch_weight == 0
    trainer = TokenizerTrainer(cfg)
    batch = next(iter(trainer.loader))
    assert batch["masks"].shape[0] == 2 * 4 and not batch["masks"].any()  # no global view is masked
    terms = trainer.train_step([batch])
    assert float(terms["ibot_mim"]) == 0.0
    assert float(terms["loss"]) == pytest.approx(float(terms["l1"] + terms["ibot_cls"]), rel=1e-6)
    ibot = experiment_cells("ssl-method", SCALES["tiny"])["iBOT"]
    cfg_ibot = load_config(TrainConfig, "digits", ibot, TRAIN_ALIASES)
    assert cfg_ibot.ssl.mask_sample_prob > 0 and cfg_ibot.ssl.patch_weight > 0


# ---------------------------------------------------------------------------- cell keys
def test_cell_key_same_config_same_key():
    key = cell_key
    data = "builtin:fashion"
    tcae = key([], FASHION, data, 0)
    assert key(["model.latent_channels=8"], FASHION, data, 0) == tcae  # channels' c=8 cell is TC-AE
    assert key(["model.patch_size=4", "model.staged=true"], FASHION, data, 0) == tcae  # token-scaling p=4
    assert key(["ssl=false"], FASHION, data, 0) == key(["ssl.enabled=false"], FASHION, data, 0)
    # keys of runs made before a setting existed do not move (the grid spans sessions): the issue-12 grid's
    # TC-AE and no-SSL cells keep their pinned keys with that grid's settings (alpha 1, crop view, a fixed EMA
    # decay), though settings were added since (decoder_part, the DiT's class_names) at their neutral values
    old = dataclasses.replace(FASHION, tokenizer_steps=700, decoder_steps=0, convergence_every=320,  # that grid's
                              convergence_steps=(), dit_limited_step=0,
                              dit_extra=[*FASHION.dit_extra, "ema_warmup=false"])
    old_tcae = ["loss.alpha=1", "ssl.recon_view=crop", "ema_warmup=false"]
    assert key(old_tcae, old, data, 0) == "b3afc6b73b3c625f"
    assert key(["ssl=false", "loss.alpha=1", "ema_warmup=false"], old, data, 0) == "8bfc788e6fd482a9"
    assert key(["decoder_part=all", *old_tcae], old, data, 0) == "b3afc6b73b3c625f"
    # without SSL there is no view to choose: the recon view leaves a no-SSL key alone
    assert key(["ssl=false", "ssl.recon_view=crop"], FASHION, data, 0) == key(["ssl=false"], FASHION, data, 0)
    # a setting at another value than its neutral default is a new run: the EMA warm-up (the default since
    # issue 21) and the full-image view
    assert key(old_tcae[:2], old, data, 0) != key(old_tcae, old, data, 0)
    assert key(["ssl.recon_view=full", "loss.alpha=1", "ema_warmup=false"], old, data, 0) != key(old_tcae, old, data, 0)
    assert key([], FASHION, data, 1) != tcae  # seeds are distinct runs
    assert key(["model.latent_channels=16"], FASHION, data, 0) != tcae
    assert key([], dataclasses.replace(FASHION, dit_steps=7, dit_limited_step=0), data, 0) != tcae
    assert key([], FASHION, DIGITS, 0) != tcae  # other data, other run
    # sample counts do not retrain: they select another evaluation folder of the same run
    assert eval_dir_name(FASHION, "test", "judge:fashion") != eval_dir_name(
        dataclasses.replace(FASHION, per_class=3), "test", "judge:fashion")
    # across the paper's four experiments, 10 of the 15 cells are distinct runs
    grid = ("stc-ssl", "ssl-method", "channels", "token-scaling")
    cells = {key(o, FASHION, data, 0) for e in grid for o in experiment_cells(e, FASHION).values()}
    assert len(cells) == 10
    # ssl-causes: its no-SSL cell and the fashion defaults' TC-AE (alpha=10, full view) are stc-ssl's; the
    # other alpha/view combinations are one run each
    extra = {c: key(o, FASHION, data, 0) for c, o in experiment_cells("ssl-causes", FASHION).items()}
    assert extra["staged, SSL, alpha=10, full-image recon"] == tcae
    assert extra["staged, no SSL"] == key(experiment_cells("stc-ssl", FASHION)["staged, no SSL"], FASHION, data, 0)
    assert len(set(extra.values()) - cells) == 2 * len(SSL_ALPHAS) - 1
    # stc-causes: stc-ssl's two no-SSL cells and one new run
    causes = {c: key(o, FASHION, data, 0) for c, o in experiment_cells("stc-causes", FASHION).items()}
    stc = {c: key(o, FASHION, data, 0) for c, o in experiment_cells("stc-ssl", FASHION).items()}
    assert {causes[c] for c in ("single-stage, no SSL", "staged, no SSL")} <= set(stc.values())
    assert set(causes.values()) - cells == {causes["staged, no SSL, FLOP-matched"]}


@pytest.mark.parametrize("scale", [SCALES["tiny"], FASHION], ids=["digits", "fashion"])
def test_the_flop_matched_staged_cell_costs_what_the_single_stage_one_does(scale):
    """stc-causes' FLOP-matched staged model: within 5% of the single-stage model's encode + decode FLOPs,
    against about half for the staged model of the other cells (at both tiny scales)."""
    from tcae.models.flops import flops

    cells = experiment_cells("stc-causes", scale)
    models = {c: _model([*scale.extra, *o], scale) for c, o in cells.items()}
    cost = {c: flops(m, scale.image_size).as_dict()["total_gflops"] for c, m in models.items()}
    single, staged, matched = (cost[c] for c in cells)
    assert staged < 0.55 * single and matched == pytest.approx(single, rel=0.05)
    assert models["staged, no SSL, FLOP-matched"].config.staged is True


# ---------------------------------------------------------------------------- the report
def _verdict_rows(report: str) -> dict[str, str]:
    """Statement -> outcome of the report's verdict table (a DiT-share claim's rescaled twins repeat its
    statement: the first row, on the claim's own metric, is the one kept)."""
    table = report.split("## Verdicts")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| claim")]
    out: dict[str, str] = {}
    for r in rows:
        out.setdefault(r[1], r[-1])
    return out


def test_spread_and_verdict_rule(tmp_path):
    """summarize/compare on seed values, and the outcome the report draws from a verdict and the claim."""
    a, b = summarize([10.0, 11.0, 12.0]), summarize([13.0, 13.5, 14.0])
    assert a == {"n": 3, "mean": 11.0, "std": 1.0, "min": 10.0, "max": 12.0}
    assert summarize([None, None]) is None and summarize([2.0, None])["n"] == 1
    # FD (lower better): a beats b by 2.5 > spread 1.0
    assert compare(a, b, higher_better=False) == ("better", -2.5, 1.0)
    assert compare(a, b, higher_better=True)[0] == "worse"
    c = summarize([11.5, 12.0, 12.5])
    assert compare(a, c, False)[0] == "no difference"  # |11 - 12| = 1 <= max(1, 0.5)
    assert compare(summarize([1.0]), summarize([2.0]), False)[0].startswith("n/a")
    # one seed on either side, in either order: no verdict (the other cell's spread is not the pair's)
    assert compare(a, summarize([20.0]), False)[0] == compare(summarize([20.0]), a, False)[0] == \
        "n/a (one seed: no spread)"
    assert compare(a, None, False)[0] == "n/a"

    # the report's outcome column, on stc-ssl cells with these seed values (FD, and A2 for the probe claims)
    fd = {"staged, no SSL": [10.0, 11.0, 12.0], "single-stage, no SSL": [13.0, 13.5, 14.0],
          "staged, SSL": [11.5, 12.0, 12.5], "single-stage, SSL": [10.0, 11.0, 12.0]}
    a2 = {"staged, no SSL": 0.5, "single-stage, no SSL": 0.4, "staged, SSL": 0.6, "single-stage, SSL": 0.1}
    results = {cell: {s: {"seed": s, "key": f"{cell}-{s}", "generation": {"fd_judge": v},
                          "diagnostics": {"probe_acc_latents": a2[cell]}} for s, v in enumerate(values)}
               for cell, values in fd.items()}
    report = write_report(tmp_path, "stc-ssl", "tiny", SCALES["tiny"], DIGITS, "val", results, None, 3)
    outcome = _verdict_rows(report.read_text())
    assert outcome["STC improves generation (no SSL)"] == "reproduced"  # 11 vs 13.5, spread 1: better
    assert outcome["SSL improves generation (staged)"] == "no difference"  # 12 vs 11, spread 1
    assert outcome["SSL improves generation (single-stage)"] == "reproduced"
    # the same A2 on every seed: no spread, so any difference counts; 0.1 < 0.4 is the opposite of the claim
    assert outcome["SSL improves the latents' linear probe (single-stage)"] == "not reproduced (opposite)"
    summary = json.loads((tmp_path / "summary.json").read_text())["summaries"]
    assert summary["staged, no SSL"]["fd"] == summarize(fd["staged, no SSL"])

    one_seed = {cell: {0: r[0]} for cell, r in results.items()}
    report = write_report(tmp_path / "one", "stc-ssl", "tiny", SCALES["tiny"], DIGITS, "val", one_seed, None, 1)
    outcome = _verdict_rows(report.read_text())
    assert outcome["STC improves generation (no SSL)"] == outcome["SSL improves generation (staged)"] == \
        "n/a (one seed: no spread)"
    # a metric no result has (no convergence snapshots here): n/a, not a verdict
    assert outcome["STC: early samples closer to the tokenizer's reconstructions (no SSL)"] == "n/a"


def test_token_scaling_without_its_smallest_p_still_tests_the_claims(tmp_path):
    """The Fashion evidence cuts p=2 for its cost: the p=4 vs p=8 verdicts are still made, on both claims."""
    psnr = {4: [22.0, 22.1, 22.2], 8: [20.0, 20.1, 20.2]}
    fd = {(4, "staged"): [40.0, 41.0, 42.0], (8, "staged"): [50.0, 51.0, 52.0],
          (4, "single-stage"): [40.0, 41.0, 42.0], (8, "single-stage"): [30.0, 31.0, 32.0]}
    results = {f"p={p}, {mode}": {s: {"seed": s, "key": f"{p}{mode}{s}", "generation": {"fd_judge": v},
                                      "reconstruction": {"metrics": {"psnr": psnr[p][s]}}}
                                  for s, v in enumerate(values)}
               for (p, mode), values in fd.items()}
    # the whole grid: 3 pairs (2-4, 4-8, 2-8) x 3 metrics x 2 modes, one statement each
    statements = [row[1] for row in claims("token-scaling", FASHION)]
    assert len(statements) == len(set(statements)) == 18 and "with STC, p=2 generates better than p=8" in statements
    assert not any(c.startswith("p=2") for c in results)
    report = write_report(tmp_path, "token-scaling", "tiny", FASHION, DIGITS, "test", results, None, 3)
    outcome = _verdict_rows(report.read_text())
    assert outcome["p=4 reconstructs better than p=8 (staged)"] == "reproduced"
    assert outcome["with STC, p=4 generates better than p=8"] == "reproduced"
    assert outcome["without STC, p=4 does not generate better than p=8"] == "reproduced"  # 41 vs 31: worse
    assert not any("p=2" in statement for statement in outcome)


def test_speedup_interpolates_between_snapshots():
    base = [{"convergence": [{"step": s, "fd_judge": f} for s, f in ((100, 9.0), (200, 6.0), (300, 5.0))]}]
    fast = [{"convergence": [{"step": s, "fd_judge": f} for s, f in ((100, 7.0), (200, 4.0), (300, 3.0))]}]
    sp = speedup(fast, base)["mean_curve"]
    # target 5.0 reached between (100, 7) and (200, 4): 100 + 2/3 * 100 steps
    assert sp["steps"] == pytest.approx(166.667, rel=1e-4) and sp["ratio"] == pytest.approx(1.8)
    assert not sp["upper_bound"]
    assert steps_to_reach([(100, 4.0)], 5.0) == (100.0, True)
    assert steps_to_reach([(100, 6.0), (200, 5.5)], 5.0) == (None, False)


def test_every_experiment_has_verdicts_on_its_own_cells_including_the_dits_share():
    """Each experiment's claims compare two of its own cells on a known metric; since the final FD at the
    tiny scale measures the decoder (docs/repro-fashion-tiny.md), every paper experiment that claims
    something about generation also has a verdict on the DiT's share (FD vs rec. at the first snapshot)."""
    for name in PAPER:
        cells = experiment_cells(name, FASHION)
        rows = claims(name, FASHION)
        assert rows, name
        for _, _, x, y, key, expected in rows:
            assert x in cells and y in cells and x != y, (name, x, y)
            assert key in METRICS and expected in ("better", "worse", "not better"), (name, key)
        if any(key == "fd" for *_, key, _ in rows):
            assert any(key == "gap1" for *_, key, _ in rows), name


# ---------------------------------------------------------------------------- one (cell, seed), for real
@pytest.fixture
def tiny_scale(monkeypatch) -> paper.Scale:
    """The tiny scale in seconds: 3 tokenizer and 3 DiT steps, 2 samples per class."""
    scale = dataclasses.replace(SCALES["tiny"], tokenizer_steps=3, dit_steps=3, per_class=2)
    monkeypatch.setitem(SCALES, "tiny", scale)
    return scale


def test_run_cell_is_resumable(tiny_scale, tmp_path):
    from tcae.evaluation import DigitsJudge

    cell = tmp_path / "cell"
    judge = DigitsJudge()  # as run_experiment passes for digits (without it nor Inception: no samples)
    result = run_cell(cell, ["ssl=false"], tiny_scale, DIGITS, judge=judge)
    assert result["overrides"] == ["ssl=false"] and math.isfinite(result["reconstruction"]["metrics"]["psnr"])
    assert {"tokenizer", "evaluate", "latents", "dit", "sample", "judge"} <= set(result["timings_s"])
    assert "class_agreement" in result["generation"] and result["split"] == "val"
    done = cell / eval_dir_name(tiny_scale, "val", judge.name) / "result.json"
    assert json.loads(done.read_text()) == json.loads(json.dumps(result, default=float))
    tok = load_config(TrainConfig, str(cell / "runs" / "tokenizer" / "config.yaml"))
    assert tok.steps == 3 and tok.ssl.enabled is False and tok.data.spec == "builtin:digits:train"
    trained = files_under(cell / "runs")
    tok_weights = load_file(cell / "runs" / "tokenizer" / "model" / "model.safetensors")

    # a finished cell: result.json is read back, nothing runs or is written
    before = files_under(cell)
    assert run_cell(cell, ["ssl=false"], tiny_scale, DIGITS, judge=judge) == json.loads(done.read_text())
    assert files_under(cell) == before

    # a cell interrupted after training (no result.json): evaluated again, trained models reused as they are
    done.unlink()
    again = run_cell(cell, ["ssl=false"], tiny_scale, DIGITS, judge=judge)
    assert done.is_file()
    assert again["reconstruction"]["metrics"]["psnr"] == pytest.approx(result["reconstruction"]["metrics"]["psnr"])
    now = files_under(cell / "runs")
    for path in ("tokenizer/checkpoints/step-00000003.pt", "dit/checkpoints/step-00000003.pt",
                 "dit/model/model.safetensors", "tokenizer/model/model.safetensors"):
        assert now[path] == trained[path], f"{path} was rewritten: the cell retrained"
    reloaded = load_file(cell / "runs" / "tokenizer" / "model" / "model.safetensors")
    assert set(reloaded) == set(tok_weights) and all(torch.equal(reloaded[k], tok_weights[k]) for k in reloaded)

    # another process holds the cell: refused at once without waiting (a finished cell needs no lock)
    done.unlink()
    with file_lock(cell / ".lock"), pytest.raises(LockBusy):
        run_cell(cell, ["ssl=false"], tiny_scale, DIGITS, judge=judge, wait=False)


def _image_folder(root: Path, splits: bool, classes: int = 2, per_class: int = 1) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val") if splits else ("",):
        for cls in range(classes):
            d = root / split / f"c{cls}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_split_spec(tmp_path):
    split_root = _image_folder(tmp_path / "split", splits=True)
    flat = _image_folder(tmp_path / "flat", splits=False)
    assert split_spec(DIGITS, "train") == "builtin:digits:train"
    assert split_spec("builtin:digits:val", "train") == "builtin:digits:val"  # an explicit split wins
    assert split_spec(str(split_root), "train") == f"{split_root}:train"
    assert split_spec(str(split_root), "val") == f"{split_root}:val"
    assert split_spec(str(flat), "train") == str(flat)  # no split folders: the whole folder
    assert split_spec(str(tmp_path / "s-{000..003}.tar"), "train") == str(tmp_path / "s-{000..003}.tar")


def test_run_cell_on_a_folder_trains_on_train_and_evaluates_on_val(tiny_scale, tmp_path, monkeypatch):
    """A folder with train/ and val/ and no judge: the tokenizer and the DiT's latents use train/, evaluation
    val/; without the Inception weights (an empty torch hub here) no samples are drawn only to be thrown away."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    data = _image_folder(tmp_path / "data", splits=True, classes=10, per_class=2)
    scale = dataclasses.replace(tiny_scale, dit_extra=["batch_size=8"])  # 20 training images
    cell = tmp_path / "cell"
    result = run_cell(cell, ["ssl=false", "batch_size=8"], scale, str(data), judge=None)
    tok = load_config(TrainConfig, str(cell / "runs" / "tokenizer" / "config.yaml"))
    assert tok.data.spec == f"{data}:train"
    latents_meta = json.loads((cell / "latents" / "meta.json").read_text())
    assert f"{data}:train" in json.dumps(latents_meta)  # the DiT trains on the train split's latents
    assert result["eval_spec"] == f"{data}:val" and result["split"] == "val"
    assert math.isfinite(result["reconstruction"]["metrics"]["psnr"])
    assert result["generation"] == {} and result["convergence"] == []
    assert not list(cell.rglob("samples.*")) and "sample" not in result["timings_s"]


# ---------------------------------------------------------------------------- several workers on one grid
def _finished_elsewhere(cells_dir: Path, overrides: list[str], scale: paper.Scale, seed: int = 0,
                        psnr: float = 20.0) -> Path:
    """The result another worker (or experiment) left for this (cell, seed) in the shared cells folder."""
    cell_dir = cells_dir / cell_key(overrides, scale, DIGITS, seed)
    write_json_atomic(cell_dir / eval_dir_name(scale, scale.eval_split, "judge:digits") / "result.json",
                      {"cell_dir": str(cell_dir), "seed": seed, "overrides": overrides,
                       "reconstruction": {"metrics": {"psnr": psnr}}})
    return cell_dir


def _experiment_results(out: Path, seed: int = 0) -> dict[str, dict]:
    """Cell name -> its result in the experiment folder `out`."""
    found = [json.loads(p.read_text()) for p in out.glob(f"*/seed-{seed}/result.json")]
    return {r["cell"]: r for r in found}


def _grid_with_one_cell_left(scale: paper.Scale, tmp_path: Path):
    """stc-ssl with every (cell, seed 0) finished in the shared cells folder but the first: (cells, that cell, the
    others, the cells folder, the experiment folder, that cell's run folder)."""
    cells = experiment_cells("stc-ssl", scale)
    held, *others = cells
    cells_dir, out = tmp_path / "cells", tmp_path / "out"
    for cell in others:
        _finished_elsewhere(cells_dir, cells[cell], scale)
    return cells, held, others, cells_dir, out, cells_dir / cell_key(cells[held], scale, DIGITS, 0)


def test_a_held_cell_is_skipped_then_waited_for(tiny_scale, tmp_path):
    """Two workers on one grid: while another process holds a (cell, seed), this one goes on with the rest and
    comes back to it at the end, taking the result the holder wrote (nothing trains here)."""
    cells, held, others, cells_dir, out, held_dir = _grid_with_one_cell_left(tiny_scale, tmp_path)
    holding, went_on = threading.Event(), threading.Event()

    def other_worker() -> None:
        with file_lock(held_dir / ".lock"):
            holding.set()
            deadline = time.monotonic() + 120
            while len(_experiment_results(out)) < len(others) and time.monotonic() < deadline:
                time.sleep(0.05)
            if len(_experiment_results(out)) == len(others):
                went_on.set()
            _finished_elsewhere(cells_dir, cells[held], tiny_scale, psnr=30.0)

    thread = threading.Thread(target=other_worker)
    thread.start()
    assert holding.wait(30)
    report = run_experiment("stc-ssl", "tiny", out=out, cells_dir=cells_dir)
    thread.join()
    assert went_on.is_set(), "the worker waited on the held cell before doing the others"
    results = _experiment_results(out)
    assert set(results) == set(cells)
    assert results[held]["reconstruction"]["metrics"]["psnr"] == 30.0  # the holder's result
    assert results[held]["key"] == held_dir.name
    dirs = {p.parent.parent.name for p in out.glob("*/seed-0/result.json")}  # one folder per cell, plain names
    assert len(dirs) == len(cells) and all(" " not in d and "," not in d for d in dirs)
    assert "Interim report" not in report.read_text()


def test_no_wait_report_only_and_only(tiny_scale, tmp_path, capsys):
    """--no-wait leaves a held (cell, seed) to its holder and names it; --report-only trains nothing and names
    what is missing; --only computes just the named cells (nothing trains: results come from the cells folder);
    both: a report of just the named cells."""
    cells, held, others, cells_dir, out, held_dir = _grid_with_one_cell_left(tiny_scale, tmp_path)
    with file_lock(held_dir / ".lock"):
        report = run_experiment("stc-ssl", "tiny", out=out, cells_dir=cells_dir, wait=False)
        text = report.read_text()
        assert "Interim report: 1 (cell, seed) run(s)" in text
        assert f"{held}, seed 0 (another process holds it)" in text
        assert set(_experiment_results(out)) == set(others)
        capsys.readouterr()
        assert cli(["repro", "stc-ssl", "--no-wait", "--out", str(out), "--cells", str(cells_dir),
                    "--no-progress"]) == 0
        assert f"report: {report}" in capsys.readouterr().out
        assert f"{held}, seed 0 (another process holds it)" in report.read_text()

    # --report-only (an interim report while the grid spans sessions): trains nothing, names what is missing
    before = files_under(cells_dir)
    report = run_experiment("stc-ssl", "tiny", out=out, seeds=2, report_only=True)
    text = report.read_text()
    assert "Interim report: 5 (cell, seed) run(s) not finished yet" in text and f"{held}, seed 0" in text
    measured = text.split("## Measured")[1].split("## Verdicts")[0]
    assert f"| {held} |" not in measured and all(f"| {cell} | 1 |" in measured for cell in others)
    assert files_under(cells_dir) == before
    assert cli(["repro", "stc-ssl", "--report-only", "--out", str(tmp_path / "empty")]) == 2
    assert "no finished (cell, seed) result" in capsys.readouterr().err

    # --only: just this cell's seeds are computed (seed 1 finished elsewhere), the rest reported if finished
    _finished_elsewhere(cells_dir, cells[others[0]], tiny_scale, seed=1)
    report = run_experiment("stc-ssl", "tiny", out=out, seeds=2, only=[others[0]], cells_dir=cells_dir)
    assert set(_experiment_results(out, seed=1)) == {others[0]}
    assert "Interim report: 4 (cell, seed) run(s)" in report.read_text()

    capsys.readouterr()
    assert cli(["repro", "stc-ssl", "--only", f"{others[0]};nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--only nope: not a cell of stc-ssl" in err and "(its cells: single-stage, no SSL;" in err
    assert cli(["repro", "stc-ssl", "--only", f"{others[0]};", "--out", str(tmp_path / "x")]) == 2
    assert "an empty cell name" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    # --report-only --only: a report of just these cells (e.g. cells cut for their cost); the others are named as
    # left out, not as unfinished, and the command line says how the reported cells are computed
    before = files_under(cells_dir)
    kept = others[:2]
    assert cli(["repro", "stc-ssl", "--seeds", "2", "--report-only", "--only", ";".join(kept), "--out",
                str(out)]) == 0
    text = (out / "report.md").read_text()
    left = [c for c in cells if c not in kept]
    quoted = "; ".join(f'"{c}"' for c in left)  # quoted: ssl-method has a cell named "none"
    assert f"left out of this report (`--only`): {quoted}." in text
    assert f'--only "{";".join(kept)}"' in text.split("\n")[2]
    measured = text.split("## Measured")[1].split("## Verdicts")[0]
    assert all(f"| {cell} |" in measured for cell in kept) and not any(f"| {c} |" in measured for c in left)
    assert f"Interim report: 1 (cell, seed) run(s) not finished yet** ({kept[1]}, seed 1)" in text  # not the left out
    assert files_under(cells_dir) == before


# ---------------------------------------------------------------------------- whole experiments (slow)
def _trained_runs(cells_dir: Path) -> dict[str, int]:
    """Trained model file -> mtime_ns, for every run under the shared cells folder."""
    return {str(p.relative_to(cells_dir)): p.stat().st_mtime_ns
            for p in cells_dir.glob("*/runs/*/model/model.safetensors")}


@pytest.mark.slow
def test_repro_stc_ssl_tiny_report_and_resume(tiny_scale, tmp_path, capsys):
    out, cells_dir = tmp_path / "repro", tmp_path / "cells"
    report = run_experiment("stc-ssl", "tiny", out=out)
    assert report == out / "report.md"
    text = report.read_text()
    assert "## Paper (ImageNet 256x256)" in text and "## Measured" in text and (out / "plots.png").is_file()
    paper_part, measured = text.split("## Measured")
    for cell, values in PAPER["stc-ssl"].items():
        assert f"| {cell} | " + ", ".join(f"{k} {v}" for k, v in values.items()) + " |" in paper_part
    table = measured.split("\n\n")[1].splitlines()
    assert table[0].startswith("| cell | seeds | PSNR |")
    rows = table[2:]
    assert [r.split("|")[1].strip() for r in rows] == list(experiment_cells("stc-ssl", tiny_scale))
    for r in rows:
        cols = [c.strip() for c in r.strip("|").split("|")]
        assert len(cols) == len(table[0].strip("|").split("|")) and cols[1] == "1"
        assert float(cols[2]) > 0  # PSNR measured, not n/a (one seed: the value itself)
    results = _experiment_results(out)
    assert set(results) == set(PAPER["stc-ssl"])
    assert all("class_agreement" in r["generation"] for r in results.values())
    assert len(_trained_runs(cells_dir)) == 2 * 4  # a tokenizer and a DiT per cell, in the default cells folder
    assert "n/a (one seed: no spread)" in text  # one seed: no verdict

    # again through the CLI: every cell is read back from its result.json, nothing retrains or is rewritten
    cells_before, seeds_before = files_under(cells_dir), {c: r for c, r in results.items()}
    capsys.readouterr()
    assert cli(["repro", "stc-ssl", "--scale", "tiny", "--out", str(out)]) == 0
    assert f"report: {report}" in capsys.readouterr().out
    assert files_under(cells_dir) == cells_before and _experiment_results(out) == seeds_before


@pytest.fixture
def tiny_fashion(tmp_path, monkeypatch) -> paper.Scale:
    from test_fashion import make_fashion

    from tcae.data import fashion as fm
    from tcae.evaluation import judges

    make_fashion(tmp_path / "fm", per_class=24)
    monkeypatch.setenv(fm.ENV_FOLDER, str(tmp_path / "fm"))
    monkeypatch.setenv(judges.ENV_CACHE, str(tmp_path / "cache"))
    scale = dataclasses.replace(FASHION, tokenizer_steps=2, decoder_steps=2, dit_steps=4, convergence_every=2,
                                convergence_steps=(), dit_limited_step=0, per_class=3, sample_steps=4)
    monkeypatch.setitem(DATA_SCALES, ("tiny", "fashion"), scale)
    return scale


@pytest.mark.slow
def test_repro_fashion_seeds_shared_cells_resume_and_report(tiny_fashion, tmp_path):
    out, cells_dir = tmp_path / "repro", tmp_path / "repro" / "cells"
    report = run_experiment("channels", "tiny", out=out / "channels", data="builtin:fashion", seeds=2)
    assert len(_trained_runs(cells_dir)) == 2 * 2 * 3  # 2 cells x 2 seeds, both tokenizer phases and a DiT each
    text = report.read_text()
    for part in ("## The scale against the paper's regime", "## Paper (ImageNet 256x256)", "## Verdicts",
                 "## Per-seed values", "## Cost and wall time", "![convergence](convergence.png)", "FD-fashion",
                 "vs the split's reconstructions"):
        assert part in text, part
    for name in ("plots.png", "convergence.png", "floor.json", "summary.json"):
        assert (out / "channels" / name).is_file()
    seeds = [_experiment_results(out / "channels", seed) for seed in (0, 1)]
    r0, r1 = seeds[0]["c=8"], seeds[1]["c=8"]
    assert (r0["seed"], r1["seed"], r0["split"]) == (0, 1, "test") and r0["key"] != r1["key"]
    assert [p["step"] for p in r0["convergence"]] == [2, 4]  # a snapshot at 2, the final model at 4
    assert r0["convergence"][-1]["fd_judge"] == r0["generation"]["fd_judge"]
    assert r0["convergence"][-1]["fd_judge_vs_rec"] == r0["generation"]["fd_judge_vs_rec"]
    assert math.isfinite(r0["generation"]["class_agreement"]) and r0["diagnostics"]["probe"]["split"] == "train/test"
    # the decoder's share of the FD: reconstructions vs real, samples vs reconstructions
    gen0 = r0["generation"]
    assert gen0["rfd_judge"] >= 0 and gen0["fd_judge_vs_rec"] >= 0 and 0 <= gen0["rec_class_agreement"] <= 1
    # the summary's mean and std are those of the per-seed values, and the per-seed table shows them
    summary = json.loads((out / "channels" / "summary.json").read_text())["summaries"]["c=8"]["psnr"]
    psnrs = [r["reconstruction"]["metrics"]["psnr"] for r in (r0, r1)]
    assert summary["mean"] == pytest.approx(np.mean(psnrs)) and summary["std"] == pytest.approx(np.std(psnrs, ddof=1))
    row = next(line for line in text.splitlines() if line.startswith("| c=8 | 0 |"))
    assert f"{psnrs[0]:.4g}" in row

    # ssl-method: its iBOT cell is channels' c=8 cell (the same resolved config): only DINO and none train
    trained = _trained_runs(cells_dir)
    run_experiment("ssl-method", "tiny", out=out / "ssl-method", data="builtin:fashion", seeds=1)
    now = _trained_runs(cells_dir)
    assert len(now) == len(trained) + 2 * 3 and all(now[p] == t for p, t in trained.items())
    ibot = _experiment_results(out / "ssl-method")["iBOT"]
    assert ibot["key"] == r0["key"] and ibot["generation"] == r0["generation"]

    # a run killed after training (no result anywhere): evaluated again from the shared run, not retrained
    r16 = seeds[1]["c=16"]
    cell_dir = Path(r16["cell_dir"])
    assert cell_dir.parent == cells_dir
    copy = next(p for p in (out / "channels").glob("*/seed-1/result.json")
                if json.loads(p.read_text())["cell"] == "c=16")
    for p in [copy, *cell_dir.glob("eval-*/result.json")]:
        p.unlink()
    trained = _trained_runs(cells_dir)
    run_experiment("channels", "tiny", out=out / "channels", data="builtin:fashion", seeds=2)
    assert _trained_runs(cells_dir) == trained
    again = _experiment_results(out / "channels", 1)["c=16"]
    assert again["reconstruction"]["metrics"]["psnr"] == pytest.approx(r16["reconstruction"]["metrics"]["psnr"])

    # the val split is another evaluation of the same runs (for choosing settings): nothing retrains
    report_val = run_experiment("channels", "tiny", out=out / "channels-val", data="builtin:fashion", seeds=1,
                                split="val")
    assert _trained_runs(cells_dir) == trained and "evaluated on val" in report_val.read_text()
    rv = _experiment_results(out / "channels-val")["c=8"]
    assert rv["eval_spec"] == "builtin:fashion:val" and rv["key"] == r0["key"]


# ---------------------------------------------------------------------------- tcae demo (slow)
@pytest.mark.slow
def test_demo_writes_report(tmp_path, capsys):
    from tcae.evaluation import build_feature_network
    from tcae.studies.stages import judge_samples

    out = tmp_path / "demo"
    assert cli(["demo", "--out", str(out), "--tokenizer-steps", "10", "--dit-steps", "20", "--per-class", "2"]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    for name in ("samples.png", "reconstructions.png", "loss_tokenizer.png", "loss_dit.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG", name
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["tokenizer_steps"] == 10 and results["settings"]["dit_steps"] == 20
    assert math.isfinite(results["reconstruction"]["metrics"]["psnr"])
    gen = results["generation"]
    assert gen["per_class_total"] == {str(c): 2 for c in range(10)}
    assert set(gen["class_agreement_per_class"]) == {str(c) for c in range(10)}
    assert gen["class_agreement"] == pytest.approx(sum(gen["class_agreement_per_class"].values()) / 20)
    assert math.isfinite(gen["fd_judge"]) and gen["fd_name"] == "FD-digits" and gen["judge"]["accuracy"] > 0.9
    assert gen["reference"] == "builtin:digits:val (360 images at 32 px, ADM center crop)"
    # the reported judgement is that of the saved samples and labels
    with np.load(out / "samples.npz") as npz:
        images, labels = npz["arr_0"], npz["arr_1"]
    assert images.shape == (20, 32, 32, 3) and labels.tolist() == list(np.repeat(range(10), 2))
    again = judge_samples(images, labels, build_feature_network("judge:digits"), "builtin:digits:val", 32)
    assert again["class_agreement"] == pytest.approx(gen["class_agreement"])
    assert again["fd_judge"] == pytest.approx(gen["fd_judge"])
    report = (out / "report.md").read_text()
    assert "# tcae demo report" in report and "10 steps" in report and "20 steps" in report
    for name in ("samples.png", "reconstructions.png", "loss_tokenizer.png", "loss_dit.png"):
        assert f"({name})" in report


@pytest.mark.slow
def test_demo_on_fashion(tiny_fashion, tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--data", "builtin:fashion", "--out", str(out), "--tokenizer-steps", "3", "--dit-steps", "4",
                "--per-class", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["data"] == "builtin:fashion" and results["settings"]["tokenizer_config"] == "fashion"
    gen = results["generation"]
    assert gen["fd_name"] == "FD-fashion"
    assert gen["reference"] == "builtin:fashion:val (20 images at 32 px, ADM center crop)"
    assert gen["per_class_total"] == {str(c): 2 for c in range(10)} and gen["judge"]["network"] == "judge:fashion"
    report = (out / "report.md").read_text()
    assert "Fashion-MNIST, 28x28 padded to 32x32" in report and "--data builtin:fashion" in report
    assert "FD-fashion" in report and "(samples.png)" in report
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].shape == (20, 32, 32, 3)
    assert cli(["demo", "--data", "builtin:fashion:test", "--out", str(out)]) == 2
    assert "no split" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the whole recipe: phase 2, curves
def test_a_cell_runs_both_phases_and_keys_phase_2(tiny_scale, tmp_path, monkeypatch):
    """A scale with a phase 2 trains it from the cell's phase-1 run (encoder frozen), evaluates the
    fine-tuned tokenizer, reports phase 1's PSNR beside it, and keys the cell by both phases."""
    from tcae.evaluation import DigitsJudge

    two = dataclasses.replace(tiny_scale, decoder_config="tiny-decoder", decoder_steps=2, dit_steps=4,
                              convergence_every=2, convergence_steps=(1,), dit_limited_step=2)
    assert cell_key(["ssl=false"], two, DIGITS, 0) != cell_key(["ssl=false"], tiny_scale, DIGITS, 0)
    longer = dataclasses.replace(two, decoder_steps=3)
    assert cell_key(["ssl=false"], longer, DIGITS, 0) != cell_key(["ssl=false"], two, DIGITS, 0)
    cell = tmp_path / "cell"
    # finished before the DiT-limited budget was chosen (on val, while test cells ran): no samples for it yet
    first = run_cell(cell, ["ssl=false"], dataclasses.replace(two, dit_limited_step=0), DIGITS, judge=DigitsJudge())
    eval_dir = cell / eval_dir_name(two, "val", "judge:digits")
    assert "dit_limited_step" not in first["settings"] and not (eval_dir / "samples-dit-limited-step-2.npz").exists()
    trained = {p: p.stat().st_mtime_ns for p in (cell / "runs").glob("**/*") if p.is_file()}
    trained[eval_dir / "samples-final.npz"] = (eval_dir / "samples-final.npz").stat().st_mtime_ns  # not drawn again
    sampled = json.loads((eval_dir / "timings.json").read_text())["sample"]
    # ... the scale has it now: its samples and setting are added from the kept snapshots, nothing trains again
    result = run_cell(cell, ["ssl=false"], two, DIGITS, judge=DigitsJudge())
    assert {p: p.stat().st_mtime_ns for p in trained} == trained and result["settings"]["dit_limited_step"] == 2
    assert [p["step"] for p in result["convergence"]] == [p["step"] for p in first["convergence"]]
    assert json.loads((eval_dir / "timings.json").read_text())["sample"] == sampled  # no final evaluation again
    p1, p2 = cell / "runs" / "tokenizer", cell / "runs" / "decoder"
    cfg2 = load_config(TrainConfig, str(p2 / "config.yaml"))
    assert cfg2.phase == "decoder" and cfg2.steps == 2 and cfg2.init == str(p1)
    assert cfg2.data.spec == "builtin:digits:train" and cfg2.data.image_size == 32
    enc = [k for k in load_file(p1 / "model" / "model.safetensors") if k.startswith("encoder.")]
    w1, w2 = load_file(p1 / "model" / "model.safetensors"), load_file(p2 / "model" / "model.safetensors")
    assert enc and all(torch.equal(w1[k], w2[k]) for k in enc)  # the encoder is phase 1's, frozen
    assert any(not torch.equal(w1[k], w2[k]) for k in w1 if k.startswith("decoder."))  # the decoder trained
    assert {"tokenizer", "decoder"} <= set(result["timings_s"])
    assert result["settings"]["decoder_steps"] == 2 and "psnr" in result["reconstruction_phase1"]["metrics"]
    assert result["cost"]  # the shipped (phase-2) tokenizer's cost
    # the final samples and those at the DiT-limited budget, in ADM's layout, for anyone's own judge
    for name in ("samples-final.npz", "samples-dit-limited-step-2.npz"):
        with np.load(eval_dir / name) as f:
            assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (20, 32, 32, 3) and f["arr_1"].shape == (20,)
    from tcae.studies.report import metric
    assert metric(result, "fd_lim") == next(p["fd_judge"] for p in result["convergence"] if p["step"] == 2)
    assert metric(result, "fd_lim") == pytest.approx(next(p["fd_judge"] for p in first["convergence"]
                                                          if p["step"] == 2))  # the same draw as its first point
    assert run_cell(cell, ["ssl=false"], two, DIGITS, judge=DigitsJudge()) == result  # up to date: read back
    # a dense early snapshot (convergence_steps) besides every convergence_every; the first regular one is step 2
    assert [p["step"] for p in result["convergence"]] == [1, 2, 4]
    assert metric(result, "gap1") == result["convergence"][1]["fd_judge_vs_rec"]


def test_a_dit_limited_budget_must_be_a_snapshot():
    ok = dataclasses.replace(FASHION, dit_limited_step=FASHION.dit_steps)  # the last step: the final samples
    assert ok.dit_limited_step == ok.dit_steps
    for bad in (250, 2 * FASHION.dit_steps):
        with pytest.raises(ValueError, match=f"dit_limited_step={bad} is not a DiT snapshot"):
            dataclasses.replace(FASHION, dit_limited_step=bad)


def test_choose_steps_takes_the_first_budget_whose_doubling_is_flat():
    from tcae.studies.curves import choose_steps

    a = {1000: 18.0, 2000: 19.0, 4000: 19.5, 8000: 19.6}
    b = {1000: 17.0, 2000: 18.5, 4000: 18.7, 8000: 18.75}
    assert choose_steps({"a": a, "b": b}) == (4000, True)  # 2000->4000: +0.5 for a; 4000->8000 under 0.3 for both
    assert choose_steps({"a": a, "b": {**b, 8000: 19.2}}) == (8000, False)  # b still climbs: the largest, no plateau
    # a cap (what the experiments can afford): larger budgets are measured, never chosen
    assert choose_steps({"a": a, "b": {**b, 8000: 19.2}}, cap=4000) == (4000, False)
    assert choose_steps({"a": a, "b": b}, cap=4000) == (4000, True)  # its doubling (8000) is measured: a plateau
    with pytest.raises(ValueError, match="cap of 500"):
        choose_steps({"a": a}, cap=500)


def test_curves_cli_trains_both_phases_and_writes_the_report(tmp_path, monkeypatch):
    scale = dataclasses.replace(SCALES["tiny"], decoder_config="tiny-decoder", curve_steps=(1, 2),
                                curve_decoder_steps=(1,))
    monkeypatch.setitem(SCALES, "tiny", scale)
    out = tmp_path / "curves"
    assert cli(["repro", "curves", "--scale", "tiny", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "curves.json").read_text())
    assert set(summary["phase1"]) == set(summary["phase2"]) == {"baseline (single-stage, no SSL)",
                                                               "TC-AE (staged, SSL)"}
    assert summary["chosen"]["phase1_steps"] in (1, 2) and (out / "curves.png").is_file()
    chosen = summary["chosen"]["phase1_steps"]
    runs = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert f"curve-baseline-single-stage-no-SSL-p1-{chosen}-p2-1" in runs and len(runs) == 6
    assert summary["chosen"]["phase2_steps"] == 1 and summary["chosen"]["phase2_plateau"] is False
    text = (out / "report.md").read_text()
    assert "## Phase 1 (joint training)" in text and "## Phase 2" in text
    assert cli(["repro", "curves", "--scale", "tiny", "--eval-split", "test", "--out", str(out)]) == 2


def test_an_experiment_folder_holds_one_configuration(tiny_scale, tmp_path):
    """Seeds of another configuration (a result whose run key is not the cell's now, e.g. after a default
    changed) are refused, naming the file; --report-only still reports what is there."""
    cells = experiment_cells("stc-ssl", tiny_scale)
    cells_dir, out = tmp_path / "cells", tmp_path / "out"
    for overrides in cells.values():
        _finished_elsewhere(cells_dir, overrides, tiny_scale)
    run_experiment("stc-ssl", "tiny", out=out, cells_dir=cells_dir)  # nothing trains: results are there
    stale = next(out.glob("*/seed-0/result.json"))
    write_json_atomic(stale, {**json.loads(stale.read_text()), "key": "0123456789abcdef"})
    with pytest.raises(ValueError, match="is a result of another configuration .*0123456789abcdef"):
        run_experiment("stc-ssl", "tiny", out=out, cells_dir=cells_dir)
    assert run_experiment("stc-ssl", "tiny", out=out, cells_dir=cells_dir, report_only=True).is_file()


def test_the_fashion_config_defaults_follow_the_evidence(capsys):
    """ssl-causes (issue 12) chose alpha=10 and the full-image reconstruction view on val and confirmed them on
    test: they are the fashion config's defaults, as --print-config shows (data swapped: no download here)."""
    assert cli(["train", "fashion", "data=builtin:digits", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "alpha: 10.0" in printed and "recon_view: full" in printed and "ema_warmup: true" in printed
    cells = experiment_cells("stc-ssl", DATA_SCALES[("tiny", "fashion")])
    assert all("loss.alpha=1" in o for c, o in cells.items() if "no SSL" in c)  # L_rec alone without SSL


def test_the_report_carries_the_curves_and_the_dit_limited_budget(tmp_path):
    """Where `tcae repro curves` ran beside the experiment on the same data, its tables go in the report; results
    of the whole recipe get FD at the DiT-limited budget (their settings' snapshot), its verdicts, the
    baseline's FD/rFD per snapshot, and the steps TC-AE needs to reach the baseline's FD there."""
    from tcae.studies.curves import choose_steps

    points = {"baseline (single-stage, no SSL)": {1000: {"psnr": 18.0, "ssim": 0.6}, 2000: {"psnr": 18.1, "ssim": 0.6}},
              "TC-AE (staged, SSL)": {1000: {"psnr": 17.0, "ssim": 0.5}, 2000: {"psnr": 17.2, "ssim": 0.55}}}
    chosen, plateau = choose_steps({m: {s: r["psnr"] for s, r in c.items()} for m, c in points.items()})
    write_json_atomic(tmp_path / "curves" / "curves.json", {
        "data": DIGITS, "split": "val", "tolerance_db": 0.3, "phase1": points, "phase2": points,
        "chosen": {"phase1_steps": chosen, "phase1_plateau": plateau, "phase2_steps": chosen,
                   "phase2_plateau": plateau}})
    curve = {"staged, no SSL": [60.0, 30.0, 20.0], "single-stage, no SSL": [90.0, 60.0, 40.0],
             "staged, SSL": [50.0, 25.0, 15.0], "single-stage, SSL": [70.0, 50.0, 30.0]}
    results = {cell: {s: {"seed": s, "key": f"{cell}-{s}", "settings": {"decoder_steps": 5, "dit_limited_step": 200,
                                                                        "convergence_every": 100},
                          "generation": {"fd_judge": fds[-1] + s, "rfd_judge": 15.0},
                          "convergence": [{"step": 100 * (i + 1), "fd_judge": fd + s} for i, fd in enumerate(fds)]}
                      for s in range(3)} for cell, fds in curve.items()}
    text = write_report(tmp_path / "stc-ssl", "stc-ssl", "tiny", SCALES["tiny"], DIGITS, "val", results, None,
                        3).read_text()
    assert "## How many steps: learning curves of both phases" in text and "Phase 1: **1000 steps**" in text
    assert "FD @ DiT-limited budget" in text
    outcome = _verdict_rows(text)
    assert outcome["TC-AE generates better than the baseline"] == "reproduced"  # 26 vs 61 at step 200
    assert "DiT-limited budget (the last snapshot with ratio >= 3): 200 steps." in text  # 61/15 >= 3 > 41/15
    assert "to the baseline's FD at the DiT-limited budget (200 steps)" in text
    # a phase-1 choice below the largest measured budget without a plateau: the compute cap, said as such
    write_json_atomic(tmp_path / "curves" / "curves.json", {
        "data": DIGITS, "split": "val", "tolerance_db": 0.3, "phase1": points, "phase2": points,
        "chosen": {"phase1_steps": 1000, "phase1_plateau": False, "phase2_steps": 2000, "phase2_plateau": False}})
    text = write_report(tmp_path / "stc-ssl", "stc-ssl", "tiny", SCALES["tiny"], DIGITS, "val", results, None,
                        3).read_text()
    assert ("Phase 1: **1000 steps** (the most the experiments' compute affords: no plateau reached; up to 2000 "
            "steps were measured); phase 2: **2000 steps** (the largest budget: no plateau reached)") in text


def test_a_report_never_pools_two_judges(tmp_path):
    """Results measured by a judge trained on another machine: the report keeps their judge-free values (PSNR),
    leaves out their FD and convergence and names them; its judge is the one that measured most results, and the
    real-image floor is that judge's (computed only by it, never taken from another judge's floor.json)."""
    from tcae.evaluation import build_feature_network
    from tcae.evaluation.judges import judge_identity

    live = build_feature_network("judge:digits").describe()  # this machine's judge
    elsewhere = {**live, "accuracy": live["accuracy"] - 0.01}  # the judge another machine trained
    cells = list(experiment_cells("stc-ssl", SCALES["tiny"]))

    def write(out: Path, judge_of) -> None:
        for i, cell in enumerate(cells):
            for s in range(3):
                judge = judge_of(i, s)
                write_json_atomic(out / slug(cell, keep="") / f"seed-{s}" / "result.json", {
                    "seed": s, "cell": cell, "key": f"{i}{s}", "reconstruction": {"metrics": {"psnr": 20.0 + s}},
                    "generation": {"fd_judge": 10.0 * (i + 1) + s + (100 if judge is not live else 0),
                                   "judge": judge},
                    "convergence": [{"step": 2, "fd_judge": 50.0 + s}]})

    # most results by the other machine's judge, one (cell 0, seed 2) by this one's
    out = tmp_path / "mixed"
    write(out, lambda i, s: live if (i, s) == (0, 2) else elsewhere)
    text = run_experiment("stc-ssl", "tiny", out=out, seeds=3, report_only=True).read_text()
    assert f"**Measured by another judge: {cells[0]}, seed 2.**" in text
    sums = json.loads((out / "summary.json").read_text())["summaries"]
    assert sums[cells[0]]["psnr"]["n"] == 3 and sums[cells[0]]["fd"] == summarize([110.0, 111.0])
    assert sums[cells[1]]["fd"]["n"] == 3
    assert judge_identity(elsewhere) in text and "Floor:" not in text  # no floor of that judge here
    assert not (out / "floor.json").exists()

    # all by this machine's judge: its floor is computed and kept with its identity; a floor.json measured by
    # another judge is measured again, not reported
    out = tmp_path / "here"
    write(out, lambda i, s: live)
    write_json_atomic(out / "floor.json", {"source": "x", "num_samples": 1, "fd_judge": 1e9, "class_agreement": 0.0,
                                           "judge": judge_identity(elsewhere)})
    text = run_experiment("stc-ssl", "tiny", out=out, seeds=3, report_only=True).read_text()
    floor = json.loads((out / "floor.json").read_text())
    assert floor["judge"] == judge_identity(live) and floor["fd_judge"] < 1e9
    assert "Measured by another judge" not in text and f"is {floor['fd_judge']:.3g}" in text


def test_repro_judge_weights_flag(tmp_path, capsys):
    """--judge-weights: a judge file for data that has a trainable judge; refused (exit 2, nothing written) where
    the data's judge takes none, for the curves, and for a file that is not there."""
    out = tmp_path / "r"
    assert cli(["repro", "stc-ssl", "--judge-weights", str(tmp_path / "j.safetensors"), "--out", str(out)]) == 2
    assert "the digits judge is fitted on the fly and takes no weights file" in capsys.readouterr().err
    assert cli(["repro", "curves", "--judge-weights", "j.safetensors", "--out", str(out)]) == 2
    assert "does not take --judge-weights" in capsys.readouterr().err
    assert not out.exists()
    # a report measured with a judge file says so in its command line
    from tcae.studies.report import _command

    line = _command(Path("o"), "ssl-method", "tiny", FASHION, "builtin:fashion", "test", 3, judge_weights="j.st")
    assert line.endswith("--judge-weights j.st --out o") and "--data builtin:fashion" in line
