"""External-command mode of the jobs (what presets/paper-real.yaml uses): template fields, the LLaVA-format
projector handed to stage 2, and per-benchmark metrics of an lmms-eval results file; and the turns stage 2 reads
from a conversation."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import torch

from vislaw.encoders import named_spec
from vislaw.jobs import a_score, command_fields, evaluate, train_mllm
from vislaw.train import Projector, load_projector, projector_from_llava, save_projector


def test_command_fields_name_the_encoder_and_its_tower() -> None:
    clip = named_spec("clip_vit_l14_336.openai").to_dict()
    assert command_fields({**clip, "name": "CLIP336"}) == {"encoder": "CLIP336",
                                                         "vision_tower": "openai/clip-vit-large-patch14-336"}
    concat = named_spec("clip_l14_dinov2_l14.336").to_dict()
    assert command_fields({**concat, "name": "CLIP336_DINOv2"})["vision_tower"] == (
        "openai/clip-vit-large-patch14-336+facebook/dinov2-large")


def test_external_stage_2_gets_the_stage_1_projector_in_llavas_format(tmp_path: Path) -> None:
    torch.manual_seed(0)
    projector_pt = str(tmp_path / "CLIP336.pt")
    save_projector(projector_pt, Projector(4, 8), {"mode": "test"})
    # the "trainer": checks it was given LLaVA's keys and writes its model folder
    script = ("import sys, torch; state = torch.load(sys.argv[1]); "
              "assert sorted(state) == ['model.mm_projector.0.bias', 'model.mm_projector.0.weight', "
              "'model.mm_projector.2.bias', 'model.mm_projector.2.weight'], sorted(state); "
              "torch.save(state, sys.argv[2] + '/mm_projector.bin'); "
              "open(sys.argv[2] + '/encoder', 'w').write(sys.argv[3])")
    command = (f"mkdir -p $output_dir && {shlex.quote(sys.executable)} -c {shlex.quote(script)} "
               "$llava_projector $output_dir $encoder")
    spec = {**named_spec("clip_vit_l14_336.openai").to_dict(), "name": "CLIP336"}
    out_dir = tmp_path / "mllm" / "CLIP336"
    train_mllm(spec, str(tmp_path / "data"), str(tmp_path / "llm"), projector_pt, [], {"command": command},
               str(out_dir))
    assert (out_dir / "encoder").read_text() == "CLIP336"
    original, _ = load_projector(projector_pt)
    back = projector_from_llava(str(out_dir / "mm_projector.bin"), 4, 8)
    for name, value in original.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value)
    assert [p.name for p in (tmp_path / "mllm").iterdir()] == ["CLIP336"]  # the LLaVA copy was temporary


def test_an_external_stage_2_killed_mid_save_leaves_no_model(tmp_path: Path) -> None:
    # the "trainer" writes part of its model, then dies: evaluate must never find a folder under the final name
    torch.manual_seed(0)
    projector_pt = str(tmp_path / "CLIP336.pt")
    save_projector(projector_pt, Projector(4, 8), {"mode": "test"})
    spec = {**named_spec("clip_vit_l14_336.openai").to_dict(), "name": "CLIP336"}
    out_dir = tmp_path / "mllm" / "CLIP336"
    command = "echo half > $output_dir/model-00001-of-00002.safetensors && echo 'out of disk' >&2 && exit 3"
    with pytest.raises(RuntimeError, match="exit status 3(.|\\n)*out of disk"):
        train_mllm(spec, str(tmp_path / "data"), str(tmp_path / "llm"), projector_pt, [], {"command": command},
                   str(out_dir))
    assert list((tmp_path / "mllm").iterdir()) == []


def test_an_external_commands_output_reaches_the_log_while_it_runs(tmp_path: Path) -> None:
    """A trainer's losses are in the job's log as they are printed: a job killed at its time limit keeps them."""
    import os
    import signal
    import subprocess
    import time

    log = tmp_path / "job.log"
    script = ("import sys; sys.stderr = open(sys.argv[1], 'w', buffering=1); from vislaw.jobs import run_external; "
              "run_external('printf \"step %d loss 0.5\\\\n\" 1; printf \"warming %s\\\\n\" up >&2; sleep 60')")
    with subprocess.Popen([sys.executable, "-c", script, str(log)], start_new_session=True) as job:
        deadline = time.monotonic() + 30
        while "warming up" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(job.pid, signal.SIGKILL)  # as SLURM ends a job at its time limit, the command's shell too
    text = log.read_text()  # the command's own text (in the log's first line) has neither line
    assert "\nstep 1 loss 0.5\n" in text and "\nwarming up\n" in text, text


def test_external_evaluation_reads_each_benchmarks_own_metric(tmp_path: Path) -> None:
    # lmms-eval's results layout: {"results": {task: {"<metric>,<filter>": value, ...}}}
    results = {"results": {"mme": {"alias": "mme", "mme_cognition_score,none": 300.0,
                                   "mme_percetion_score,none": 1502.7, "mme_percetion_score_stderr,none": "N/A"}}}
    command = (f"mkdir -p $output_dir/llava_$encoder && echo {shlex.quote(json.dumps(results))} "
               "> $output_dir/llava_$encoder/20250101_results.json")
    spec = {**named_spec("clip_vit_l14_336.openai").to_dict(), "name": "CLIP336"}
    out_json = tmp_path / "eval" / "CLIP336" / "mme.json"
    settings = {"command": command, "metric": {"mme": "mme_percetion_score,none", "textvqa_val": "exact_match,none"}}
    evaluate(spec, str(tmp_path / "data"), str(tmp_path / "mllm"), [], "mme", settings, str(out_json))
    record = json.loads(out_json.read_text())
    assert (record["score"], record["metric"]) == (1502.7, "mme_percetion_score,none")


def test_external_stage_1_with_token_pooling_or_a_normed_projector_is_refused_before_any_work(tmp_path: Path) -> None:
    import pytest

    from vislaw.jobs import train_projector

    spec = {**named_spec("clip_vit_l14_336.openai").to_dict(), "name": "CLIP336"}
    out = tmp_path / "CLIP336.pt"
    with pytest.raises(ValueError, match="stage1.pool: LLaVA's mm_projector.bin has no token pooling"):
        train_projector(spec, str(tmp_path / "missing-data"), str(tmp_path / "missing-llm"), "missing.h5",
                        {"command": "touch $output_dir/mm_projector.bin", "pool": 2}, str(out))
    with pytest.raises(ValueError, match="stage1.pool: LLaVA's mm_projector.bin has no token pooling"):
        train_projector(spec, str(tmp_path / "missing-data"), str(tmp_path / "missing-llm"), "missing.h5",
                        {"command": "touch $output_dir/mm_projector.bin", "pool_grid": 4}, str(out))
    with pytest.raises(ValueError, match="stage1.pool_grid: give pool .* or pool_grid .*, not both"):
        train_projector(spec, str(tmp_path / "missing-data"), str(tmp_path / "missing-llm"), "missing.h5",
                        {"pool": 2, "pool_grid": 4}, str(out))
    with pytest.raises(ValueError, match="stage1.projector: LLaVA's mm_projector.bin is an mlp2x_gelu"):
        train_projector(spec, str(tmp_path / "missing-data"), str(tmp_path / "missing-llm"), "missing.h5",
                        {"command": "touch $output_dir/mm_projector.bin", "projector": "ln_mlp2x_gelu"}, str(out))
    assert not out.exists()


def test_a_conversations_turns_are_read_in_order_without_the_image_placeholder() -> None:
    from vislaw.jobs import _qa_turns

    record = {"id": "c7", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the fish?\nA. red\nB. blue\nAnswer with the option."},
        {"from": "gpt", "value": " blue "},
        {"from": "human", "value": "How many objects are there?"},
        {"from": "gpt", "value": "3"}]}
    assert _qa_turns(record) == [("What colour is the fish?\nA. red\nB. blue\nAnswer with the option.", "blue"),
                                 ("How many objects are there?", "3")]
    record["conversations"] = record["conversations"][:3]
    with pytest.raises(ValueError, match=r"qa/instruct_train.json, record 'c7': 'conversations' should alternate "
                                         r"'human' and 'gpt' .*\['human', 'gpt', 'human'\]"):
        _qa_turns(record)


def test_a_probe_set_smaller_than_n_probe_is_an_error_naming_the_key(tmp_path: Path) -> None:
    # the A score used to average over the 3 pairs there were when 5 were asked
    (tmp_path / "data" / "captions").mkdir(parents=True)
    probe = [{"image": f"img{i}", "caption": "a red circle"} for i in range(3)]
    (tmp_path / "data" / "captions" / "probe.json").write_text(json.dumps(probe))
    with pytest.raises(ValueError, match=r"a_score.n_probe: 5 probe pairs asked, but the probe set .* holds 3"):
        a_score({}, str(tmp_path / "data"), "", "", "", {"method": "caption_loglik", "n_probe": 5},
                str(tmp_path / "A.json"))
    assert not (tmp_path / "A.json").exists()
