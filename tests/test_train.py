"""The tiny LM, stage-1 projector training, the caption log-likelihood, stage 2 and option scoring."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from vislaw.llm import PretrainConfig, TinyLlamaConfig, load_llm, pretrain_llm, train_tokenizer
from vislaw.train import (Projector, TextPart, TrainConfig, caption_loglik, generate_answers, resolve_precision,
                          score_options, tokenize_parts, tokenize_turns, train_mllm, train_projector)

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
CORPUS = [f"a {s} {c} {shape} on the left of a {c2} {shape2}."
          for s in ("small", "large") for c in COLOURS for shape in SHAPES for c2 in COLOURS for shape2 in SHAPES[:2]]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("llm") / "llm"
    losses = pretrain_llm(CORPUS, out, TinyLlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=2, num_attention_heads=2),
                          PretrainConfig(steps=80, batch_size=16, seq_len=32, lr=5e-3, warmup=5), log=io.StringIO())
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10  # the LM learned the corpus
    return out


def test_tokenizer_round_trips_any_text() -> None:
    tokenizer = train_tokenizer(CORPUS, 300)
    text = "a small red circle: Ωk 42!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token_id is not None


def test_saved_llm_loads_offline(tiny_llm: Path) -> None:
    model, tokenizer = load_llm(tiny_llm)
    assert model.shape.hidden_size == 32 and len(tokenizer) <= 300
    assert (tiny_llm / "train_log.json").is_file()
    assert not list(tiny_llm.parent.glob(".*tmp"))  # the atomic build folder is gone
    with pytest.raises(FileNotFoundError, match="llm.weights: model directory"):
        load_llm(tiny_llm.parent / "missing")


def features_and_captions(n: int, seed: int = 0) -> tuple[torch.Tensor, list[str], list[int]]:
    """Features (n, 4 tokens, 12) that encode a colour (one-hot in token 0) plus noise, with captions."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(0, len(COLOURS), (n,), generator=g)
    features = 0.1 * torch.randn(n, 4, 12, generator=g)
    features[torch.arange(n), 0, colour] += 3.0
    captions = [f"a small {COLOURS[c]} circle on the left of a red square." for c in colour.tolist()]
    return features, captions, colour.tolist()


def test_stage1_lowers_the_caption_loss_and_is_reproducible(tiny_llm: Path) -> None:
    llm, tokenizer = load_llm(tiny_llm)
    features, captions, _ = features_and_captions(96)
    config = TrainConfig(epochs=6, batch_size=16, lr=3e-3, seed=1)
    projector, losses = train_projector(llm, tokenizer, features, captions, config, log=io.StringIO())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    again, losses_again = train_projector(llm, tokenizer, features, captions, config, log=io.StringIO())
    assert losses == losses_again
    for a, b in zip(projector.parameters(), again.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(not p.requires_grad for p in llm.parameters())  # the LM stayed frozen


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_runs_the_lms_products_in_the_configured_precision(tiny_llm: Path, precision: str) -> None:
    llm, tokenizer = load_llm(tiny_llm)
    features, captions, _ = features_and_captions(32)
    seen: list[torch.dtype] = []
    hook = llm.model.layers[0].mlp["up_proj"].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        projector, losses = train_projector(llm, tokenizer, features, captions,
                                            TrainConfig(epochs=1, batch_size=16, lr=3e-3, precision=precision),
                                            log=io.StringIO())
        assert len(seen) == len(losses) == 2 and set(seen) == {DTYPES[precision]}
        seen.clear()
        caption_loglik(llm, projector, tokenizer, features[:4], captions[:4])
        assert seen == [torch.float32]  # scoring (the A score, evaluation) stays in fp32 whatever training used
    finally:
        hook.remove()
    assert all(p.dtype == torch.float32 for p in projector.parameters())
    with pytest.raises(ValueError, match="precision: 'half' is not one of"):
        train_projector(llm, tokenizer, features, captions, TrainConfig(precision="half"), log=io.StringIO())


def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    for avx512_bf16, amx, expected in [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda value=avx512_bf16: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda value=amx: value)
        assert resolve_precision("auto", cpu) == expected, (avx512_bf16, amx)
    with pytest.raises(ValueError, match=r"stage2\.precision: 'fp16' is not one of fp32, bf16, auto"):
        resolve_precision("fp16", cpu, "stage2.precision")


def test_caption_loglik_equals_a_manual_loop_over_tokens(tiny_llm: Path) -> None:
    llm, tokenizer = load_llm(tiny_llm)
    features, captions, _ = features_and_captions(3, seed=5)
    torch.manual_seed(0)
    from vislaw.train import Projector

    projector = Projector(12, 32)
    batched = caption_loglik(llm, projector, tokenizer, features, captions, batch_size=2)
    embed = llm.get_input_embeddings()
    with torch.inference_mode():
        for i, caption in enumerate(captions):
            ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
            prefix = torch.cat([embed(torch.tensor([[tokenizer.bos_token_id]])), projector(features[i : i + 1])], 1)
            total = 0.0
            for t, token in enumerate(ids):
                seen = embed(torch.tensor([ids[:t]], dtype=torch.long)) if t else prefix[:, :0]
                logits = llm(inputs_embeds=torch.cat([prefix, seen], 1)).logits[0, -1]
                total += float(torch.log_softmax(logits.double(), -1)[token])
            assert batched[i].item() == pytest.approx(total / len(ids), abs=1e-4)
    assert (batched < 0).all()


def test_an_lm_stored_in_half_precision_scores_through_the_fp32_projector(tiny_llm: Path) -> None:
    # transformers 5 loads a checkpoint in its stored dtype (Vicuna's fp16): the projector (trained, fp32)
    # reads the features in its dtype and hands the LM embeddings in the LM's
    llm, tokenizer = load_llm(tiny_llm)
    features, captions, _ = features_and_captions(3, seed=5)
    torch.manual_seed(0)
    projector = Projector(12, 32)
    full = caption_loglik(llm, projector, tokenizer, features, captions)
    half = caption_loglik(llm.to(torch.bfloat16), projector, tokenizer, features.half(), captions)
    assert torch.allclose(half, full, rtol=0.05)


def test_a_tokenizer_without_bos_starts_the_sequence_with_the_image(tiny_llm: Path) -> None:
    from vislaw.train import build_batch

    llm, tokenizer = load_llm(tiny_llm)
    features, captions, _ = features_and_captions(2, seed=5)
    torch.manual_seed(0)
    projector = Projector(12, 32)
    texts = [tokenize_parts(tokenizer, [TextPart(c, True)], end_with_eos=False) for c in captions]
    with_bos = caption_loglik(llm, projector, tokenizer, features, captions)
    tokenizer.bos_token_id = None  # as Qwen2's
    embeds, labels, scored, attention = build_batch(llm, projector, features, texts, tokenizer)
    n_visual = projector.n_tokens(features.shape[1])
    with torch.inference_mode():
        assert torch.equal(embeds[:, :n_visual], projector(features))
    for row, (ids, _) in enumerate(texts):
        assert labels[row, n_visual : n_visual + len(ids)].tolist() == ids
        assert int(attention[row].sum()) == n_visual + len(ids) and scored[row].sum() == len(ids)
    without_bos = caption_loglik(llm, projector, tokenizer, features, captions)
    assert torch.isfinite(without_bos).all() and not torch.allclose(without_bos, with_bos)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stage2_learns_the_answers_and_option_scoring_picks_them(tiny_llm: Path, precision: str) -> None:
    llm, tokenizer = load_llm(tiny_llm)
    features, _, colours = features_and_captions(160, seed=2)
    question = "what colour is the circle?"
    conversations = [[(question, COLOURS[c])] for c in colours]
    projector, _ = train_projector(llm, tokenizer, features, [f"a {COLOURS[c]} circle." for c in colours],
                                   TrainConfig(epochs=3, batch_size=16, lr=3e-3, precision=precision),
                                   log=io.StringIO())
    losses = train_mllm(llm, projector, tokenizer, features[:128], conversations[:128],
                        TrainConfig(epochs=10, batch_size=16, lr=3e-3, precision=precision), log=io.StringIO())
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in [*llm.parameters(), *projector.parameters()])
    scores = score_options(llm, projector, tokenizer, features[128:], [question] * 32, [COLOURS] * 32)
    accuracy = sum(max(range(4), key=s.__getitem__) == c for s, c in zip(scores, colours[128:])) / 32
    print(f"stage-2 accuracy ({precision}) {accuracy:.3f}")
    assert accuracy > 0.5, accuracy  # chance is 0.25
    assert all(len(s) == 4 and all(math.isfinite(v) for v in s) for s in scores)


def test_a_conversation_scores_every_answer_and_its_eos_and_no_prompt(tiny_llm: Path) -> None:
    _, tokenizer = load_llm(tiny_llm)
    ids_of = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tokenizer.eos_token_id
    one = tokenize_turns(tokenizer, [("what colour is the circle?", "red")])
    assert one == tokenize_parts(tokenizer, [TextPart("what colour is the circle?", False), TextPart("red", True)])
    ids, scored = tokenize_turns(tokenizer, [("what colour?", "red"), ("and the square?", "a blue square")])
    q1, a1, q2, a2 = ids_of("what colour?"), ids_of("red"), ids_of("and the square?"), ids_of("a blue square")
    assert ids == q1 + a1 + [eos] + q2 + a2 + [eos]
    assert scored == [False] * len(q1) + [True] * (len(a1) + 1) + [False] * len(q2) + [True] * (len(a2) + 1)
    with pytest.raises(ValueError, match="at least one"):
        tokenize_turns(tokenizer, [])


def test_a_two_turn_conversations_loss_is_the_mean_over_both_answers(tiny_llm: Path) -> None:
    """Known answer: the per-sequence loss of a two-turn conversation (second prompt unscored, between the
    answers) equals the mean log-probability of its answer tokens and their ``</s>``, read from one plain
    forward pass over ``<s> [visual] q1 a1 </s> q2 a2 </s>``."""
    from vislaw.train import sequence_logliks

    llm, tokenizer = load_llm(tiny_llm)
    torch.manual_seed(1)
    projector = Projector(12, 32).eval()
    features, _, _ = features_and_captions(2, seed=5)
    conversations = [[("what colour?", "red"), ("is it small?", "a small red circle")],
                     [("what colour is the large square on the left?", "blue")]]
    texts = [tokenize_turns(tokenizer, turns) for turns in conversations]
    with torch.inference_mode():
        batched = sequence_logliks(llm, projector, features, texts, tokenizer)
        embed = llm.get_input_embeddings()
        for row, (ids, scored) in enumerate(texts):
            prefix = torch.cat([embed(torch.tensor([[tokenizer.bos_token_id]])), projector(features[row : row + 1])], 1)
            logits = llm(inputs_embeds=torch.cat([prefix, embed(torch.tensor([ids]))], 1)).logits[0].double()
            start = prefix.shape[1] - 1  # the logits at position p predict token p + 1
            logp = [float(torch.log_softmax(logits[start + t], -1)[token]) for t, token in enumerate(ids) if scored[t]]
            assert len(logp) == sum(scored) and batched[row].item() == pytest.approx(sum(logp) / len(logp), abs=1e-4)


def test_stage2_needs_a_feature_row_per_conversation(tiny_llm: Path) -> None:
    llm, tokenizer = load_llm(tiny_llm)
    features, _, _ = features_and_captions(3)
    with pytest.raises(ValueError, match="3 feature rows but 2 conversations"):
        train_mllm(llm, Projector(12, 32), tokenizer, features, [[("q", "a")], [("q", "b")]], TrainConfig(),
                   log=io.StringIO())


def test_training_texts_are_cut_to_the_lms_context_and_an_unscorable_one_is_named(tiny_llm: Path) -> None:
    from vislaw.train import fit_to_context

    llm, tokenizer = load_llm(tiny_llm)
    limit = llm.config["max_position_embeddings"]
    texts = [([5] * 3, [False, True, True]), ([5] * (limit + 9), [False] * 4 + [True] * (limit + 5))]
    log = io.StringIO()
    cut = fit_to_context(texts, llm, 10, "conversation", log)
    assert cut[0] == texts[0] and cut[1] == ([5] * (limit - 10), [False] * 4 + [True] * (limit - 14))
    assert f"1 of 2 conversations cut to the LM's {limit} positions" in log.getvalue()
    with pytest.raises(ValueError, match=rf"conversation 1: nothing to score within the LM's {limit} positions"):
        fit_to_context([texts[0], ([5] * limit, [False] * (limit - 1) + [True])], llm, 10, "conversation", log)
    with pytest.raises(ValueError, match=rf"{limit} positions of <s> and visual tokens fill the LM's"):
        fit_to_context(texts, llm, limit, "caption", log)
    # stage 2 on a conversation longer than the context trains on what fits, instead of running RoPE past it
    features, _, _ = features_and_captions(2)
    long_answer = " ".join(["red"] * limit)
    log = io.StringIO()
    train_mllm(llm, Projector(12, 32), tokenizer, features, [[("q", "a red circle")], [("what colour?", long_answer)]],
               TrainConfig(epochs=1, batch_size=2), log=log)
    assert f"1 of 2 conversations cut to the LM's {limit} positions" in log.getvalue()


def test_batched_generation_gives_the_one_at_a_time_answers(tiny_llm: Path) -> None:
    """Prompts of different lengths, right-padded together: each answer must be read at its own row's last
    real position (reading the batch's last column would read padding for the shorter prompts)."""
    llm, tokenizer = load_llm(tiny_llm)
    torch.manual_seed(3)
    projector = Projector(12, 32).eval()
    features, _, _ = features_and_captions(7, seed=4)
    prompts = ["what colour?", "what colour is the small circle on the left of the red square?", "a", "a small",
               "where is the large blue triangle?", "red", "is it green or yellow or blue or red?"]
    one_by_one = generate_answers(llm, projector, tokenizer, features, prompts, max_new_tokens=5, batch_size=1)
    lengths = {len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lengths) >= 5 and len(set(one_by_one)) >= 2  # padding differs per row; the answers differ
    for batch_size in (3, 64):
        assert generate_answers(llm, projector, tokenizer, features, prompts, max_new_tokens=5,
                                batch_size=batch_size) == one_by_one
    # The LM head runs only from the shortest row's last position on, not at every image position
    kept = []
    hook = llm.register_forward_pre_hook(lambda _, args, kwargs: kept.append(kwargs.get("logits_to_keep")),
                                         with_kwargs=True)
    generate_answers(llm, projector, tokenizer, features, prompts, max_new_tokens=1, batch_size=64)
    hook.remove()
    assert kept == [max(lengths) - min(lengths) + 1]


def test_token_pooling_averages_grid_neighbourhoods() -> None:
    from vislaw.train import Projector, load_projector, pool_tokens, save_projector

    grid = torch.arange(16.0).view(1, 16, 1)  # a 4x4 grid, row-major: values 0..15
    assert pool_tokens(grid, 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]  # e.g. (0+1+4+5)/4
    odd = torch.arange(9.0).view(1, 9, 1)  # 3x3: the edge windows are partial and average what they hold
    assert pool_tokens(odd, 2).flatten().tolist() == [2.0, 3.5, 6.5, 8.0]
    assert torch.equal(pool_tokens(grid, 1), grid)
    with pytest.raises(ValueError, match="square grid"):
        pool_tokens(torch.zeros(1, 12, 3), 2)
    projector = Projector(1, 8, pool=2)
    assert projector(grid).shape == (1, 4, 8) and projector.n_tokens(16) == 4 and projector.n_tokens(9) == 4
    with pytest.raises(ValueError, match="stage1.pool"):
        Projector(1, 8, pool=0)


def test_pool_grid_picks_the_stride_nearest_to_the_grid() -> None:
    from vislaw.train import pool_stride

    # 12 x 12 patch tokens (96 px, patch 8) -> stride 3 -> 4 x 4; 8 x 8 (64 px) -> 2 -> 4 x 4; 16 x 16 -> 4
    assert [pool_stride(n, 4) for n in (144, 64, 256, 16, 4)] == [3, 2, 4, 1, 1]
    assert [Projector(8, 8, pool=pool_stride(n, 4)).n_tokens(n) for n in (144, 64, 256)] == [16, 16, 16]
    assert pool_stride(576, 6) == 4  # CLIP@336's 24 x 24 -> 6 x 6
    with pytest.raises(ValueError, match="stage1.pool_grid: .*square grid.*577 tokens"):
        pool_stride(577, 4)


def test_pooled_projector_round_trips_and_scores_like_its_pooled_input(tiny_llm: Path, tmp_path: Path) -> None:
    """A pooling projector on a 4x4 grid gives the same caption log-likelihood as a plain projector with the
    same weights on the pooled tokens, and keeps its pooling through save and load."""
    from vislaw.train import Projector, load_projector, pool_tokens, save_projector

    llm, tokenizer = load_llm(tiny_llm)
    torch.manual_seed(0)
    pooled, plain = Projector(12, 32, pool=2), Projector(12, 32)
    plain.load_state_dict(pooled.state_dict())
    features = torch.randn(3, 16, 12)
    captions = ["a small red circle.", "a large blue star on the left of a green moon.", "a red square."]
    a = caption_loglik(llm, pooled, tokenizer, features, captions)
    b = caption_loglik(llm, plain, tokenizer, pool_tokens(features, 2), captions)
    torch.testing.assert_close(a, b)
    save_projector(str(tmp_path / "p.pt"), pooled, {"note": "test"})
    loaded, record = load_projector(str(tmp_path / "p.pt"))
    assert loaded.pool == 2 and record == {"note": "test"}
    torch.testing.assert_close(caption_loglik(llm, loaded, tokenizer, features, captions), a)


def test_logits_only_from_the_first_scored_position_give_the_same_losses_and_gradients() -> None:
    """`sequence_logliks` asks the LM for logits from the first scored token on (``logits_to_keep``): its
    values and the projector's gradients equal those from the logits at every position."""
    import transformers

    from vislaw.scores.alignment import token_logliks
    from vislaw.train import Projector, TextPart, build_batch, sequence_logliks, tokenize_parts

    torch.manual_seed(0)
    llm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=64)).eval().requires_grad_(False)
    tokenizer = train_tokenizer(CORPUS, 300)
    features = torch.randn(3, 4, 12)
    # unscored prompts of different lengths before the scored answers: rows start scoring at different places
    texts = [tokenize_parts(tokenizer, [TextPart(q, False), TextPart(a, True)]) for q, a in
             [("what colour?", "red"), ("is the small circle on the left of a square?", "yes it is"), ("", "blue")]]

    projector = Projector(12, 32)
    fast = sequence_logliks(llm, projector, features, texts, tokenizer)
    fast.sum().backward()
    grads_fast = [p.grad.clone() for p in projector.parameters()]
    projector.zero_grad()
    embeds, labels, scored, attention = build_batch(llm, projector, features, texts, tokenizer)
    full = token_logliks(llm(inputs_embeds=embeds, attention_mask=attention).logits, labels, scored)
    full.sum().backward()
    grads_full = [p.grad.clone() for p in projector.parameters()]
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_fast, grads_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    calls = []
    handle = llm.lm_head.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[1]))
    try:
        sequence_logliks(llm, Projector(12, 32), features, texts, tokenizer)
    finally:
        handle.remove()
    width = 1 + 4 + max(len(ids) for ids, _ in texts)
    first = min(flags.index(True) for _, flags in texts)
    assert calls == [width - (1 + 4 + first) + 1] and calls[0] < width  # the LM head saw only the kept positions


def test_normed_projector_is_scale_free_and_keeps_its_norm_through_save_and_load(tmp_path: Path) -> None:
    """ln_mlp2x_gelu: tokens scaled by 10 project to the same embeddings (the LayerNorm takes the scale out;
    the plain mlp2x_gelu does not), and a saved normed projector loads normed; LLaVA's format refuses it."""
    from vislaw.train import load_projector, projector_to_llava, save_projector

    torch.manual_seed(0)
    normed, plain = Projector(12, 8, pool=2, norm=True), Projector(12, 8, pool=2)
    tokens = torch.randn(2, 16, 12)
    torch.testing.assert_close(normed(10 * tokens), normed(tokens), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain(10 * tokens), plain(tokens), atol=1e-2)
    save_projector(str(tmp_path / "p.pt"), normed, {})
    loaded, _ = load_projector(str(tmp_path / "p.pt"))
    assert loaded.normed and loaded.pool == 2
    torch.testing.assert_close(loaded(tokens), normed(tokens))
    with pytest.raises(ValueError, match="ln_mlp2x_gelu"):
        projector_to_llava(str(tmp_path / "p.pt"), str(tmp_path / "mm_projector.bin"))
    # a pooled plain projector's weights would load into LLaVA's and lose the pooling: refused too
    save_projector(str(tmp_path / "pooled.pt"), plain, {})
    with pytest.raises(ValueError, match=r"pooling 2x2 tokens has no LLaVA mm_projector.bin form.*stage1.pool: 1"):
        projector_to_llava(str(tmp_path / "pooled.pt"), str(tmp_path / "mm_projector.bin"))
    assert not (tmp_path / "mm_projector.bin").exists()


def test_length_grouped_batches_cover_the_same_items_with_less_padding() -> None:
    """group_by_length: each epoch still visits every item once, in batches sorted by length within runs of
    ``group`` batches, so the padded width shrinks; without lengths the batches are the plain shuffle."""
    from vislaw.train import _batches

    lengths = [3 + (7 * i) % 40 for i in range(64)]
    plain = list(_batches(64, 8, 2, torch.Generator().manual_seed(0)))
    grouped = list(_batches(64, 8, 2, torch.Generator().manual_seed(0), lengths, group=4))
    assert len(plain) == len(grouped) == 16
    for epoch in (slice(0, 8), slice(8, 16)):  # 64 items, 8 per batch: one epoch is 8 batches
        assert sorted(torch.cat(grouped[epoch]).tolist()) == list(range(64))
    first_run = torch.cat(grouped[:4])
    assert sorted(first_run.tolist()) == sorted(torch.cat(plain[:4]).tolist())  # the same items, reordered
    assert [lengths[i] for i in first_run.tolist()] == sorted((lengths[i] for i in first_run.tolist()), reverse=True)

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b.tolist()) for b in batches)

    assert padded(grouped) < 0.8 * padded(plain)
    assert [b.tolist() for b in _batches(64, 8, 2, torch.Generator().manual_seed(0), lengths, group=1)] == \
        [b.tolist() for b in plain]


def test_the_batch_loss_averages_over_tokens_or_over_sequences(tiny_llm: Path) -> None:
    from vislaw.train import batch_loss, sequence_logliks

    llm, tokenizer = load_llm(tiny_llm)
    features, _, _ = features_and_captions(2, seed=5)
    torch.manual_seed(0)
    projector = Projector(12, 32)
    texts = [tokenize_parts(tokenizer, [TextPart("a small red", False), TextPart("circle", True)]),
             tokenize_parts(tokenizer, [TextPart("a", False), TextPart("large blue square on the left", True)])]
    counts = [sum(flags) for _, flags in texts]
    assert counts[0] < counts[1]
    with torch.inference_mode():
        means = sequence_logliks(llm, projector, features, texts, tokenizer).tolist()
        token = batch_loss(llm, projector, features, texts, tokenizer, "token").item()
        sequence = batch_loss(llm, projector, features, texts, tokenizer, "sequence").item()
    # LLaVA's loss: every scored token weighs the same, so the longer answer weighs counts[1] / counts[0] more
    assert token == pytest.approx(-(means[0] * counts[0] + means[1] * counts[1]) / (counts[0] + counts[1]))
    assert sequence == pytest.approx(-(means[0] + means[1]) / 2)
    assert token != pytest.approx(sequence)
    with pytest.raises(ValueError, match="loss_average: 'tokens' is not one of token, sequence"):
        batch_loss(llm, projector, features, texts, tokenizer, "tokens")
