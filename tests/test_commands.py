"""vislaw.commands: the placeholders of external commands, checked before any work and filled by the jobs."""

from __future__ import annotations

import pytest

from vislaw.commands import PLACEHOLDERS, check_command, fill


def test_fill_replaces_every_placeholder_and_keeps_a_literal_dollar() -> None:
    line = fill("evaluation.command", "lmms-eval --model llava --model_args pretrained=$model --tasks $task "
                "--output_path $output_dir/$encoder && echo $$HOME", model="mllm/CLIP336", task="mme",
                output_dir="/tmp/w", encoder="CLIP336")
    assert line == ("lmms-eval --model llava --model_args pretrained=mllm/CLIP336 --tasks mme "
                    "--output_path /tmp/w/CLIP336 && echo $HOME")


def test_a_misspelt_placeholder_names_the_key_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"config key 'stage2.command': unknown placeholder\(s\) \$llava_projetor in "
                                         r".*placeholders: \$weights, .*\$llava_projector"):
        check_command("stage2.command", "train.py --pretrain_mm_mlp_adapter $llava_projetor")


def test_a_stray_dollar_is_refused() -> None:
    with pytest.raises(ValueError, match=r"config key 'stage1.command': a '\$' in .* starts no placeholder"):
        check_command("stage1.command", "pretrain.py --cost 5$")


def test_every_placeholder_of_each_command_is_accepted() -> None:
    for key, names in PLACEHOLDERS.items():
        check_command(key, " ".join("${%s}" % name for name in names))


def test_the_jobs_must_fill_exactly_the_placeholders() -> None:
    with pytest.raises(TypeError, match="expected"):
        fill("evaluation.command", "run $model", model="m", task="t", output_dir="o")
