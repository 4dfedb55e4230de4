"""The command-line grammar: one spelling per concept, messages for bad input (exact fragments), exit
codes (0 done, 2 bad input, 3 non-finite loss), --print-config, --version, and a --help that does not
import torch."""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import tcae
from tcae.cli import bench as bench_cmd
from tcae.cli import studies as studies_cmd
from tcae.cli.main import build_parser
from tcae.cli.main import main as cli
from tcae.config import TRAIN_ALIASES, TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["image_size=32", "batch_size=4", "data.epoch_size=64", "ssl=false", "optim.warmup_steps=0", "log_every=1",
         "image_every=0", "progress=false"]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _run(argv, capsys):
    code = cli([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------- help, version, spelling
def test_help_and_every_command_help_do_not_import_torch():
    commands = sorted(_subcommands())
    script = (
        "import sys, time\n"
        "from tcae.cli.main import main\n"
        "t = time.perf_counter()\n"
        "assert main(['--help']) == 0\n"
        f"for name in {commands!r}:\n"
        "    assert main([name, '--help']) == 0, name\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'omegaconf', 'PIL', 'torchvision') if m in sys.modules)\n"
        "print('HEAVY', heavy, time.perf_counter() - t)\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    # fast because nothing heavy is imported (with torch, this took ~4 s): checked by what is imported, not by
    # a wall-clock limit that parallel test workers could break
    assert "HEAVY [] " in res.stdout, res.stdout[-500:]
    assert "reconstruct" in res.stdout and "push" in res.stdout


def test_version(capsys):
    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.strip() == f"tcae {tcae.__version__}"
    tomllib = pytest.importorskip("tomllib")
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == tcae.__version__


def test_one_spelling_per_concept():
    """--model is a tokenizer everywhere (never --tokenizer), --out is a directory, --no-progress everywhere."""
    for name, p in _subcommands().items():
        options = p._option_string_actions
        assert "--no-progress" in options, name
        assert "--tokenizer" not in options, name
        if "--out" in options:
            assert options["--out"].metavar == "DIR", name
        if "--model" in options:
            assert options["--model"].metavar == "MODEL", name
    assert "--dit" in _subcommands()["sample"]._option_string_actions


def test_parser_constants_match_the_library():
    """The parser spells a few lists itself (to build without torch); they must be the library's."""
    from tcae.bench.run import DEFAULT_MODELS
    from tcae.studies import paper

    assert tuple(bench_cmd.DEFAULT_MODELS) == tuple(DEFAULT_MODELS)
    assert set(studies_cmd.EXPERIMENTS) == set(paper.PAPER) and set(studies_cmd.SCALES) == set(paper.SCALES)


# ---------------------------------------------------------------------------- bad input: exit 2
@pytest.mark.parametrize("argv, fragments", [
    (["train", "tiny", "--steps", "3"],
     ["--steps is not an option of `tcae train`", "training commands take key=value overrides", "write steps=3"]),
    (["train", "tiny", "--batch-size=4", "--lr", "1e-4"], ["write batch_size=4 lr=1e-4"]),
    (["finetune-decoder", "tiny-decoder", "--steps", "3"], ["write steps=3"]),
    (["train-dit", "dit-tiny", "--steps", "3"], ["write steps=3"]),
    (["train", "tiny", "steps=abc"], ["steps=abc: 'abc' is not an integer"]),
    (["train", "tiny", "lr=fast"], ["optim.lr=fast: 'fast' is not a number"]),
    (["train", "tiny", "ssl=maybe"], ["ssl.enabled=maybe: 'maybe' is not true or false"]),
    (["train", "tiny", "ssl.global_scale=big"], ["ssl.global_scale=big: 'big' is not a list of 2 numbers"]),
    (["train", "tiny", "steps=-5"], ["invalid config value: steps=-5 (must be > 0)"]),
    (["train", "tiny", "ssl.num_local=-1"], ["ssl.num_local=-1 (must be >= 0)"]),
    (["train", "tiny", "steps=-5", "ssl.num_local=-1"],
     ["invalid config values: steps=-5 (must be > 0); ssl.num_local=-1 (must be >= 0)"]),
    (["train", "tiny", "precision=fp8"], ["precision=fp8 (must be one of auto, bf16, fp16, fp32)"]),
    (["train", "tiny", "ssl.centering=mean"], ["ssl.centering=mean (must be one of centering, sinkhorn)"]),
    (["train", "tiny", "perceptual=vgg"], ["loss.perceptual=vgg (must be one of lpips, none)"]),
    (["train", "tiny", "phase=both"], ["phase=both (must be one of joint, decoder)"]),
    (["train", "tiny", "ssl.mask_sample_prob=1.5"], ["ssl.mask_sample_prob=1.5 (must be in [0, 1])"]),
    (["train", "tiny", "ssl.mask_ratio=[0.6,0.2]"], ["ssl.mask_ratio=[0.6, 0.2] (must be a pair [min, max]"]),
    (["train", "tiny", "batch_size=0"], ["data.batch_size=0 (must be > 0)"]),
    (["train-dit", "dit-tiny", "timesteps=cosine"], ["timesteps=cosine (must be one of logit_normal, uniform)"]),
    (["train-dit", "dit-tiny", "batch_size=-1"], ["data.batch_size=-1 (must be > 0)"]),
    (["train", "tiny", "data=/nonexistent/images"], ["data spec '/nonexistent/images': no such folder"]),
    (["train", "tiny", "image_size=40"],
     ["data.image_size=40 is not divisible by the model's compression f=16 (nearest valid: 32 or 48)"]),
    (["finetune-decoder", "tiny-decoder", "init=/nonexistent/run"], ["init=/nonexistent/run", "not found"]),
    (["models", "--nope"], ["unrecognized arguments: --nope"]),
])
def test_bad_input_exits_2_with_message_before_anything_runs(argv, fragments, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run([*argv, f"run_dir={tmp_path / 'runs'}"] if argv[0] != "models" else argv, capsys)
    assert code == 2
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err and out == ""  # checked before anything is printed
    assert not (tmp_path / "runs").exists()  # ... or written
    if "steps=abc" in argv:
        assert "unknown" not in err


def test_bad_value_in_a_yaml_config_is_refused(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("steps: 0\nssl:\n  num_local: -2\n")
    code, _, err = _run(["train", str(config)], capsys)
    assert code == 2 and "steps=0 (must be > 0)" in err and "ssl.num_local=-2 (must be >= 0)" in err


def test_a_missing_extra_names_the_pip_command(monkeypatch, capsys):
    from tcae.cli import models as models_cmd

    def needs_omegaconf(args):
        raise ModuleNotFoundError("No module named 'omegaconf'", name="omegaconf")

    monkeypatch.setattr(models_cmd, "_run", needs_omegaconf)
    code, _, err = _run(["models"], capsys)
    assert code == 2 and "pip install 'tcae[train]'" in err and "Traceback" not in err


def test_a_bug_still_shows_its_traceback(monkeypatch):
    from tcae.cli import models as models_cmd

    def bug(args):
        raise KeyError("internal")

    monkeypatch.setattr(models_cmd, "_run", bug)
    with pytest.raises(KeyError):
        cli(["models"])


# ---------------------------------------------------------------------------- --print-config
def test_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path, capsys):
    argv = ["train", "tiny", "steps=7", "ssl.num_local=3", "lr=1e-3", f"run_dir={tmp_path}", "--no-progress"]
    code, out, err = _run([*argv, "--print-config"], capsys)
    assert code == 0, err
    expected = load_config(TrainConfig, "tiny", [*argv[2:-1], "progress=false"], TRAIN_ALIASES)
    saved = tmp_path.parent / f"{tmp_path.name}-printed.yaml"  # the printed YAML is itself a loadable config
    saved.write_text(out)
    assert load_config(TrainConfig, str(saved)) == expected
    printed = OmegaConf.create(out)
    assert (printed.steps, printed.ssl.num_local, printed.optim.lr, printed.progress) == (7, 3, 1e-3, False)
    assert not any(tmp_path.iterdir())


def test_print_config_of_finetune_decoder_sets_the_phase(tmp_path, capsys):
    model_dir = tmp_path / "m"
    tcae.create_model("tcae-tiny").save_pretrained(model_dir)
    code, out, _ = _run(["finetune-decoder", "tiny-decoder", f"init={model_dir}", "image_size=32", "--print-config"],
                        capsys)
    assert code == 0 and OmegaConf.create(out).phase == "decoder"


# ---------------------------------------------------------------------------- exit 3
def test_non_finite_loss_exits_3(tmp_path, capsys):
    code, _, err = _run(["train", "tiny", *SMALL, "lr=1e30", "steps=5", f"run_dir={tmp_path}", "name=nan"], capsys)
    assert code == 3
    assert "tcae train: stopped: non-finite loss at step" in err and "Traceback" not in err


def test_eval_json_is_written_into_the_out_directory(tmp_path, capsys):
    model_dir = tmp_path / "m"
    tcae.create_model("tcae-tiny").save_pretrained(model_dir)
    code, out, err = _run(["eval", "--model", model_dir, "--data", "builtin:digits:val", "--image-size", "32",
                           "--metrics", "psnr", "--max-images", "4", "--out", tmp_path / "ev", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["results"][0]["num_images"] == 4
    assert (tmp_path / "ev" / "grid.png").is_file() and f"wrote {tmp_path / 'ev' / 'eval.json'}" in out


def _documented_commands() -> list[list[str]]:
    import shlex

    found = []
    for doc in (ROOT / "README.md", ROOT / "benchmarks" / "README.md"):
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words and words[0] in ("tcae", ".venv/bin/tcae"):
                    found.append(words[1:])
    return found


def test_every_documented_command_parses():
    commands = _documented_commands()
    assert len(commands) >= 15 and {c[0] for c in commands} >= {"train", "eval", "reconstruct", "push", "sample"}
    for argv in commands:
        args, unknown = build_parser().parse_known_args(argv)
        assert not unknown, argv


def test_shipped_configs_pass_the_value_rules():
    from tcae.config import DIT_ALIASES, DiTTrainConfig, list_configs

    for name in list_configs():
        if name.startswith("dit"):
            load_config(DiTTrainConfig, name, [], DIT_ALIASES)
        else:
            load_config(TrainConfig, name, [], TRAIN_ALIASES)
