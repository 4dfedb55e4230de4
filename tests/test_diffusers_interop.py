"""TC-AE as a diffusers autoencoder, and diffusers autoencoders through tcae's tools.

Every model here is tiny and randomly initialised, built locally (nothing is downloaded). References are
computed another way: tcae's native encode/decode for the export, diffusers' own encode/decode plus
torchmetrics / scikit-image for `tcae eval` and `tcae diagnose` on AutoencoderKL and AutoencoderDC.
"""

import json
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

diffusers = pytest.importorskip("diffusers")

from tcae.cli.main import main as cli  # noqa: E402
from tcae.data import build_dataset  # noqa: E402
from tcae.integrations.diffusers import TCAEAutoencoder, tile_starts  # noqa: E402
from tcae.models import TCAE, create_model  # noqa: E402
from tcae.tokenizers import DiffusersTokenizer, load_tokenizer  # noqa: E402


def _stat_images() -> torch.Tensor:
    """The 8 images the test TC-AEs measure their latent statistics on."""
    return torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _tcae_with_stats(**overrides) -> TCAE:
    torch.manual_seed(0)
    model = create_model("tcae-tiny", **overrides).eval()
    with torch.no_grad():
        z = model.encode(_stat_images())
    model.set_latent_stats(z.mean((0, 2, 3)), z.std((0, 2, 3), unbiased=False), count=8)
    return model


@pytest.fixture(scope="module")
def tiny_tcae(tmp_path_factory):
    model = _tcae_with_stats()
    path = tmp_path_factory.mktemp("tcae") / "model"
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def export(tiny_tcae, tmp_path_factory):
    _, path = tiny_tcae
    out = tmp_path_factory.mktemp("export") / "tcae-diffusers"
    assert cli(["export-diffusers", "--model", str(path), "--out", str(out)]) == 0
    return out


def tiny_kl() -> torch.nn.Module:
    torch.manual_seed(1)
    return diffusers.AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=32,
        scaling_factor=0.3, shift_factor=0.1).eval()


def tiny_dc() -> torch.nn.Module:
    torch.manual_seed(2)
    return diffusers.AutoencoderDC(
        latent_channels=8, attention_head_dim=8, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 16),
        decoder_block_out_channels=(8, 16), encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)), scaling_factor=0.5).eval()


@pytest.fixture(scope="module")
def diffusers_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    tiny_kl().save_pretrained(root / "kl")
    tiny_dc().save_pretrained(root / "dc")
    return root


# ---------------------------------------------------------------------------- the export
def test_export_loads_with_diffusers_from_pretrained_and_matches_tcae(tiny_tcae, export):
    model, _ = tiny_tcae
    config = json.loads((export / "config.json").read_text())
    assert config["_class_name"] == "TCAEAutoencoder"
    assert (export / "diffusion_pytorch_model.safetensors").is_file()
    vae = TCAEAutoencoder.from_pretrained(export).eval()  # diffusers' ModelMixin.from_pretrained underneath
    assert isinstance(vae, diffusers.ModelMixin) and isinstance(vae, diffusers.ConfigMixin)

    x = torch.rand(3, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent
        assert torch.equal(z, model.encode(x))  # bit for bit
        assert torch.equal(vae.decode(z).sample, model.decode(z))
        assert torch.equal(vae(x).sample, model(x).sample)
        assert torch.equal(vae.encode(x, return_dict=False)[0], z)
        vae.enable_slicing()  # one image at a time: each equals tcae's encode of that image
        assert torch.equal(vae.encode(x).latent, torch.cat([model.encode(x[i:i + 1]) for i in range(3)]))
        vae.disable_slicing()

    # the latent scaling: per-channel stats as stored in the TC-AE, scaling_factor = 1 / RMS of the latents
    assert vae.config.latents_mean == model.latent_mean.tolist()
    assert vae.config.latents_std == model.latent_std.tolist()
    assert torch.equal(vae.tcae.latent_mean, model.latent_mean)
    with torch.no_grad():
        rms = model.encode(_stat_images()).pow(2).mean().sqrt().item()  # of the latents the stats came from
    assert vae.config.scaling_factor == pytest.approx(1 / rms, rel=1e-5)

    assert vae.dtype == torch.float32 and vae.device.type == "cpu"
    assert vae.to(torch.bfloat16).dtype == torch.bfloat16


def test_export_config_holds_every_tcae_config_field():
    """The export's config is the TCAEConfig fields plus the latent scaling (a new TCAEConfig field that
    the wrapper does not take fails here, not in a user's export)."""
    import dataclasses
    import inspect

    from tcae.models import TCAEConfig

    params = set(inspect.signature(TCAEAutoencoder.__init__).parameters) - {"self"}
    assert params == {f.name for f in dataclasses.fields(TCAEConfig)} | {"scaling_factor", "latents_mean",
                                                                         "latents_std"}
    model = create_model("tcae-tiny", staged=False, decoder_coarse_depth=1)
    vae = TCAEAutoencoder.from_tcae(model)
    assert vae.tcae.config == model.config
    assert vae.config.scaling_factor == 1.0 and vae.config.latents_mean is None  # no statistics measured
    # what SANA pipelines read: 2 ** (len - 1) is f (16 here); none exists for an f that is no power of 2
    assert 2 ** (len(vae.config.encoder_block_out_channels) - 1) == 16
    assert vae.config.decoder_block_out_channels == vae.config.encoder_block_out_channels
    odd = TCAEAutoencoder.from_tcae(create_model("tcae-tiny", image_size=96, compression=48))
    assert "encoder_block_out_channels" not in odd.config


def test_export_is_the_vae_of_a_dit_pipeline(export, tmp_path):
    """DiTPipeline with a tiny random DiTTransformer2DModel on the export's latent grid: images of the
    training size come out, decoded by the TC-AE from latents / scaling_factor; the pipeline saves and
    loads back with diffusers' DiffusionPipeline.from_pretrained."""
    vae = TCAEAutoencoder.from_pretrained(export).eval()
    c, h = vae.config.latent_channels, vae.config.image_size // vae.config.compression
    torch.manual_seed(3)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=c, out_channels=c, num_layers=1, sample_size=h,
        patch_size=2, norm_num_groups=1, num_embeds_ada_norm=10).eval()
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=diffusers.DDIMScheduler(),
                                 id2label={0: "zero", 1: "one"})
    pipe.set_progress_bar_config(disable=True)
    decoded = []
    original_decode = vae.decode

    def recording_decode(z, *args, **kwargs):
        decoded.append(z.clone())
        return original_decode(z, *args, **kwargs)

    vae.decode = recording_decode
    images = pipe(class_labels=[0, 1], guidance_scale=1.0, num_inference_steps=3, output_type="pt",
                  generator=torch.manual_seed(0)).images
    del vae.decode
    assert images.shape == (2, 3, vae.config.image_size, vae.config.image_size)
    assert len(decoded) == 1 and decoded[0].shape == (2, c, h, h)
    with torch.no_grad():
        expected = (vae.tcae.decode(decoded[0]) / 2 + 0.5).clamp(0, 1)
    assert torch.equal(images, expected)

    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["vae"] == ["tcae.integrations.diffusers", "TCAEAutoencoder"]
    again = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.vae, TCAEAutoencoder)
    images2 = again(class_labels=[0, 1], guidance_scale=1.0, num_inference_steps=3, output_type="pt",
                    generator=torch.manual_seed(0)).images
    assert torch.equal(images2, images)


# ---------------------------------------------------------------------------- SANA pipelines
def _tiny_text_encoder():
    """A random 1-layer Gemma2 (caption width 8) and a word-level tokenizer, built offline."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<unk>", "<bos>", "<eos>", "a", "photo", "of", "digit"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                     bos_token="<bos>", eos_token="<eos>")
    torch.manual_seed(6)
    encoder = transformers.Gemma2Model(transformers.Gemma2Config(
        vocab_size=len(words), hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=4, max_position_embeddings=64)).eval()
    return tokenizer, encoder


def _tiny_sana_transformer(cls, c: int, h: int, **kwargs):
    torch.manual_seed(7)
    return cls(patch_size=1, in_channels=c, out_channels=c, num_layers=1, num_attention_heads=2, attention_head_dim=4,
               num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
               sample_size=h, **kwargs).eval()


@pytest.mark.parametrize("name", ["SanaPipeline", "SanaPAGPipeline", "SanaSprintPipeline", "SanaSprintImg2ImgPipeline",
                                  "SanaControlNetPipeline"])
def test_export_is_the_vae_of_sana_pipelines(export, name):
    """The SANA family (built for DC-AE) takes the export: its spatial factor, read from the config as
    2 ** (len(encoder_block_out_channels) - 1), is f = 16; a 64 x 96 request decodes a 4 x 6 latent grid into
    64 x 96 images, which are the TC-AE's decode of the pipeline's final latent, mapped to [0, 1]."""
    vae = TCAEAutoencoder.from_pretrained(export).eval()
    tokenizer, text_encoder = _tiny_text_encoder()
    c, f = vae.config.latent_channels, vae.config.compression
    parts = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae)
    args = dict(num_inference_steps=2, height=64, width=96, use_resolution_binning=False, output_type="pt",
                max_sequence_length=8, complex_human_instruction=None, generator=torch.manual_seed(0))
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(8))
    if name.startswith("SanaSprint"):  # SANA-Sprint: a guidance-embedding transformer, one SCM scheduler
        parts |= dict(transformer=_tiny_sana_transformer(diffusers.SanaTransformer2DModel, c, 4, guidance_embeds=True,
                                                         qk_norm="rms_norm_across_heads"),
                      scheduler=diffusers.SCMScheduler())
        args |= dict(guidance_scale=4.5)
    else:
        parts |= dict(transformer=_tiny_sana_transformer(diffusers.SanaTransformer2DModel, c, 4),
                      scheduler=diffusers.FlowMatchEulerDiscreteScheduler())
        args |= dict(guidance_scale=1.0)
    if name == "SanaPAGPipeline":
        parts |= dict(pag_applied_layers=["transformer_blocks.0"])
        args |= dict(pag_scale=2.0)
    if name == "SanaSprintImg2ImgPipeline":  # encodes the init image with the export
        args |= dict(image=image, strength=0.5)
    if name == "SanaControlNetPipeline":  # encodes the control image with the export
        parts |= dict(controlnet=_tiny_sana_transformer(diffusers.SanaControlNetModel, c, 4))
        args |= dict(control_image=image)
    pipe = getattr(diffusers, name)(**parts)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == f == 16

    decoded = []
    original_decode = vae.decode

    def recording_decode(z, *a, **kw):
        decoded.append(z.clone())
        return original_decode(z, *a, **kw)

    vae.decode = recording_decode
    images = pipe("a photo of digit", **args).images
    del vae.decode
    assert images.shape == (1, 3, 64, 96)
    assert len(decoded) == 1 and decoded[0].shape == (1, c, 4, 6)
    with torch.no_grad():
        assert torch.equal(images, (vae.tcae.decode(decoded[0]) / 2 + 0.5).clamp(0, 1))


# ---------------------------------------------------------------------------- diffusers model machinery
def test_automodel_loads_the_export(export, tiny_tcae, monkeypatch, tmp_path):
    """diffusers.AutoModel.from_pretrained(export, trust_remote_code=True) gives the TCAEAutoencoder: the
    export's config.json maps AutoModel to its one-import module tcae_autoencoder.py."""
    from diffusers.utils import dynamic_modules_utils

    model, _ = tiny_tcae
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not ~/.cache
    config = json.loads((export / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "tcae_autoencoder.TCAEAutoencoder"}
    assert (export / "tcae_autoencoder.py").is_file()
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        diffusers.AutoModel.from_pretrained(str(export))
    # a str: diffusers 0.42's AutoModel joins the path into a load id and fails on a pathlib.Path
    vae = diffusers.AutoModel.from_pretrained(str(export), trust_remote_code=True)
    assert type(vae) is TCAEAutoencoder
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(vae.encode(x).latent, model.encode(x))


def _recon_grads(vae: TCAEAutoencoder, x: torch.Tensor) -> dict[str, torch.Tensor]:
    vae.zero_grad(set_to_none=True)
    (vae(x).sample - x).pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_switches_tcae_checkpointing_with_the_same_gradients(export, monkeypatch):
    """enable_gradient_checkpointing() turns on TC-AE's per-block checkpointing (every transformer block
    of encoder and decoder runs under torch.utils.checkpoint), and the gradients equal those without it."""
    import tcae.models.layers as layers

    calls = []
    real_checkpoint = layers.checkpoint
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **kw: calls.append(1) or real_checkpoint(*a, **kw))
    vae = TCAEAutoencoder.from_pretrained(export).train()
    x = _stat_images()[:2]
    plain = _recon_grads(vae, x)
    assert not calls and not vae.is_gradient_checkpointing
    vae.enable_gradient_checkpointing()
    assert vae.is_gradient_checkpointing
    checkpointed = _recon_grads(vae, x)
    n_blocks = sum(len(m.blocks) for m in vae.modules() if isinstance(m, layers.Transformer))
    assert len(calls) == n_blocks == 8
    # every parameter but the mask token (used only by masked SSL training) has a gradient
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(vae.parameters())) - 1
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, rtol=1e-5, atol=1e-7, msg=name)
    vae.disable_gradient_checkpointing()
    assert not vae.is_gradient_checkpointing
    _recon_grads(vae, x)
    assert len(calls) == n_blocks  # off again
    with pytest.raises(ValueError, match="custom gradient_checkpointing_func is not supported"):
        vae.enable_gradient_checkpointing(lambda module, *args: module(*args))


def test_device_map_auto_places_the_export_on_cpu(export, tiny_tcae):
    pytest.importorskip("accelerate")  # diffusers dispatches device maps through accelerate
    model, _ = tiny_tcae
    vae = TCAEAutoencoder.from_pretrained(export, device_map="auto")
    assert set(vae.hf_device_map.values()) == {"cpu"}
    assert sorted(vae._get_no_split_modules("auto")) == ["TCAEDecoder", "TCAEEncoder"]
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent
        assert torch.equal(z, model.encode(x)) and torch.equal(vae.decode(z).sample, model.decode(z))


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_latent_statistics_stay_fp32_under_any_dtype(export, tiny_tcae, low_cpu_mem_usage):
    """torch_dtype=bfloat16 (both of diffusers' loading paths) and .to(float16) cast the weights; the latent
    statistics stay the float32 values of the config, so normalising a latent equals the fp32 formula."""
    if low_cpu_mem_usage:
        pytest.importorskip("accelerate")  # diffusers' low_cpu_mem_usage path
    model, _ = tiny_tcae
    vae = TCAEAutoencoder.from_pretrained(export, torch_dtype=torch.bfloat16, low_cpu_mem_usage=low_cpu_mem_usage)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32)
    for v in (vae, vae.to(torch.float16)):
        assert v.tcae.encoder.patch_embed.weight.dtype == v.dtype != torch.float32
        assert v.tcae.latent_mean.dtype == v.tcae.latent_std.dtype == torch.float32
        assert torch.equal(v.tcae.latent_mean, mean) and torch.equal(v.tcae.latent_std, std)
        assert torch.equal(v.tcae.latent_mean, model.latent_mean)
        assert v.tcae.latent_stats_count.dtype == torch.float64 and v.tcae.latent_stats_count.item() == 8
        z = torch.randn(2, vae.config.latent_channels, 2, 2)
        assert torch.equal(v.tcae.normalize(z), (z - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
    assert vae.to(torch.float32).tcae.latent_mean.dtype == torch.float32


def test_fine_tune_the_export_decoder_with_gradient_checkpointing(export, tmp_path):
    """The fine-tuning loop a diffusers user writes around the model: decoder only, gradient checkpointing
    on, a few AdamW steps in plain PyTorch, save_pretrained, reload. The reconstruction loss falls, the
    encoder is untouched, and the reloaded model decodes as the trained one."""
    vae = TCAEAutoencoder.from_pretrained(export)
    encoder_before = {k: v.clone() for k, v in vae.tcae.encoder.state_dict().items()}
    vae.enable_gradient_checkpointing()
    vae.train()
    vae.tcae.encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=1e-3)
    x = _stat_images()[:4]
    losses = []
    for _ in range(5):
        with torch.no_grad():
            z = vae.encode(x).latent
        loss = torch.nn.functional.mse_loss(vae.decode(z).sample, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for k, v in vae.tcae.encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), k

    vae.eval().save_pretrained(tmp_path / "tuned")
    tuned = TCAEAutoencoder.from_pretrained(tmp_path / "tuned")
    with torch.no_grad():
        assert torch.equal(tuned.decode(z).sample, vae.decode(z).sample)


# ---------------------------------------------------------------------------- tiling
class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of the tensors allocated inside the context that are alive at once: each new storage
    counts from the op that allocates it until it is freed (views allocate nothing: a weight's transpose
    is not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:  # not a view
                storage = t.untyped_storage()
                if storage not in self._seen:
                    n = storage.nbytes()
                    self._seen[storage] = n
                    self.live += n
                    weakref.finalize(storage, self._free, n)
        self.peak = max(self.peak, self.live)
        return out


@pytest.fixture(scope="module")
def tiling_vae():
    """A TC-AE trained at 32 px (f = 16), wrapped; images 4x the training size: 128 x 128."""
    return TCAEAutoencoder.from_tcae(_tcae_with_stats(image_size=32)).eval()


def test_tile_layout_covers_evenly_with_bounded_stride():
    assert tile_starts(8, 2, 1) == list(range(7))
    assert tile_starts(2, 2, 1) == [0] and tile_starts(1, 2, 1) == [0]
    for length, tile, stride in [(16, 4, 3), (17, 4, 3), (30, 8, 5), (9, 4, 4)]:
        s = tile_starts(length, tile, stride)
        assert s[0] == 0 and s[-1] == length - tile  # full tiles only, the last one ends at the border
        gaps = np.diff(s)
        assert gaps.max() <= stride and gaps.min() >= gaps.max() - 1  # even spacing


def _crossfade_weights(n_tiles: int, size: int, overlap: int) -> list[torch.Tensor]:
    """Per-tile weights along one axis for tiles of `size` px overlapping by `overlap` px, written out:
    1 where a tile is alone, (k + 0.5) / overlap rising into it, falling out of it."""
    ramp = (torch.arange(overlap) + 0.5) / overlap
    out = []
    for k in range(n_tiles):
        w = torch.ones(size)
        if k > 0:
            w[:overlap] = ramp
        if k < n_tiles - 1:
            w[size - overlap:] = ramp.flip(0)
        out.append(w)
    return out


def test_tile_settings_must_align_to_f(tiling_vae):
    vae = TCAEAutoencoder.from_tcae(create_model("tcae-tiny", image_size=32))
    with pytest.raises(ValueError, match="tile_sample_stride_height=20 must be a positive multiple of the compression"):
        vae.enable_tiling(tile_sample_stride_height=20)
    with pytest.raises(ValueError, match="must not exceed the tile size"):
        vae.enable_tiling(tile_sample_min_height=32, tile_sample_stride_height=48)
    vae.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=32)  # non-square tiles
    assert (vae.tile_latent_min_height, vae.tile_latent_min_width, vae.tile_sample_stride_height) == (4, 2, 48)
    with torch.no_grad(), pytest.raises(ValueError, match="divisible by 16"):
        vae.encode(torch.zeros(1, 3, 72, 64))


def test_tiling_4x_image_is_the_crossfade_of_its_tiles(tiling_vae):
    """A 128 x 128 image, 4x the 32 px training size, tiles of 32 px, stride 16: 7 x 7 tiles. The tiled
    latent and image equal the linear crossfade of the tiles' own tcae encode / decode, computed here
    tile by tile with the weights written out (to float32 rounding)."""
    vae = tiling_vae
    vae.enable_tiling()
    assert (vae.tile_sample_min_height, vae.tile_sample_stride_height) == (32, 16)
    torch.manual_seed(4)
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    starts = range(7)  # latent positions 0..6, tiles of 2 latent positions
    with torch.no_grad():
        z = vae.encode(x).latent
        out = vae.decode(z).sample
        assert z.shape == (1, 32, 8, 8) and out.shape == x.shape
        z_ref, x_ref = torch.zeros_like(z), torch.zeros_like(x)
        wz, wx = _crossfade_weights(7, 2, 1), _crossfade_weights(7, 32, 16)
        for i in starts:
            for j in starts:
                zt = vae.tcae.encode(x[..., 16 * i:16 * i + 32, 16 * j:16 * j + 32])
                z_ref[..., i:i + 2, j:j + 2] += zt * wz[i][:, None] * wz[j][None, :]
                xt = vae.tcae.decode(z[..., i:i + 2, j:j + 2])
                x_ref[..., 16 * i:16 * i + 32, 16 * j:16 * j + 32] += xt * wx[i][:, None] * wx[j][None, :]
        full = vae.tcae.decode(vae.tcae.encode(x))
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, x_ref, rtol=1e-5, atol=1e-6)
    # the corner pixels belong to one tile each: exactly that tile's output
    assert torch.equal(out[..., :16, :16], vae.tcae.decode(z[..., :2, :2])[..., :16, :16])
    # tiling is not free for a ViT: each tile sees only itself (a random net; the number is only recorded)
    assert (vae.tcae.decode(z) - full).abs().max() > 0


def test_tiled_seams_are_bounded_by_the_crossfade(tiling_vae):
    """Along a 32 x 128 strip (one row of 7 tiles of 32 px, stride 16) every column is in one 16 px overlap.
    There the tiled decode crossfades the two tiles A, B linearly, so each step between adjacent pixels is
    at most the larger of the tiles' own steps plus |A - B| / 16: the tiles' disagreement is spread over the
    16 px of the overlap. Cutting between the tiles instead would put all of it, up to max|A - B|, into one
    step; that is larger here."""
    vae = tiling_vae
    vae.enable_tiling()
    torch.manual_seed(5)
    with torch.no_grad():
        z = vae.encode(torch.rand(1, 3, 32, 128) * 2 - 1).latent
        out = vae.decode(z).sample
        tiles = [vae.tcae.decode(z[..., :, j:j + 2]) for j in range(7)]
    blend_excess = cut_excess = 0.0  # how far a step exceeds the tiles' own steps there
    for k in range(1, 7):  # overlap k: columns 16k .. 16k + 15, tiles k - 1 (A) and k (B)
        a, b, blend = tiles[k - 1][..., 16:], tiles[k][..., :16], out[..., 16 * k:16 * k + 16]
        own = torch.maximum(a.diff(dim=-1).abs(), b.diff(dim=-1).abs())
        steps = blend.diff(dim=-1).abs()
        assert (steps <= own + (a - b)[..., :-1].abs() / 16 + 1e-5).all(), f"overlap {k}: step above the bound"
        blend_excess = max(blend_excess, (steps - own).amax().item())
        cut = (b[..., 8] - a[..., 7]).abs()  # A up to column 7 of the overlap, B from column 8
        cut_excess = max(cut_excess, (cut - own[..., 7]).amax().item())
    assert blend_excess < cut_excess


def test_tiling_lowers_peak_memory(tiling_vae):
    """Peak live tensor memory of encode and of decode on the 4x image (128 px): with tiles it is one
    32 px tile's working set plus the output. Measured here: encode 4.2 MB -> 0.27 MB, decode
    3.9 MB -> 0.51 MB (the 128 px decode output alone is 0.2 MB)."""
    vae = tiling_vae
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    peaks = {}
    for tiled in (False, True):
        vae.enable_tiling() if tiled else vae.disable_tiling()
        with torch.no_grad():
            with PeakTensorMemory() as enc:
                z = vae.encode(x).latent
            with PeakTensorMemory() as dec:
                vae.decode(z)
        peaks[tiled] = (enc.peak, dec.peak)
    assert peaks[True][0] < peaks[False][0] / 4, peaks
    assert peaks[True][1] < peaks[False][1] / 4, peaks


# ---------------------------------------------------------------------------- diffusers autoencoders in tcae
def _direct(kind: str, root, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, latents, reconstructions) of the first n digits val images, with diffusers' own calls."""
    cls = diffusers.AutoencoderKL if kind == "kl" else diffusers.AutoencoderDC
    ae = cls.from_pretrained(root / kind).eval()
    ds = build_dataset("builtin:digits", 32, train=False)
    x = torch.stack([ds[i]["image"] for i in range(n)])
    with torch.no_grad():
        enc = ae.encode(x)
        z = enc.latent_dist.mode() if kind == "kl" else enc.latent
        return x, z, ae.decode(z).sample


@pytest.mark.parametrize("kind", ["kl", "dc"])
def test_eval_on_a_diffusers_autoencoder_matches_direct_metrics(diffusers_dirs, tmp_path, kind):
    """`tcae eval --model diffusers:DIR` equals PSNR (torchmetrics) and SSIM (scikit-image, Gaussian window
    1.5) computed on diffusers' own encode/decode of the same images."""
    from skimage.metrics import structural_similarity
    from torchmetrics.functional.image import peak_signal_noise_ratio

    assert cli(["eval", "--model", f"diffusers:{diffusers_dirs / kind}", "--data", "builtin:digits",
                "--image-size", "32", "--metrics", "psnr,ssim", "--max-images", "24", "--batch-size", "8",
                "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())["results"][0]
    x, _, recon = _direct(kind, diffusers_dirs, 24)
    a, b = ((recon.clamp(-1, 1) + 1) / 2), (x + 1) / 2
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)).mean().item()
    ssim = np.mean([structural_similarity(a[i].numpy(), b[i].numpy(), channel_axis=0, data_range=1.0,
                                          gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                    for i in range(24)])
    assert result["num_images"] == 24
    assert result["metrics"]["psnr"] == pytest.approx(psnr, abs=1e-5)
    assert result["metrics"]["ssim"] == pytest.approx(ssim, abs=1e-5)
    assert result["model"]["config"]["class_name"] == ("AutoencoderKL" if kind == "kl" else "AutoencoderDC")


@pytest.mark.parametrize("kind", ["kl", "dc"])
def test_diagnose_on_a_diffusers_autoencoder_matches_direct_latent_stats(diffusers_dirs, tmp_path, capsys, kind):
    """`tcae diagnose` on AutoencoderKL / AutoencoderDC: per-channel latent mean/std and the effective rank
    of the latents equal numpy's on diffusers' own encode; no encoder tokens, so A1 is n/a, A2 is measured."""
    assert cli(["diagnose", "--model", f"diffusers:{diffusers_dirs / kind}", "--data", "builtin:digits",
                "--image-size", "32", "--max-images", "64", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / "diagnostics.json").read_text())
    assert "A1 on pooled encoder tokens: n/a" in capsys.readouterr().out
    _, z, _ = _direct(kind, diffusers_dirs, 64)
    zn = z.double().numpy()
    np.testing.assert_allclose(result["latent_stats"]["mean"], zn.mean((0, 2, 3)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result["latent_stats"]["std"], zn.std((0, 2, 3)), rtol=1e-4, atol=1e-6)
    flat = zn.reshape(64, -1)
    s = np.linalg.svd(flat - flat.mean(0), compute_uv=False)
    p = s / s.sum()
    assert result["effective_rank_latents"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)
    assert result["latent_shape"] == list(z.shape[1:])
    assert "effective_rank_tokens" not in result and "probe_acc_tokens" not in result
    assert 0.0 <= result["probe_acc_latents"] <= 1.0


def test_one_eval_table_for_tcae_dcae_and_sd_vae(tiny_tcae, export, diffusers_dirs, tmp_path, capsys):
    _, native = tiny_tcae
    assert cli(["eval", "--model", str(native), "--model", f"diffusers:{export}",
                "--model", f"diffusers:{diffusers_dirs / 'dc'}", "--model", f"diffusers:{diffusers_dirs / 'kl'}",
                "--names", "tcae,tcae-export,dc-ae,sd-vae", "--data", "builtin:digits", "--image-size", "64",
                "--metrics", "psnr,ssim", "--max-images", "8", "--out", str(tmp_path), "--no-progress"]) == 0
    md = tmp_path / "comparison.md"
    rows = {line.split("|")[1].strip(): line for line in md.read_text().splitlines() if line.startswith("| ")}
    assert {"tcae", "tcae-export", "dc-ae", "sd-vae"} <= set(rows)
    assert rows["tcae"].split("|")[2:] == rows["tcae-export"].split("|")[2:]  # the export is the same model


def test_cache_latents_from_a_diffusers_autoencoder(diffusers_dirs, tmp_path):
    """cache-latents with diffusers:DIR stores the posterior mode of diffusers' encode, and resumes."""
    from tcae.diffusion.latents import LatentDataset

    args = ["cache-latents", "--model", f"diffusers:{diffusers_dirs / 'kl'}", "--data", "builtin:digits:val",
            "--out", str(tmp_path / "lat"), "--shard-size", "16", "--batch-size", "8", "--no-progress"]
    assert cli(args) == 0  # image size: the autoencoder's sample_size (32)
    assert cli(args) == 0  # same settings: a resume, not a "different settings" error
    ds = LatentDataset(tmp_path / "lat", normalize=False)
    _, z, _ = _direct("kl", diffusers_dirs, 4)
    for i in range(4):
        torch.testing.assert_close(ds[i][0], z[i], rtol=1e-5, atol=1e-6)
    assert ds.meta["tokenizer"]["class_name"] == "AutoencoderKL"


def test_load_tokenizer_scaling_and_unwrapping(diffusers_dirs, export):
    kl = load_tokenizer(f"diffusers:{diffusers_dirs / 'kl'}")
    assert isinstance(kl, DiffusersTokenizer) and kl.config.compression == 2 and kl.config.image_size == 32
    z = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(kl.normalize(z), (z - 0.1) * 0.3)  # SD3/Flux-style shift and scale
    torch.testing.assert_close(kl.denormalize(kl.normalize(z)), z)
    dc = load_tokenizer(f"diffusers:{diffusers_dirs / 'dc'}")
    torch.testing.assert_close(dc.normalize(z.repeat(1, 2, 1, 1)), z.repeat(1, 2, 1, 1) * 0.5)
    assert dc.config.image_size is None and dc.config.compression == 2
    assert isinstance(load_tokenizer(f"diffusers:{export}"), TCAE)  # the export is its TC-AE


def test_diffusers_spec_errors(diffusers_dirs, tmp_path, capsys):
    assert cli(["eval", "--model", f"diffusers:{tmp_path / 'none'}", "--data", "builtin:digits",
                "--metrics", "psnr"]) == 2
    assert "diffusers model folder" in capsys.readouterr().err
    assert cli(["eval", "--model", f"diffusers:{diffusers_dirs / 'dc'}", "--data", "builtin:digits",
                "--metrics", "psnr"]) == 2
    assert "image_size is needed" in capsys.readouterr().err  # DC-AE configs have no sample_size
    assert cli(["diagnose", "--model", f"diffusers:{diffusers_dirs / 'kl'}", "--data", "builtin:digits",
                "--write-stats"]) == 2
    assert "--write-stats writes into a tcae model directory" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    assert cli(["eval", "--model", f"diffusers:{tmp_path / 'bad'}", "--data", "builtin:digits",
                "--metrics", "psnr"]) == 2
    assert "is not a diffusers autoencoder" in capsys.readouterr().err
    assert cli(["push", "--model", f"diffusers:{diffusers_dirs / 'kl'}", "--repo", "org/x", "--dry-run",
                "--out", str(tmp_path / "push")]) == 2
    assert "tcae push uploads tcae models" in capsys.readouterr().err


def test_inference_commands_take_a_diffusers_autoencoder(diffusers_dirs, tmp_path):
    """`tcae reconstruct` goes through the same loader: its PNGs are diffusers' own reconstructions."""
    from PIL import Image

    assert cli(["reconstruct", "--model", f"diffusers:{diffusers_dirs / 'kl'}", "--data", "builtin:digits:val",
                "--image-size", "32", "--max-images", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    x, _, _ = _direct("kl", diffusers_dirs, 2)
    x = ((x + 1) * 127.5).round() / 127.5 - 1  # the command reads the images as uint8 files
    ae = diffusers.AutoencoderKL.from_pretrained(diffusers_dirs / "kl").eval()
    with torch.no_grad():
        recon = ae.decode(ae.encode(x).latent_dist.mode()).sample
    expected = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    got = np.stack([np.asarray(Image.open(tmp_path / f"{i:06d}.png")) for i in range(2)])
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # float rounding at a .5 boundary
