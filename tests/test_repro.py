"""`tcae repro` on Fashion-MNIST: the tiny scale's mapping onto the paper's regime, shared (cell, seed) runs,
the seeds' spread and the verdict rule, the convergence ratio, the DINO cell, resumption, the report."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tcae import repro, repro_report
from tcae.config import TRAIN_ALIASES, TrainConfig, load_config, model_overrides
from tcae.models import create_model

FASHION = repro.DATA_SCALES[("tiny", "fashion")]


def _model(overrides: list[str], scale: repro.Scale = FASHION):
    cfg = load_config(TrainConfig, scale.tokenizer_config, overrides, TRAIN_ALIASES)
    over = model_overrides(cfg.model)
    over.setdefault("image_size", cfg.data.image_size)
    return create_model(cfg.model.name, **over)


def test_scale_chosen_by_data():
    assert repro.resolve_scale("tiny", None) == (repro.SCALES["tiny"], "builtin:digits")
    assert repro.resolve_scale("tiny", "builtin:digits")[0] is repro.SCALES["tiny"]
    assert repro.resolve_scale("tiny", "builtin:fashion")[0] is FASHION
    assert repro.resolve_scale("tiny", "builtin:fashion@/x")[0] is FASHION
    with pytest.raises(ValueError, match="needs --data"):
        repro.resolve_scale("small", None)


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
    cells = repro.experiment_cells("token-scaling", FASHION)
    ratios = sorted({_model(o).config.patch_size / _model(o).config.compression for o in cells.values()})
    assert ratios == [1 / 8, 1 / 4, 1 / 2]  # the paper: p in 4, 8, 16 at f=32
    assert list(repro.experiment_cells("channels", FASHION)) == ["c=8", "c=16"]
    assert "1/24.5" in FASHION.mapping and "4 / 16" in FASHION.mapping


def test_cell_key_deduplicates_identical_runs():
    key = repro.cell_key
    data = "builtin:fashion"
    tcae = key([], FASHION, data, 0)
    assert key(["model.latent_channels=8"], FASHION, data, 0) == tcae  # channels' c=8 cell is TC-AE
    assert key(["model.patch_size=4", "model.staged=true"], FASHION, data, 0) == tcae  # token-scaling p=4
    assert key(["ssl=false"], FASHION, data, 0) == key(["ssl.enabled=false"], FASHION, data, 0)
    # keys of runs made before a setting existed do not move (the grid spans sessions): pinned values
    assert tcae == "b3afc6b73b3c625f" and key(["ssl=false"], FASHION, data, 0) == "8bfc788e6fd482a9"
    assert key(["ssl.recon_view=crop"], FASHION, data, 0) == tcae != key(["ssl.recon_view=full"], FASHION, data, 0)
    assert key([], FASHION, data, 1) != tcae  # seeds are distinct runs
    assert key(["model.latent_channels=16"], FASHION, data, 0) != tcae
    assert key([], dataclasses.replace(FASHION, dit_steps=7), data, 0) != tcae
    # sample counts do not retrain: they select another evaluation folder of the same run
    assert repro.eval_dir_name(FASHION, "test", "judge:fashion") != repro.eval_dir_name(
        dataclasses.replace(FASHION, per_class=3), "test", "judge:fashion")
    # across the paper's four experiments, 10 of the 15 cells are distinct runs
    paper = ("stc-ssl", "ssl-method", "channels", "token-scaling")
    cells = {key(o, FASHION, data, 0) for e in paper for o in repro.experiment_cells(e, FASHION).values()}
    assert len(cells) == 10
    # ssl-causes (item 6) reuses stc-ssl's staged cells and adds one run per alpha != 1 and the recon view
    extra = {c: key(o, FASHION, data, 0) for c, o in repro.experiment_cells("ssl-causes", FASHION).items()}
    assert extra["staged, SSL, alpha=1"] == tcae and extra["staged, no SSL"] == key(["ssl=false"], FASHION, data, 0)
    assert len(set(extra.values()) - cells) == len(repro.SSL_ALPHAS) + 1


def test_dino_cell_has_no_masks_and_no_patch_loss(tmp_path):
    """The ssl-method experiment's DINO cell: no masked global crops and no patch (MIM) loss, in a real step."""
    from tcae.training.tokenizer import TokenizerTrainer

    dino = repro.experiment_cells("ssl-method", repro.SCALES["tiny"])["DINO"]
    cfg = load_config(TrainConfig, "digits", [f"run_dir={tmp_path}", "steps=1", "batch_size=4", "progress=false",
                                              "model.fine_depth=1", "model.coarse_depth=1", *dino], TRAIN_ALIASES)
    assert cfg.ssl.enabled and cfg.ssl.mask_sample_prob == 0 and cfg.ssl.patch_weight == 0
    trainer = TokenizerTrainer(cfg)
    batch = next(iter(trainer.loader))
    assert batch["masks"].shape[0] == 2 * 4 and not batch["masks"].any()  # no global view is masked
    terms = trainer.train_step([batch])
    assert float(terms["ibot_mim"]) == 0.0
    assert float(terms["loss"]) == pytest.approx(float(terms["l1"] + terms["ibot_cls"]), rel=1e-6)
    ibot = repro.experiment_cells("ssl-method", repro.SCALES["tiny"])["iBOT"]
    cfg_ibot = load_config(TrainConfig, "digits", ibot, TRAIN_ALIASES)
    assert cfg_ibot.ssl.mask_sample_prob > 0 and cfg_ibot.ssl.patch_weight > 0


def _summary(values):
    return repro_report.summarize(values)


def test_spread_and_verdict_rule():
    a, b = _summary([10.0, 11.0, 12.0]), _summary([13.0, 13.5, 14.0])
    assert a == {"n": 3, "mean": 11.0, "std": 1.0, "min": 10.0, "max": 12.0}
    # FD (lower better): a beats b by 2.5 > spread 1.0
    assert repro_report.compare(a, b, higher_better=False) == ("better", -2.5, 1.0)
    assert repro_report.compare(a, b, higher_better=True)[0] == "worse"
    c = _summary([11.5, 12.0, 12.5])
    assert repro_report.compare(a, c, False)[0] == "no difference"  # |11 - 12| = 1 <= max(1, 0.5)
    assert repro_report.compare(_summary([1.0]), _summary([2.0]), False)[0].startswith("n/a")
    assert repro_report._outcome("no difference", "better") == "no difference"
    assert repro_report._outcome("no difference", "not better") == "reproduced"
    assert repro_report._outcome("worse", "better") == "not reproduced (opposite)"
    assert repro_report._outcome("worse", "worse") == "reproduced"


def test_speedup_interpolates_between_snapshots():
    base = [{"convergence": [{"step": s, "fd_judge": f} for s, f in ((100, 9.0), (200, 6.0), (300, 5.0))]}]
    fast = [{"convergence": [{"step": s, "fd_judge": f} for s, f in ((100, 7.0), (200, 4.0), (300, 3.0))]}]
    sp = repro_report.speedup(fast, base)["mean_curve"]
    # target 5.0 reached between (100, 7) and (200, 4): 100 + 2/3 * 100 steps
    assert sp["steps"] == pytest.approx(166.667, rel=1e-4) and sp["ratio"] == pytest.approx(1.8)
    assert not sp["upper_bound"]
    assert repro_report.steps_to_reach([(100, 4.0)], 5.0) == (100.0, True)
    assert repro_report.steps_to_reach([(100, 6.0), (200, 5.5)], 5.0) == (None, False)


@pytest.fixture
def tiny_fashion(tmp_path, monkeypatch):
    from test_fashion import make_fashion

    from tcae.data import fashion as fm
    from tcae.evaluation import judges

    make_fashion(tmp_path / "fm", per_class=24)
    monkeypatch.setenv(fm.ENV_FOLDER, str(tmp_path / "fm"))
    monkeypatch.setenv(judges.ENV_CACHE, str(tmp_path / "cache"))
    scale = dataclasses.replace(FASHION, tokenizer_steps=2, dit_steps=4, convergence_every=2, per_class=3,
                                sample_steps=4)
    monkeypatch.setitem(repro.DATA_SCALES, ("tiny", "fashion"), scale)
    return scale


def _count_training(monkeypatch) -> dict:
    """Count the trainings that really run (the pipeline stages skip a finished model)."""
    from tcae.training import dit, tokenizer

    calls = {"tokenizer": 0, "dit": 0}
    for module, name, key in ((tokenizer, "train_tokenizer", "tokenizer"), (dit, "train_dit", "dit")):
        real = getattr(module, name)

        def counted(*a, _real=real, _key=key, **k):
            calls[_key] += 1
            return _real(*a, **k)
        monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.slow
def test_repro_fashion_seeds_shared_cells_resume_and_report(tiny_fashion, tmp_path, monkeypatch):
    out = tmp_path / "repro"
    calls = _count_training(monkeypatch)
    report = repro.run_experiment("channels", "tiny", out=out / "channels", data="builtin:fashion", seeds=2)
    assert calls == {"tokenizer": 4, "dit": 4}
    text = report.read_text()
    for part in ("## The scale against the paper's regime", "## Paper (ImageNet 256x256)", "## Verdicts",
                 "## Per-seed values", "## Cost and wall time", "![convergence](convergence.png)", "FD-fashion"):
        assert part in text, part
    for name in ("plots.png", "convergence.png", "floor.json", "summary.json"):
        assert (out / "channels" / name).is_file()
    r0 = json.loads((out / "channels" / "c-8" / "seed-0" / "result.json").read_text())
    r1 = json.loads((out / "channels" / "c-8" / "seed-1" / "result.json").read_text())
    assert (r0["seed"], r1["seed"], r0["split"]) == (0, 1, "test") and r0["key"] != r1["key"]
    assert [p["step"] for p in r0["convergence"]] == [2, 4]  # a snapshot at 2, the final model at 4
    assert r0["convergence"][-1]["fd_judge"] == r0["generation"]["fd_judge"]
    assert math.isfinite(r0["generation"]["class_agreement"]) and r0["diagnostics"]["probe"]["split"] == "train/test"
    # the decoder's share of the FD: reconstructions vs real, samples vs reconstructions
    gen0 = r0["generation"]
    assert gen0["rfd_judge"] >= 0 and gen0["fd_judge_vs_rec"] >= 0 and 0 <= gen0["rec_class_agreement"] <= 1
    # a result finished before the decoder gap existed gets it from its run (samples drawn again, checked)
    target0 = out / "channels" / "c-8" / "seed-0" / "result.json"
    stripped = json.loads(target0.read_text())
    for k in ("rfd_judge", "fd_judge_vs_rec", "rec_class_agreement"):
        del stripped["generation"][k]
    assert [p["fd_judge_vs_rec"] for p in r0["convergence"]][-1] == gen0["fd_judge_vs_rec"]
    for p in stripped["convergence"]:
        del p["fd_judge_vs_rec"]
    target0.write_text(json.dumps(stripped))
    # ... and the run's own files as they were before (so that everything is drawn and judged again)
    eval0 = next(Path(r0["cell_dir"]).glob("eval-test-*"))
    (eval0 / "reconstructions.npz").unlink()
    conv = json.loads((eval0 / "convergence.json").read_text())
    (eval0 / "convergence.json").write_text(json.dumps([{k: v for k, v in p.items() if k != "fd_judge_vs_rec"}
                                                        for p in conv]))
    (eval0 / "result.json").write_text(json.dumps(stripped))
    # the summary's mean and std are those of the per-seed values
    summary = json.loads((out / "channels" / "summary.json").read_text())["summaries"]["c=8"]["psnr"]
    psnrs = [r["reconstruction"]["metrics"]["psnr"] for r in (r0, r1)]
    assert summary["mean"] == pytest.approx(np.mean(psnrs)) and summary["std"] == pytest.approx(np.std(psnrs, ddof=1))
    row = next(line for line in text.splitlines() if line.startswith("| c=8 | 0 |"))
    assert f"{psnrs[0]:.4g}" in row

    # ssl-method: its iBOT cell is channels' c=8 cell (the same resolved config): only DINO and none train
    calls.update(tokenizer=0, dit=0)
    repro.run_experiment("ssl-method", "tiny", out=out / "ssl-method", data="builtin:fashion", seeds=1)
    assert calls == {"tokenizer": 2, "dit": 2}
    ibot = json.loads((out / "ssl-method" / "iBOT" / "seed-0" / "result.json").read_text())
    assert ibot["key"] == r0["key"] and ibot["generation"] == r0["generation"]

    # a run killed after training (no result anywhere): evaluated again from the shared run, not retrained
    target = out / "channels" / "c-16" / "seed-1" / "result.json"
    cell_dir = Path(json.loads(target.read_text())["cell_dir"])
    assert cell_dir.parent == out / "cells"
    target.unlink()
    for p in cell_dir.glob("eval-*/result.json"):
        p.unlink()
    calls.update(tokenizer=0, dit=0)
    repro.run_experiment("channels", "tiny", out=out / "channels", data="builtin:fashion", seeds=2)
    assert calls == {"tokenizer": 0, "dit": 0}
    assert (out / "channels" / "c-16" / "seed-1" / "result.json").is_file()
    upgraded = json.loads(target0.read_text())
    for k in ("rfd_judge", "fd_judge_vs_rec", "rec_class_agreement"):
        assert upgraded["generation"][k] == pytest.approx(gen0[k], rel=1e-6), k
    assert [p["fd_judge_vs_rec"] for p in upgraded["convergence"]] == pytest.approx(
        [p["fd_judge_vs_rec"] for p in r0["convergence"]], rel=1e-6)
    assert "vs the split's reconstructions" in (out / "channels" / "report.md").read_text()
    # the shared run's own result got them too (what other experiments sharing the run read)
    own = json.loads((eval0 / "result.json").read_text())
    assert own["generation"]["fd_judge_vs_rec"] == upgraded["generation"]["fd_judge_vs_rec"]
    assert (eval0 / "reconstructions.npz").is_file()

    # the val split is another evaluation of the same runs (for choosing settings): nothing retrains
    report_val = repro.run_experiment("channels", "tiny", out=out / "channels-val", data="builtin:fashion",
                                      seeds=1, split="val")
    assert calls == {"tokenizer": 0, "dit": 0} and "evaluated on val" in report_val.read_text()
    rv = json.loads((out / "channels-val" / "c-8" / "seed-0" / "result.json").read_text())
    assert rv["eval_spec"] == "builtin:fashion:val" and rv["key"] == r0["key"]


def test_workers_skip_busy_cells_and_come_back(tmp_path, monkeypatch, capsys):
    """Two processes can run the same experiments: a (cell, seed) another one holds is skipped at first and
    waited for at the end."""
    cell_dir = tmp_path / "cells" / "x"
    with repro._locked(cell_dir):
        with pytest.raises(repro.CellBusy):
            repro.run_cell(cell_dir, [], repro.SCALES["tiny"], "builtin:digits", wait=False)

    order, busy_once = [], {"staged, SSL"}

    def fake_run_cell(cell_dir, overrides, scale, data, judge, seed, split, cache, wait=True):
        cell = next(c for c, o in repro.experiment_cells("stc-ssl", scale).items() if o == overrides)
        order.append((cell, wait))
        if cell in busy_once and not wait:
            raise repro.CellBusy(cell)
        return {"cell_dir": str(cell_dir), "seed": seed, "reconstruction": {"metrics": {"psnr": 20.0}}}

    monkeypatch.setattr(repro, "run_cell", fake_run_cell)
    monkeypatch.setattr(repro, "_real_floor", lambda *a, **k: None)
    report = repro.run_experiment("stc-ssl", "tiny", out=tmp_path / "out", cells_dir=tmp_path / "cells")
    assert order == [("single-stage, no SSL", False), ("staged, no SSL", False), ("single-stage, SSL", False),
                     ("staged, SSL", False), ("staged, SSL", True)]
    assert (tmp_path / "out" / "staged-SSL" / "seed-0" / "result.json").is_file() and report.is_file()

    # --no-wait: a held cell is left to its holder and named in an interim report, not waited for
    order.clear()
    (tmp_path / "out" / "staged-SSL" / "seed-0" / "result.json").unlink()
    report = repro.run_experiment("stc-ssl", "tiny", out=tmp_path / "out", cells_dir=tmp_path / "cells",
                                  wait=False)
    assert order == [("staged, SSL", False)]
    assert "Interim report: 1 (cell, seed) run(s)" in report.read_text()
    assert "staged, SSL, seed 0 (another process holds it)" in report.read_text()
    assert not (tmp_path / "out" / "staged-SSL" / "seed-0" / "result.json").exists()
    from tcae.cli.main import main as cli
    order.clear()
    assert cli(["repro", "stc-ssl", "--no-wait", "--out", str(tmp_path / "out"), "--cells", str(tmp_path / "cells"),
                "--no-progress"]) == 0
    assert order == [("staged, SSL", False)]

    # --report-only (an interim report while the grid spans sessions): trains nothing, names what is missing
    order.clear()
    report = repro.run_experiment("stc-ssl", "tiny", out=tmp_path / "out", seeds=2, report_only=True)
    assert order == []
    text = report.read_text()
    assert "Interim report: 5 (cell, seed) run(s) not finished yet" in text and "staged, SSL, seed 0" in text
    assert "| staged, SSL |" not in text.split("## Measured")[1].split("## Verdicts")[0]
    assert cli(["repro", "stc-ssl", "--report-only", "--out", str(tmp_path / "empty")]) == 2

    # --only: just these cells are computed, the rest reported if finished
    busy_once.clear()
    report = repro.run_experiment("stc-ssl", "tiny", out=tmp_path / "out", seeds=2, only=["staged, SSL"],
                                  cells_dir=tmp_path / "cells")
    assert order == [("staged, SSL", False), ("staged, SSL", False)]  # seed 0, then seed 1
    assert "Interim report: 3 (cell, seed) run(s)" in report.read_text()
    capsys.readouterr()
    assert cli(["repro", "stc-ssl", "--only", "staged, SSL;nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--only nope: not a cell of stc-ssl" in err and "(its cells: single-stage, no SSL;" in err
    assert cli(["repro", "stc-ssl", "--only", "staged, SSL;", "--out", str(tmp_path / "x")]) == 2
    assert "an empty cell name" in capsys.readouterr().err
    assert cli(["repro", "stc-ssl", "--only", "staged, SSL", "--report-only", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_demo_on_fashion(tiny_fashion, tmp_path, capsys):
    from tcae.cli.main import main as cli

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


def test_every_experiment_has_verdicts_on_its_own_cells_including_the_dits_share():
    """Each experiment's claims compare two of its own cells on a known metric; since the final FD at the
    tiny scale measures the decoder (docs/repro-fashion-tiny.md), every paper experiment that claims
    something about generation also has a verdict on the DiT's share (FD vs rec. at the first snapshot)."""
    for name in (*repro.PAPER, "ssl-causes"):
        cells = repro.experiment_cells(name, FASHION)
        rows = repro_report.claims(name, FASHION)
        assert rows, name
        for _, _, x, y, key, expected in rows:
            assert x in cells and y in cells and x != y, (name, x, y)
            assert key in repro_report.METRICS and expected in ("better", "worse", "not better"), (name, key)
        if any(key == "fd" for *_, key, _ in rows):
            assert any(key == "gap1" for *_, key, _ in rows), name
