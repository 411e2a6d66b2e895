"""The lean torch Llama and tokenizer (vislaw.tinyllama) against transformers on the same checkpoint."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from vislaw import tinyllama
from vislaw.llm import PretrainConfig, TinyLlamaConfig, load_llm, pretrain_llm

CORPUS = [f"a {size} {colour} {shape} is {where} the {other}."
          for size in ("small", "large") for colour in ("red", "green", "blue") for shape in ("circle", "star")
          for where in ("left of", "above") for other in ("square", "moon")]


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tinyllama") / "llm"
    pretrain_llm(CORPUS, out, TinyLlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=48,
                                              num_hidden_layers=2, num_attention_heads=4),
                 PretrainConfig(steps=20, batch_size=8, seq_len=24, lr=5e-3, warmup=2), log=io.StringIO())
    return out


def _hf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()


def test_load_llm_takes_the_lean_path_for_the_mini_lm(llm_dir: Path) -> None:
    model, tokenizer = load_llm(llm_dir)
    assert isinstance(model, tinyllama.TinyLlama) and isinstance(tokenizer, tinyllama.Tokenizer)


def test_same_logits_and_loss_as_transformers(llm_dir: Path) -> None:
    lean, hf = tinyllama.TinyLlama.from_pretrained(llm_dir), _hf(llm_dir)
    torch.manual_seed(0)
    ids = torch.randint(3, 150, (3, 11))
    with torch.no_grad():
        torch.testing.assert_close(lean(input_ids=ids).logits, hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lean(input_ids=ids, labels=ids).loss, hf(input_ids=ids, labels=ids).loss,
                                   rtol=1e-5, atol=1e-6)
        embeds = 0.5 * torch.randn(3, 11, 32)
        right = torch.ones(3, 11, dtype=torch.long)
        right[1, 7:] = 0  # right padding: vislaw's batches
        a = lean(inputs_embeds=embeds, attention_mask=right, logits_to_keep=5).logits
        b = hf(inputs_embeds=embeds, attention_mask=right, logits_to_keep=5).logits
        assert a.shape == (3, 5, hf.config.vocab_size)
        keep = right[:, -5:].bool()
        torch.testing.assert_close(a[keep], b[keep], rtol=1e-5, atol=1e-5)
        left = torch.ones(3, 11, dtype=torch.long)
        left[2, :4] = 0  # left padding takes the explicit-mask path
        a = lean(inputs_embeds=embeds, attention_mask=left).logits
        b = hf(inputs_embeds=embeds, attention_mask=left).logits
        torch.testing.assert_close(a[left.bool()], b[left.bool()], rtol=1e-5, atol=1e-5)


def test_gradients_match_transformers(llm_dir: Path) -> None:
    lean, hf = tinyllama.TinyLlama.from_pretrained(llm_dir), _hf(llm_dir)
    ids = torch.randint(3, 150, (2, 9), generator=torch.Generator().manual_seed(1))
    lean(input_ids=ids, labels=ids).loss.backward()
    hf(input_ids=ids, labels=ids).loss.backward()
    hf_grads = dict(hf.named_parameters())
    for name, parameter in lean.named_parameters():
        torch.testing.assert_close(parameter.grad, hf_grads[name].grad, rtol=1e-4, atol=1e-6)


def test_saved_lean_model_loads_in_transformers_with_the_same_logits(llm_dir: Path, tmp_path: Path) -> None:
    lean, tokenizer = load_llm(llm_dir)
    with torch.no_grad():
        lean.model.layers[0].mlp["up_proj"].weight.mul_(1.5)  # a fine-tuned model, as stage 2 writes
    lean.save_pretrained(tmp_path / "out")
    tokenizer.save_pretrained(tmp_path / "out")
    ids = torch.randint(3, 150, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(_hf(tmp_path / "out")(input_ids=ids).logits, lean(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)
    again, _ = load_llm(tmp_path / "out")
    assert isinstance(again, tinyllama.TinyLlama)


def test_tokenizer_matches_transformers(llm_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    lean, hf = tinyllama.Tokenizer(llm_dir), PreTrainedTokenizerFast.from_pretrained(llm_dir)
    text = "a small red circle is left of the moon? Ωk 42"
    assert lean(text, add_special_tokens=False)["input_ids"] == hf(text, add_special_tokens=False)["input_ids"]
    ids = lean(text, add_special_tokens=False)["input_ids"]
    assert lean.decode(ids) == hf.decode(ids) == text
    assert (lean.bos_token_id, lean.eos_token_id, lean.pad_token_id) == (hf.bos_token_id, hf.eos_token_id,
                                                                          hf.pad_token_id)
    assert len(lean) == len(hf)


@pytest.mark.parametrize("change", [{"tie_word_embeddings": False}, {"num_key_value_heads": 2},
                                    {"rope_scaling": {"type": "linear", "factor": 2.0}}, {"model_type": "qwen2"},
                                    {"attention_bias": True}, {"attention_dropout": 0.1}])
def test_checkpoints_outside_the_subset_go_through_transformers(llm_dir: Path, change: dict) -> None:
    config = json.loads((llm_dir / "config.json").read_text())
    assert tinyllama.supports(config)
    assert not tinyllama.supports({**config, **change})
    with pytest.raises(ValueError, match="outside the lean implementation"):
        tinyllama.TinyLlama({**config, **change})


def test_bf16_autocast_attends_in_fp32_on_the_cpu_and_stays_near_the_fp32_logits(
        llm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lean = tinyllama.TinyLlama.from_pretrained(llm_dir)
    calls: list[tuple[torch.dtype, ...]] = []
    attend = torch.nn.functional.scaled_dot_product_attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
        calls.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return attend(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    ids = torch.randint(3, 150, (4, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        exact = lean(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = lean(input_ids=ids).logits
    layers = lean.shape.num_hidden_layers
    assert calls == [(torch.float32,) * 3 + (False,)] * (2 * layers)  # both passes attend in fp32, autocast off
    assert exact.dtype == torch.float32 and mixed.dtype == torch.bfloat16  # the projections did run in bf16
    error = (mixed.float() - exact).abs().max() / exact.abs().max()
    print(f"bf16 autocast: largest logit error {error:.4f} of the largest logit")
    assert 0 < error < 0.02  # bf16 keeps 8 bits of mantissa: a few parts in a thousand per product
