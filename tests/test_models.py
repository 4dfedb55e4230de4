"""The TC-AE model and its public API: shapes, gradients, persistence, FLOPs and errors."""

import json

import pytest
import torch

import tcae
from tcae.models import TCAE, CheckpointMismatchError


@pytest.fixture(params=[True, False], ids=["staged", "single-stage"])
def tiny(request):
    torch.manual_seed(0)
    return tcae.create_model("tcae-tiny", staged=request.param)


@pytest.mark.parametrize("hw", [(64, 64), (32, 48), (96, 64), (16, 16)])
def test_encode_decode_shapes(tiny, hw):
    x = torch.rand(2, 3, *hw) * 2 - 1
    z = tiny.encode(x)
    f, c = tiny.config.compression, tiny.config.latent_channels
    assert z.shape == (2, c, hw[0] // f, hw[1] // f)
    assert tiny.decode(z).shape == x.shape
    out = tiny(x)
    assert out.sample.shape == x.shape and torch.equal(out.latent, z)


def test_staged_and_single_stage_token_grids():
    staged = tcae.create_model("tcae-tiny")
    single = tcae.create_model("tcae-tiny", staged=False)
    x = torch.zeros(1, 3, 64, 64)
    # staged: 16x16 fine tokens merged 2x2 -> 8x8; single-stage keeps 16x16 until the final bottleneck
    assert staged.encode_tokens(x).grid == (8, 8)
    assert single.encode_tokens(x).grid == (16, 16)
    assert staged.config.unshuffle == 2 and single.config.unshuffle == 4


def test_gradients_reach_every_parameter(tiny):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, *tiny.encode_tokens(x).grid, dtype=torch.bool)
    mask[0, :2] = True  # the mask token only gets gradient through masked positions
    enc = tiny.encode_tokens(x, mask)
    loss = tiny.decode(tiny.tokens_to_latent(enc)).square().mean() + enc.cls.square().mean()
    loss.backward()
    missing = [n for n, p in tiny.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient for {missing}"


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    m = tcae.create_model("tcae-tiny").train()
    x = torch.rand(2, 3, 32, 32)
    m(x).sample.sum().backward()
    g1 = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).sample.sum().backward()
    g2 = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n])


def test_mask_changes_only_masked_input(tiny):
    x = torch.rand(1, 3, 32, 32)
    grid = tiny.encode_tokens(x).grid
    mask = torch.zeros(1, *grid, dtype=torch.bool)
    mask[0, 0, 0] = True
    a, b = tiny.encode_tokens(x), tiny.encode_tokens(x, mask)
    assert not torch.allclose(a.tokens, b.tokens)
    s = tiny.config.token_stride
    x2 = x.clone()
    x2[..., :s, :s] = 5.0  # only pixels under the masked token change: masked output is unchanged
    torch.testing.assert_close(tiny.encode_tokens(x2, mask).tokens, b.tokens)


def test_save_load_bit_exact(tmp_path, tiny):
    tiny.set_latent_stats(torch.randn(32), torch.rand(32) + 0.5, count=10)
    tiny.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["staged"] == tiny.config.staged
    loaded = TCAE.from_pretrained(tmp_path)
    assert loaded.config == tiny.config
    for (k, a), (k2, b) in zip(tiny.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert loaded.has_latent_stats
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(tiny.eval()(x).sample, loaded.eval()(x).sample)


def test_latent_stats_normalize_roundtrip():
    m = tcae.create_model("tcae-tiny")
    assert not m.has_latent_stats
    mean, std = torch.randn(32), torch.rand(32) + 0.1
    m.set_latent_stats(mean, std)
    z = torch.randn(3, 32, 2, 2) * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    n = m.normalize(z)
    torch.testing.assert_close(n.mean(dim=(0, 2, 3)), ((z - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
                               .mean(dim=(0, 2, 3)))
    torch.testing.assert_close(m.denormalize(n), z)
    with pytest.raises(ValueError, match=r"shape \(32,\)"):
        m.set_latent_stats(torch.zeros(16), torch.ones(16))


def test_presets_and_overrides():
    assert {"tcae-tiny", "tcae-s", "tcae-b"} <= set(tcae.list_models())
    m = tcae.create_model("tcae-tiny", patch_size=2, latent_channels=8, compression=8, staged=True,
                          image_size=32)
    assert m.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 8, 4, 4)
    b = tcae.models.preset_config("tcae-b")
    assert (b.image_size, b.patch_size, b.compression, b.latent_channels) == (256, 8, 32, 128)


def test_tcae_b_flops_under_paper_budget():
    # Paper: TC-AE 164 GMACs = 328 GFLOPs (flop_counter counts 2 FLOPs per multiply-add).
    with torch.device("meta"):
        m = tcae.create_model("tcae-b")
    rep = tcae.flops(m, 256)
    assert rep.encode > 0 and rep.decode > 0
    assert rep.total <= 328e9, rep.as_dict()


def test_flops_count_attention():
    m = tcae.create_model("tcae-tiny")
    # attention grows quadratically with tokens, everything else linearly: 4x pixels -> more than 4x FLOPs
    small, big = tcae.flops(m, 32).encode, tcae.flops(m, 64).encode
    assert big > 4 * small


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.encode(torch.zeros(1, 3, 40, 64)), r"divisible by 16, got H=40, W=64"),
        (lambda m: m.encode(torch.zeros(1, 1, 64, 64)), r"\(B, 3, H, W\), got shape \(1, 1, 64, 64\)"),
        (lambda m: m.decode(torch.zeros(1, 8, 4, 4)), r"\(B, 32, h, w\), got shape \(1, 8, 4, 4\)"),
        (lambda m: m.encode_tokens(torch.zeros(1, 3, 12, 16)), r"divisible by 8, got H=12"),
    ],
)
def test_bad_inputs_name_expected_and_given(call, match):
    with pytest.raises(ValueError, match=match):
        call(tcae.create_model("tcae-tiny"))


def test_unknown_preset_and_override():
    with pytest.raises(ValueError, match=r"unknown TC-AE preset 'tcae-xxl'.*tcae-tiny"):
        tcae.create_model("tcae-xxl")
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['patchsize'\]"):
        tcae.create_model("tcae-tiny", patchsize=4)
    with pytest.raises(ValueError, match=r"compression f=12 must be a multiple of the token stride 8"):
        tcae.create_model("tcae-tiny", compression=12)


def test_checkpoint_from_other_config_is_named(tmp_path):
    tcae.create_model("tcae-tiny", latent_channels=16).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["latent_channels"] = 32  # config and weights disagree
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match=r"expected \(32,\), given \(16,\)"):
        TCAE.from_pretrained(tmp_path)
    cfg["not_a_key"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not_a_key"):
        TCAE.from_pretrained(tmp_path)


def test_missing_model_dir_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        TCAE.from_pretrained(tmp_path)


def test_from_pretrained_takes_a_training_run_directory(tmp_path):
    """`runs/NAME` holds the exported model in model/: every loader accepts the run directory itself."""
    model = tcae.create_model("tcae-tiny", image_size=32)
    model.save_pretrained(tmp_path / "run" / "model")
    loaded = TCAE.from_pretrained(tmp_path / "run")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_rope_scores_depend_on_relative_position_only():
    """2D RoPE: q.k after rotation is a function of the (dy, dx) offset; prefix tokens are not rotated."""
    from tcae.models.layers import Rope2D, _rotate

    torch.manual_seed(0)
    k_dim, grid = 16, (4, 5)
    cos, sin = Rope2D(k_dim).cos_sin(grid, 1, torch.device("cpu"))
    assert cos.shape == sin.shape == (1 + 20, 1, k_dim)
    q, k = torch.randn(k_dim), torch.randn(k_dim)
    # (b, n, h, k): the same q (k) vector at every position, 1 head
    rq = _rotate(q.expand(1, 21, 1, k_dim), cos, sin)[0, :, 0]
    rk = _rotate(k.expand(1, 21, 1, k_dim), cos, sin)[0, :, 0]
    torch.testing.assert_close(rq[0], q)  # the [CLS] prefix keeps its vector
    score = rq[1:] @ rk[1:].T  # (20, 20) over grid positions

    def pos(y, x):
        return y * grid[1] + x

    cases = [((0, 0), (1, 2), (2, 1)), ((3, 4), (1, 1), (-1, -1)), ((1, 1), (1, 3), (2, 1))]
    for (y1, x1), (y2, x2), (dy, dx) in cases:
        torch.testing.assert_close(score[pos(y1, x1), pos(y2, x2)], score[pos(y1 + dy, x1 + dx), pos(y2 + dy, x2 + dx)])
    # and it is not trivially constant: other offsets give other scores
    assert not torch.allclose(score[pos(0, 0), pos(1, 2)], score[pos(0, 0), pos(2, 1)])
