"""Encoder registry, kinds and framing, on tiny random-weight checkpoints loaded like real ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tests.tiny_checkpoints import HF_FAMILIES, TIMM_VIT, TOWER, build_all, hf_spec, timm_spec

from vislaw.encoders import (
    EncoderConfigError,
    check_spec,
    EncoderSpec,
    create_encoder,
    encoder_kinds,
    frame_image,
    list_encoders,
    named_spec,
    register_encoder,
    register_spec,
    spec_from_config,
)
from vislaw.encoders.concat import PART_INPUT_RESIZE, part_input_record, resampling_record
from vislaw.encoders.hf import HFEncoder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def images(size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def reference_hidden(family: str, path: Path, x: torch.Tensor, spec: EncoderSpec, **kw: object) -> tuple:
    import transformers

    model = getattr(transformers, HF_FAMILIES[family][1]).from_pretrained(path).eval()
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model(pixel_values=(x - mean) / std, output_hidden_states=True, **kw).hidden_states


# ---- hf ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_hf_penultimate_is_hidden_states_minus_2_patch_tokens(family: str, ckpt: dict[str, Path]) -> None:
    spec = hf_spec(family, ckpt[family])
    enc = create_encoder(spec)
    x = images()
    with torch.inference_mode():
        out = enc.tokens(x)
    prefix = HF_FAMILIES[family][2]
    hidden = reference_hidden(family, ckpt[family], x, spec)
    assert enc.grid == (4, 4)
    assert out[-2].shape == (2, 16, 32)
    torch.testing.assert_close(out[-2], hidden[-2][:, prefix:])
    assert enc.num_prefix_tokens == prefix


def test_hf_layer_indices_count_blocks(ckpt: dict[str, Path]) -> None:
    enc = create_encoder(hf_spec("clip", ckpt["clip"]))
    with torch.inference_mode():
        out = enc.tokens(images(), layers=(1, -2, 0, -1))
    torch.testing.assert_close(out[1], out[-2])  # 3 blocks: block 1 is the penultimate
    assert not torch.allclose(out[0], out[-2]) and not torch.allclose(out[-1], out[-2])


def test_hf_keeps_prefix_when_asked(ckpt: dict[str, Path]) -> None:
    spec = hf_spec("dinov2", ckpt["dinov2"], drop_prefix=False)
    enc = create_encoder(spec)
    x = images()
    with torch.inference_mode():
        out = enc.tokens(x)[-2]
    assert out.shape == (2, 17, 32) and enc.num_prefix_tokens == 1
    torch.testing.assert_close(out, reference_hidden("dinov2", ckpt["dinov2"], x, spec)[-2])


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_hf_runs_at_another_resolution(family: str, ckpt: dict[str, Path]) -> None:
    spec = hf_spec(family, ckpt[family], image_size=48)
    x = images(48)
    with torch.inference_mode():
        out = create_encoder(spec).tokens(x)[-2]
    assert spec.grid == (6, 6) and out.shape == (2, 36, 32)
    hidden = reference_hidden(family, ckpt[family], x, spec, interpolate_pos_encoding=True)
    torch.testing.assert_close(out, hidden[-2][:, HF_FAMILIES[family][2]:])


def test_hf_config_entry_loads_from_local_path(ckpt: dict[str, Path]) -> None:
    config = {"clip_l14": {"kind": "hf", "weights": str(ckpt["clip"]), "image_size": 32, "patch": 8,
                           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    spec = spec_from_config("clip_l14", config)
    assert spec.name == "clip_l14" and spec.mean == (0.5, 0.5, 0.5)
    assert create_encoder(spec).tokens(images())[-2].shape == (2, 16, 32)


# ---- hf fast path (vislaw.encoders.fastvit) ----------------------------------------------------------------


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
@pytest.mark.parametrize("size", [32, 48])
def test_fast_path_equals_transformers(family: str, size: int, ckpt: dict[str, Path]) -> None:
    """Every layer, at the native and an interpolated resolution, from [0, 1] floats and from uint8 pixels."""
    enc = create_encoder(hf_spec(family, ckpt[family], image_size=size))
    assert enc.fast is not None, enc.fast_reason
    x = images(size, batch=3)
    pixels = (x * 255).round().to(torch.uint8)
    layers = (0, 1, -2, -1)
    with torch.inference_mode():
        for batch in (x, pixels):
            fast, plain = enc.tokens(batch, layers), enc.reference_tokens(batch, layers)
            for layer in layers:
                torch.testing.assert_close(fast[layer], plain[layer], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(enc.tokens(pixels)[-2], enc.tokens(pixels.float() / 255)[-2], rtol=1e-5, atol=1e-5)


def test_fast_path_folds_dinov2_layer_scale_without_qkv_bias(tmp_path: Path) -> None:
    import transformers

    torch.manual_seed(0)
    model = transformers.Dinov2Model(transformers.Dinov2Config(**TOWER, qkv_bias=False, layer_norm_eps=1e-5)).eval()
    with torch.no_grad():
        for layer in model.encoder.layer:  # non-trivial scales: the default init is all ones
            layer.layer_scale1.lambda1.uniform_(0.05, 2.0)
            layer.layer_scale2.lambda1.uniform_(0.05, 2.0)
    enc = HFEncoder(hf_spec("dinov2", tmp_path), model).eval()
    assert enc.fast is not None, enc.fast_reason
    with torch.inference_mode():
        torch.testing.assert_close(enc.tokens(images(), (0, -2))[-2], enc.reference_tokens(images(), (0, -2))[-2],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("family", "change", "reason"), [
    ("clip", {"hidden_act": "relu"}, "activation 'relu'"),
    ("dinov2", {"use_swiglu_ffn": True}, "SwiGLU"),
])
def test_fast_path_refuses_unknown_structure(family: str, change: dict, reason: str, tmp_path: Path) -> None:
    """An unknown tower keeps the plain transformers forward pass (and says why on stderr)."""
    import transformers

    config_cls, model_cls, _, _ = HF_FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**TOWER, **change)).eval()
    enc = HFEncoder(hf_spec(family, tmp_path), model).eval()
    assert enc.fast is None and reason in enc.fast_reason
    with torch.inference_mode():
        torch.testing.assert_close(enc.tokens(images())[-2], enc.reference_tokens(images())[-2])


def test_fast_path_stops_after_the_deepest_requested_block(ckpt: dict[str, Path]) -> None:
    enc = create_encoder(hf_spec("clip", ckpt["clip"]))
    inner, calls = enc.fast._block_fn, []
    enc.fast._block_fn = lambda *args: calls.append(1) or inner(*args)
    with torch.inference_mode():
        enc.tokens(images())  # layer -2 of 3 blocks: blocks 0 and 1
        assert len(calls) == 2
        enc.tokens(images(), layers=(0,))
        assert len(calls) == 3


def test_attention_preference_is_checked_once_per_shape_and_falls_back(ckpt: dict[str, Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU's SDPA preference (cuDNN first), exercised on the CPU: same tokens; a shape's first run
    compares block 0 with torch's default backends, and a disagreement (or a failure) means the default."""
    from vislaw.encoders import fastvit

    if not fastvit._SET_PRIORITY:
        pytest.skip("this torch has no sdpa_kernel(set_priority=True)")
    enc = create_encoder(hf_spec("clip", ckpt["clip"]))
    x = images(batch=3)
    with torch.inference_mode():
        expected = enc.tokens(x)[-2]  # the CPU: torch's default order
        monkeypatch.setattr(fastvit, "ATTENTION_DEVICES", ("cpu", "cuda"))
        seen = []
        inner = fastvit.F.scaled_dot_product_attention
        monkeypatch.setattr(fastvit.F, "scaled_dot_product_attention",
                            lambda *a, **k: seen.append(torch._C._get_sdp_priority_order()[0]) or inner(*a, **k))
        torch.testing.assert_close(enc.tokens(x)[-2], expected, rtol=1e-6, atol=1e-6)
        assert enc.fast.attention == "cudnn" and len(enc.fast._ran) == 1
        assert int(fastvit.torch.nn.attention.SDPBackend.CUDNN_ATTENTION) in seen
        enc.tokens(x)  # the same shape again: no second check
        assert len(enc.fast._ran) == 1
        monkeypatch.setattr(fastvit, "ATTENTION_AGREEMENT", -1.0)  # any difference now counts as a failure
        with pytest.warns(UserWarning, match="torch's default SDPA backends"):
            torch.testing.assert_close(enc.tokens(x[:2])[-2], expected[:2], rtol=1e-6, atol=1e-6)
        assert enc.fast.attention == "default"


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_fast_path_under_bf16_autocast_is_within_rounding(family: str, ckpt: dict[str, Path]) -> None:
    """The GPU's path (bf16 weights, autocast off inside), run on the CPU: bf16 rounding, nothing more."""
    enc = create_encoder(hf_spec(family, ckpt[family]))
    x = images(batch=4)
    with torch.inference_mode():
        full = enc.tokens(x)[-2]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc.tokens(x)[-2]
    assert low.dtype == torch.bfloat16
    assert relative(low, full) < 2e-2


def test_uint8_pixels_mean_x_over_255_for_every_kind(ckpt: dict[str, Path]) -> None:
    pixels = (images() * 255).round().to(torch.uint8)
    for spec in (timm_spec(ckpt["timm"]), hf_spec("clip", ckpt["clip"])):
        enc = create_encoder(spec)
        with torch.inference_mode():
            torch.testing.assert_close(enc.tokens(pixels)[-2], enc.tokens(pixels.float() / 255.0)[-2],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_fast_path_on_gpu_matches_cpu(family: str, ckpt: dict[str, Path]) -> None:
    enc = create_encoder(hf_spec(family, ckpt[family]))
    x = images(batch=4)
    with torch.inference_mode():
        cpu = enc.tokens(x)[-2]
        enc = enc.to("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gpu = enc.tokens(x.cuda())[-2]
    assert relative(gpu.cpu(), cpu) < 2e-2


# ---- timm -------------------------------------------------------------------------------------------------


def test_timm_loads_file_through_pretrained_path(ckpt: dict[str, Path]) -> None:
    import timm

    enc = create_encoder(timm_spec(ckpt["timm"]))
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TIMM_VIT).eval()
    reference.load_state_dict(torch.load(ckpt["timm"]))
    x = images()
    with torch.inference_mode():
        out = enc.tokens(x)[-2]
        (expected,) = reference.forward_intermediates(enc.normalize(x), indices=[1], intermediates_only=True)
    assert enc.grid == (4, 4) and out.shape == (2, 16, 32)
    torch.testing.assert_close(out, expected.flatten(2).transpose(1, 2))


def test_timm_resizes_vit_to_spec_resolution(ckpt: dict[str, Path]) -> None:
    enc = create_encoder(timm_spec(ckpt["timm"], image_size=48))
    assert enc.tokens(images(48))[-2].shape == (2, 36, 32)


def test_timm_random_init_is_seeded() -> None:
    x = images()
    a, b = (create_encoder(timm_spec(None)).tokens(x)[-2] for _ in range(2))
    other = create_encoder(timm_spec(None, options={"model": "vit_tiny_patch16_224", "model_kwargs": TIMM_VIT,
                                                    "seed": 1})).tokens(x)[-2]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, other)


def test_timm_cnn_stage_grid() -> None:
    spec = EncoderSpec(kind="timm", image_size=64, patch=16, mean=(0.5,) * 3, std=(0.5,) * 3, name="rn",
                       options={"model": "resnet18"})
    enc = create_encoder(spec)  # layer -2 = layer3, stride 16
    assert enc.grid == (4, 4) and enc.tokens(images(64))[-2].shape == (2, 16, 256)


# ---- concat -----------------------------------------------------------------------------------------------


def test_concat_normalises_each_part_then_the_whole(ckpt: dict[str, Path]) -> None:
    clip, dino = hf_spec("clip", ckpt["clip"]), hf_spec("dinov2", ckpt["dinov2"])
    enc = create_encoder(EncoderSpec(kind="concat", image_size=32, parts=(clip, dino), name="c_d"))
    x = images()
    with torch.inference_mode():
        joined = enc.tokens(x)[-2]
        parts = [create_encoder(s).tokens(x)[-2] for s in (clip, dino)]
    assert joined.shape == (2, 16, 64) and enc.grid == (4, 4)
    torch.testing.assert_close(joined.norm(dim=-1), torch.ones(2, 16))
    for i, part in enumerate(parts):
        piece = joined[..., 32 * i : 32 * (i + 1)]
        # Each part was unit norm before concatenation; with two parts the final renorm scales by 1/sqrt(2).
        torch.testing.assert_close(piece.norm(dim=-1), torch.full((2, 16), 2**-0.5))
        torch.testing.assert_close(piece * 2**0.5, F.normalize(part, dim=-1))


def test_concat_resamples_off_grid_part_and_records_it(ckpt: dict[str, Path]) -> None:
    clip = hf_spec("clip", ckpt["clip"], name="clip")
    siglip = hf_spec("siglip", ckpt["siglip"], image_size=48, name="siglip")  # 6x6 grid
    spec = EncoderSpec(kind="concat", image_size=32, parts=(clip, siglip), name="c_s")
    out = create_encoder(spec).tokens(images())[-2]
    assert out.shape == (2, 16, 64)
    assert resampling_record(spec) == [{"part": 1, "from": [6, 6], "to": [4, 4], "mode": "bilinear"}]


def test_concat_records_parts_fed_a_resize_of_its_frame(ckpt: dict[str, Path]) -> None:
    clip = hf_spec("clip", ckpt["clip"], name="clip")
    dino = hf_spec("dinov2", ckpt["dinov2"], image_size=48, name="dino")  # 6x6 grid
    spec = EncoderSpec(kind="concat", image_size=32, parts=(clip, dino), name="c_d")
    assert part_input_record(spec) == [
        {"part": 1, "input": "concat's framed image", "from": 32, "to": 48, "resize": PART_INPUT_RESIZE}
    ]
    assert part_input_record(dataclasses.replace(spec, parts=(clip, dataclasses.replace(dino, image_size=32)))) == []
    # What is recorded is what happens: DINOv2 sees the 32 px frame resized to 48 px, not its own framing.
    x = images()
    resized = F.interpolate(x, size=(48, 48), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
    with torch.inference_mode():
        joined = create_encoder(spec).tokens(x)[-2]
        dino_grid = create_encoder(dino).tokens(resized)[-2].transpose(1, 2).reshape(2, 32, 6, 6)
        dino_tokens = F.interpolate(dino_grid, size=(4, 4), mode="bilinear", align_corners=False).flatten(2)
        clip_tokens = create_encoder(clip).tokens(x)[-2]
    expected = F.normalize(torch.cat([F.normalize(clip_tokens, dim=-1),
                                      F.normalize(dino_tokens.transpose(1, 2), dim=-1)], dim=-1), dim=-1)
    torch.testing.assert_close(joined, expected)


def test_concat_config_parts_reference_entries(ckpt: dict[str, Path]) -> None:
    config = {
        "clip": {"kind": "hf", "weights": str(ckpt["clip"]), "image_size": 32, "patch": 8, **_stats()},
        "dino": {"kind": "hf", "weights": str(ckpt["dinov2"]), "image_size": 32, "patch": 8, **_stats()},
        "clip_dino": {"kind": "concat", "image_size": 32, "parts": ["clip", "dino"]},
    }
    spec = spec_from_config("clip_dino", config)
    assert [p.name for p in spec.parts] == ["clip", "dino"] and spec.grid == (4, 4)
    # without its own image_size a concat frames at its largest part's, so no part is fed an upsampled image
    config["dino"]["image_size"] = 48
    unsized = spec_from_config("clip_dino", {**config, "clip_dino": {"kind": "concat", "parts": ["clip", "dino"]}})
    assert unsized.image_size == 48 and unsized.grid == (4, 4) and part_input_record(unsized) == [
        {"part": 0, "input": "concat's framed image", "from": 48, "to": 32, "resize": PART_INPUT_RESIZE}]


def _stats() -> dict[str, list[float]]:
    return {"mean": [0.5] * 3, "std": [0.5] * 3}


# ---- errors name the config key ---------------------------------------------------------------------------


def test_unknown_kind_names_key() -> None:
    with pytest.raises(EncoderConfigError, match=r"encoders\.foo\.kind: Unknown encoder kind 'nope'"):
        create_encoder(spec_from_config("foo", {"foo": {"kind": "nope"}}))


def test_missing_checkpoint_path_names_key() -> None:
    config = {"clip_l14": {"kind": "hf", "weights": "x", "image_size": 32, "patch": 8, **_stats()}}
    with pytest.raises(EncoderConfigError, match=r"^encoders\.clip_l14\.weights: path 'x' does not exist"):
        create_encoder(spec_from_config("clip_l14", config))
    with pytest.raises(EncoderConfigError, match=r"encoders\.t\.weights: path 'no/such/ckpt.pth' does not exist"):
        create_encoder(dataclasses.replace(timm_spec(Path("no/such/ckpt.pth")), name="t"))


@pytest.mark.parametrize("layer", [3, -4, 99])
def test_layer_out_of_range_names_key(layer: int, ckpt: dict[str, Path]) -> None:
    with pytest.raises(EncoderConfigError, match=rf"encoders\.tiny_clip\.layer: {layer} is out of range .* 3 layers"):
        create_encoder(hf_spec("clip", ckpt["clip"], layer=layer)).tokens(images())
    with pytest.raises(EncoderConfigError, match=r"encoders\.tiny_timm_vit\.layer: .* out of range"):
        create_encoder(timm_spec(ckpt["timm"], layer=layer))


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"kind": "hf", "weights": "w", "image_size": 0}, "image_size"),
        ({"kind": "hf", "imagesize": 224}, "imagesize"),
        ({"kind": "hf", "frame": "crop"}, "frame"),
        ({"kind": "hf", "frame": "square"}, "frame"),
        ({"kind": "hf", "caption_frame": "square"}, "caption_frame"),
        ({"kind": "hf", "mean": [0.5, 0.5]}, "mean"),
        ({"spec": "no_such.spec"}, "spec"),
        ({"kind": "concat", "parts": ["a", "ghost"]}, r"parts\[1\]"),
        ({"image_size": 224}, "kind"),
    ],
)
def test_bad_entries_name_key(entry: dict, key: str) -> None:
    config = {"bad": entry, "a": {"kind": "hf", "weights": "w", "patch": 14, **_stats()}}
    with pytest.raises(EncoderConfigError, match=rf"^encoders\.bad\.{key}:"):
        spec_from_config("bad", config)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "nope", "patch": 8}, r"encoders\.bad\.kind: Unknown encoder kind 'nope'"),
        ({"kind": "hf", "weights": "./missing"}, r"encoders\.bad\.patch: required"),
        ({"kind": "hf", "weights": "./missing", "patch": 8}, r"encoders\.bad\.weights: path './missing' does not exist"),
        # the diffusers kind's options, without torch or diffusers
        ({"spec": "sd15_unet.runway", "options": {"ensembel": 8}}, r"bad\.options: unknown option 'ensembel'"),
        ({"kind": "diffusers", "patch": 32, "options": {"timestep": 1}}, r"bad\.options: kind 'diffusers' needs"),
        ({"spec": "sdxl_unet.stability", "options": {"block": "down1"}}, r"encoders\.bad\.options: block must be upK"),
        ({"spec": "dit_xl2_512.facebook", "options": {"timestep": -1}}, r"encoders\.bad\.options: timestep must be an"),
    ],
)
def test_check_spec_fails_at_parse_time(entry: dict, message: str) -> None:
    with pytest.raises(EncoderConfigError, match=message):
        check_spec(spec_from_config("bad", {"bad": entry}))
    assert check_spec(named_spec("clip_l14_dinov2_l14.336")).grid == (24, 24)  # hub ids: not checked offline


@pytest.mark.parametrize("kind", ["hf", "timm", "mini"])
def test_image_size_off_the_patch_grid_names_key(kind: str) -> None:
    """SigLIP so400m's patch 14 at 384 px: 27 cells cover 378 px, so keypoints near the far edge would shift."""
    entry = {"kind": kind, "weights": "w", "image_size": 384, "patch": 14, **_stats()}
    message = (r"^encoders\.so400m\.image_size: 384 px is not a multiple of patch 14; "
               r"its 27-cell grid would cover only 378 px")
    with pytest.raises(EncoderConfigError, match=message):
        spec_from_config("so400m", {"so400m": entry})
    # The diffusers kind checks its own multiple (of its VAE's and read block's strides) when built.
    assert spec_from_config("sd", {"sd": {**entry, "kind": "diffusers"}}).grid == (27, 27)


def test_missing_stats_and_patch_mismatch_name_keys(ckpt: dict[str, Path]) -> None:
    with pytest.raises(EncoderConfigError, match=r"encoders\.tiny_clip\.mean: required"):
        create_encoder(hf_spec("clip", ckpt["clip"], mean=None))
    with pytest.raises(EncoderConfigError, match=r"encoders\.tiny_clip\.patch: spec says 16 but the model's is 8"):
        create_encoder(hf_spec("clip", ckpt["clip"], patch=16))


# ---- registry ---------------------------------------------------------------------------------------------


def test_registering_twice_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("hf")(lambda spec: None)
    with pytest.raises(ValueError, match="already registered"):
        register_spec("clip_vit_l14.openai", named_spec("clip_vit_l14.openai"))
    with pytest.raises(ValueError, match="looks like a path"):
        register_spec("./weights", named_spec("clip_vit_l14.openai"))


def test_list_encoders_pattern() -> None:
    assert list_encoders("clip_vit_*") == ["clip_vit_l14.laion2b", "clip_vit_l14.openai", "clip_vit_l14_336.openai"]
    assert list_encoders("no_such_*") == []


# Tokens per image given to the LLM in the paper (settings.csv, tokens_to_llm).
PAPER_TOKENS = {"clip_vit_l14_336.openai": 576, "clip_vit_l14.openai": 256, "clip_vit_l14.laion2b": 256,
                "dinov2_vit_l14.lvd142m": 256, "siglip_vit_b16_224.webli": 196, "siglip_vit_l16_256.webli": 256,
                "siglip2_vit_l16_256.webli": 256, "sd15_unet.runway": 576, "sd21_unet.stability": 576,
                "sdim_unet.lambdalabs": 576, "sdxl_unet.stability": 1024, "dit_xl2_512.facebook": 256,
                "sd3_medium_mmdit.stability": 256, "clip_l14_dinov2_l14.224": 256, "clip_l14_dinov2_l14.336": 576}


@pytest.mark.parametrize("name", list_encoders())
def test_named_spec_contract(name: str) -> None:
    spec = named_spec(name)
    assert spec.kind in encoder_kinds()
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    rows, cols = spec.grid
    assert rows * cols == PAPER_TOKENS[name]
    if spec.kind != "concat":
        assert spec.mean is not None and spec.std is not None


def test_paper_settings_all_registered() -> None:
    assert sorted(PAPER_TOKENS) == list_encoders()


# ---- framing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pad", "stretch", "crop"])
def test_keypoints_map_into_the_framed_square(mode: str) -> None:
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    image.putpixel((50, 10), (255, 255, 255))
    framed, frame = frame_image(image, 160, mode)  # upscale x2 (pad) so the pixel stays findable
    ys, xs = np.nonzero(np.asarray(framed)[..., 0] > 100)
    found = np.array([xs.mean(), ys.mean()])
    expected = frame.to_frame([[50.5, 10.5]], 160)[0]  # pixel centre
    np.testing.assert_allclose(found, expected, atol=1.0)
    np.testing.assert_allclose(frame.from_frame(frame.to_frame([[3.0, 7.0]], 840), 840), [[3.0, 7.0]])
    if mode == "pad":
        assert frame.offset == (0, 20)
        assert np.asarray(framed)[:30].max() == 0  # zero padding above the image
    if mode == "crop":  # the centred 40 x 40 square: x 20-59, scaled x4; the pixel at (30.5, 10.5) x 4
        assert frame.side == 40 and frame.offset == (-20, 0)
        np.testing.assert_allclose(expected, [122.0, 42.0])


def test_caption_frame_applies_to_the_caption_sets_alone_and_leaves_other_protocols_unchanged() -> None:
    from vislaw.encoders import frame, spec
    from vislaw.encoders.spec import spec_for_dataset
    from vislaw.features import extraction_protocol

    assert spec.FRAME_MODES == frame.FRAME_MODES  # what a spec accepts is what the framing can do

    plain = EncoderSpec(kind="hf", weights="w", patch=14, name="clip", **_stats())
    cropped = dataclasses.replace(plain, caption_frame="crop")
    with pytest.raises(EncoderConfigError, match=r"^encoders\.clip\.frame: 'crop' cuts SPair's keypoints off"):
        spec_from_config("clip", {"clip": {"kind": "hf", "weights": "w", "patch": 14, "frame": "crop"}})
    assert "caption_frame" not in plain.to_dict() and cropped.to_dict()["caption_frame"] == "crop"
    assert EncoderSpec.from_dict(cropped.to_dict()) == cropped
    for dataset in ("caption_train", "caption_probe"):
        assert spec_for_dataset(cropped, dataset) == dataclasses.replace(plain, frame="crop")
        assert spec_for_dataset(plain, dataset) is plain
    # SPair and the QA images keep the encoder's frame, and their caches' protocols are those without the field
    for dataset in ("spair_test", "qa_test"):
        assert spec_for_dataset(cropped, dataset) == plain
        assert extraction_protocol(spec_for_dataset(cropped, dataset), "f") == extraction_protocol(plain, "f")
    crop_protocol = extraction_protocol(spec_for_dataset(cropped, "caption_probe"), "f")["preprocessing"]
    assert crop_protocol["frame"] == "crop" and crop_protocol["pad_value"] is None and "crop" in crop_protocol


def test_weight_files_list_a_checkpoints_files_and_skip_hub_ids_and_hidden_metadata(tmp_path: Path) -> None:
    from vislaw.encoders.spec import weight_files

    folder = tmp_path / "clip"
    (folder / "sub").mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "sub/tokenizer.json", ".cache/huggingface/meta"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    single = tmp_path / "vit.pth"
    single.write_bytes(b"weights")
    entries = {
        "clip": {"kind": "hf", "weights": str(folder), "patch": 14, "image_size": 224},
        "vit": {"kind": "timm", "weights": str(single), "options": {"model": "vit_tiny"}, "patch": 16},
        "hub": {"kind": "hf", "weights": "openai/clip-vit-large-patch14", "patch": 14, "image_size": 224},
        "both": {"kind": "concat", "parts": ["hub", "vit", "clip"]},
        "timm_own": {"kind": "timm", "weights": "pretrained", "options": {"model": "vit_tiny"}, "patch": 16},
    }
    expected_folder = [folder / "config.json", folder / "model.safetensors", folder / "sub" / "tokenizer.json"]
    assert weight_files(spec_from_config("clip", entries)) == expected_folder
    assert weight_files(spec_from_config("hub", entries)) == []
    assert weight_files(spec_from_config("timm_own", entries)) == []  # timm's own weights: no path to track
    assert weight_files(spec_from_config("both", entries)) == [single, *expected_folder]  # parts in order
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderConfigError, match=r"encoders\.e\.weights: folder .* holds no files"):
        weight_files(spec_from_config("e", {"e": {"kind": "hf", "weights": str(tmp_path / "empty"), "patch": 14}}))


def test_hub_revisions_read_the_commit_an_offline_load_uses(tmp_path: Path) -> None:
    from vislaw.encoders.spec import hub_revisions

    commit = "0123456789abcdef0123456789abcdef01234567"
    refs = tmp_path / "models--openai--clip-vit-large-patch14" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(commit + "\n")
    entries = {
        "clip": {"kind": "hf", "weights": "openai/clip-vit-large-patch14", "patch": 14},
        "dino": {"kind": "timm", "weights": "hf-hub:timm/vit_small_patch14_dinov2.lvd142m", "patch": 14},
        "both": {"kind": "concat", "parts": ["clip", "dino"]},
        "random": {"kind": "timm", "options": {"model": "vit_tiny"}, "patch": 16},
    }
    assert hub_revisions(spec_from_config("both", entries), cache_dir=tmp_path) == {
        "openai/clip-vit-large-patch14": commit, "timm/vit_small_patch14_dinov2.lvd142m": None}
    assert hub_revisions(spec_from_config("random", entries), cache_dir=tmp_path) == {}
