# Config, checks that fail `snakemake -n` early, and paths shared by the rules.
import json
import re

from vislaw.commands import check_command
from vislaw.data.datasets import DATASETS
from vislaw.data.prepare import DataSourceError, check_source, source_paths
from vislaw.data.text import SKILLS
from vislaw.encoders import EncoderConfigError, check_spec, spec_from_config
from vislaw.encoders.spec import hub_revisions, leaf_specs, weight_files
from vislaw.law import min_points
from vislaw.measurements import (
    MeasurementsError,
    check_enough_scored,
    load_measurements,
)
from vislaw.provenance import checkpoint_files, code_hash
from vislaw.zoo import MEAN, PATCH, STD, training_config

OUT = f"results/{config['name']}"
# Scheduling priorities (Snakemake runs the ready job of highest priority first). Every stage-2 training
# waits for the whole A/C table, so ahead of it the longest chains go first (LM, zoo, extraction, stage 1;
# the short A and C jobs fill in), and after it every training starts before any evaluation: evaluating each
# MLLM as soon as it existed left the last training running alone on 2 cores for 48 s of an 18-minute run.
PRIORITY = {
    "pretrain_llm": 50,
    "pretrain_encoder": 40,
    "extract_features": 30,
    "train_projector": 20,
    "train_mllm": 10,
}
BENCHMARKS = list(config["benchmarks"])
GROUPS = {name: entry["group"] for name, entry in config["benchmarks"].items()}
ENCODERS = list(config.get("encoders", {}))
# Mini encoders the workflow trains itself (kind mini with a 'train' block): rule pretrain_encoder.
ZOO = [
    n
    for n, e in config.get("encoders", {}).items()
    if e.get("kind") == "mini" and "train" in e
]
# Measuring (encoders configured): A, C, the policy's trainings and evaluations make the measurements
# table. Otherwise the table is given (config key 'measurements', e.g. the paper presets).
MEASURING = bool(ENCODERS)
# The law and its Monte-Carlo evaluation need every setting scored: with a training budget the policy's
# own fit on what it trained is the law it reports (policy/rounds.csv).
FIT_LAW = not MEASURING or config["policy"]["train_all"]
MEASUREMENTS_CSV = (
    f"{OUT}/measurements.csv" if MEASURING else config.get("measurements")
)
# Image sets each encoder's extraction covers: a 'data' source without QA benchmarks has no QA test images
# (its evaluation is then external, e.g. lmms-eval, which reads its own benchmarks).
IMAGE_SETS = [
    d
    for d in DATASETS
    if d != "qa_test" or "data" not in config or config["data"]["qa"]
]


wildcard_constraints:
    encoder="|".join(map(re.escape, ENCODERS)) or "(?!)",
    zoo_encoder="|".join(map(re.escape, ZOO)) or "(?!)",
    dataset="|".join(DATASETS),
    benchmark="|".join(map(re.escape, BENCHMARKS)),
    round=r"\d+",


def zoo_training(name):
    """The full training settings of a workflow-trained mini encoder (objective + overrides)."""
    train = dict(config["encoders"][name]["train"])
    objective = train.pop("objective")
    try:
        return objective, training_config(objective, train)
    except ValueError as err:
        raise WorkflowError(f"config key 'encoders.{name}.train': {err}") from None


def encoder_entries():
    """The encoders mapping with each workflow-trained mini encoder's spec fields filled from its training:
    its checkpoint folder, input size, patch, normalisation and architecture."""
    entries = {}
    for name, entry in config.get("encoders", {}).items():
        entry = dict(entry)
        if name in ZOO:
            entry.pop("train")
            _, settings = zoo_training(name)
            entry.setdefault("weights", f"{OUT}/zoo/{name}")
            entry.setdefault("image_size", settings["image_size"])
            entry.setdefault("patch", PATCH)
            entry.setdefault("mean", list(MEAN))
            entry.setdefault("std", list(STD))
            entry.setdefault("options", {"arch": settings["arch"]["arch"]})
        entries[name] = entry
    return entries


ENCODER_ENTRIES = encoder_entries()


def encoder_spec(name):
    return spec_from_config(name, ENCODER_ENTRIES)


def zoo_parts(name):
    """The workflow-trained mini encoders an encoder reads: itself, or a concat's parts (recursively)."""
    entry = config["encoders"].get(name, {})
    if name in ZOO:
        return [name]
    return [z for part in entry.get("parts", []) for z in zoo_parts(part)]


def zoo_inputs(wildcards):
    return [f"{OUT}/zoo/{name}" for name in zoo_parts(wildcards.encoder)]


def weight_inputs(wildcards):
    """The local checkpoint files an encoder loads (its own or its parts'), the zoo's excepted (zoo_inputs
    tracks those): a checkpoint overwritten in place is newer than the caches, so they are made again.
    """
    leaves = leaf_specs(encoder_spec(wildcards.encoder))
    return [
        str(path)
        for leaf in leaves
        if leaf.name not in ZOO
        for path in weight_files(leaf)
    ]


def weight_revisions(wildcards):
    """Hub id -> the commit the local Hugging Face cache loads: a newer download reruns the extraction."""
    return hub_revisions(encoder_spec(wildcards.encoder))


# What pandas' read_csv takes for a missing value by default (its STR_NA_VALUES): no setting may be named so.
MISSING_VALUE_NAMES = {
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
}


def check_encoders():
    """Build every encoder's spec at parse time: a bad entry fails the dry run, naming its config key."""
    if not MEASURING:
        if "measurements" not in config:
            raise WorkflowError(
                "config key 'measurements': required unless 'encoders' are measured"
            )
        return
    if "measurements" in config:
        raise WorkflowError(
            "config keys 'measurements' and 'encoders': give one; measured encoders make the table"
        )
    if "world" not in config and "data" not in config:
        raise WorkflowError(
            "config key 'encoders': measuring needs a data source; add a 'world' or a 'data' block"
        )
    if not config["evaluation"]["command"] and "world" in config:
        unknown = [b for b in BENCHMARKS if b not in SKILLS]
        if unknown:
            raise WorkflowError(
                f"config key 'benchmarks': {unknown} are not built-in mini-world benchmarks "
                f"{list(SKILLS)}; set 'evaluation.command' for external ones"
            )
    for name in ENCODERS:
        if name in MISSING_VALUE_NAMES:
            raise WorkflowError(
                f"config key 'encoders.{name}': a CSV reader takes the name {name!r} for a missing value "
                "(the setting would vanish from the tables); rename the entry"
            )
        try:
            spec = encoder_spec(name)
            # a checkpoint the workflow itself trains does not exist yet when the DAG is planned
            check_spec(spec if not zoo_parts(name) else _without_zoo_weights(spec))
        except EncoderConfigError as err:
            raise WorkflowError(f"config key {err}") from None
    if config["a_score"]["method"] == "cosine_to_reference":
        references = config["a_score"]["references"]
        if not references:
            raise WorkflowError(
                "config key 'a_score.references': cosine_to_reference needs reference encoders"
            )
        unknown = [r for r in references if r not in ENCODERS]
        if unknown:
            raise WorkflowError(
                f"config key 'a_score.references': {unknown} are not keys of 'encoders'"
            )


def _without_zoo_weights(spec):
    import dataclasses

    parts = tuple(_without_zoo_weights(p) for p in spec.parts)
    weights = None if spec.name in ZOO else spec.weights
    return dataclasses.replace(spec, weights=weights, parts=parts)


def check_data_source():
    """One data source, and a 'data' block whose files exist and suit the built-in steps the config uses
    (its records are checked by rule prepare_data)."""
    if "world" in config and "data" in config:
        raise WorkflowError(
            "config keys 'world' and 'data': give one data source, not both "
            "('world' generates the mini-world, 'data' names your own files)"
        )
    if "data" not in config:
        world = config.get("world")
        if (
            MEASURING
            and world
            and config["a_score"]["n_probe"] > world["n_caption_probe"]
        ):
            raise WorkflowError(
                f"config key 'a_score.n_probe': {config['a_score']['n_probe']} probe pairs asked, "
                f"but 'world.n_caption_probe' makes {world['n_caption_probe']}"
            )
        return
    data = config["data"]
    try:
        check_source(data)
    except DataSourceError as err:
        raise WorkflowError(str(err)) from None
    if not MEASURING:
        return
    if ZOO:
        raise WorkflowError(
            f"config key 'encoders.{ZOO[0]}.train': the mini zoo trains on the mini-world "
            "('world'), not on a 'data' source"
        )
    if not config["stage2"]["command"]:
        if "instruct" not in data:
            raise WorkflowError(
                "config key 'data.instruct': the built-in stage 2 needs instruction data; "
                "add it, or set 'stage2.command'"
            )
        if data["instruct"]["image_root"]:
            raise WorkflowError(
                "config key 'data.instruct.image_root': the built-in stage 2 reads the caption_train "
                "features, so its conversations must use the caption images; leave image_root out, "
                "or set 'stage2.command'"
            )
    missing = [b for b in BENCHMARKS if b not in data["qa"]]
    if not config["evaluation"]["command"] and missing:
        raise WorkflowError(
            f"config key 'data.qa': the built-in evaluation needs test records for {missing}; "
            "add them, or set 'evaluation.command'"
        )
    probe = data["captions"]
    if not probe["probe"] and config["a_score"]["n_probe"] > probe["n_probe"]:
        raise WorkflowError(
            f"config key 'a_score.n_probe': {config['a_score']['n_probe']} probe pairs asked, "
            f"but 'data.captions.n_probe' draws {probe['n_probe']}"
        )


def check_commands():
    """External commands' placeholders, before any job runs (a typo would otherwise fail hours in)."""
    for key in ("stage1.command", "stage2.command", "evaluation.command"):
        section, field = key.split(".")
        command = config.get(section, {}).get(field)
        if command:
            try:
                check_command(key, command)
            except ValueError as err:
                raise WorkflowError(str(err)) from None


check_data_source()
check_encoders()
check_commands()


# The MLLM's language model: a user's local checkpoint, or the tiny LM trained on the world's corpus.
LLM = config["llm"]["weights"] or f"{OUT}/llm"
# A user's checkpoint's files, as inputs beside the folder: a model saved over it in place leaves the folder's
# own time as it was, but not its files'. The pretrained LM is a rule's output, tracked by Snakemake already.
LLM_FILES = (
    [str(path) for path in checkpoint_files(LLM)] if config["llm"]["weights"] else []
)


def a_score_references(wildcards):
    """cosine_to_reference: name -> spec, stage-1 projector and probe features of each reference."""
    if config["a_score"]["method"] != "cosine_to_reference":
        return {}
    return {
        name: {
            "spec": encoder_spec(name).to_dict(),
            "projector": f"{OUT}/projectors/{name}.pt",
            "features": f"{OUT}/features/{name}/caption_probe.h5",
        }
        for name in config["a_score"]["references"]
    }


def a_score_inputs(wildcards):
    inputs = {
        "data": f"{OUT}/data",
        "llm": LLM,
        "llm_files": LLM_FILES,
        "projector": f"{OUT}/projectors/{wildcards.encoder}.pt",
        "features": f"{OUT}/features/{wildcards.encoder}/caption_probe.h5",
    }
    for name, ref in a_score_references(wildcards).items():
        inputs[f"ref_projector_{name}"] = ref["projector"]
        inputs[f"ref_features_{name}"] = ref["features"]
    return inputs


def spec_param(wildcards):
    """The encoder's spec as a plain dict: a change to one entry reruns only that encoder's jobs."""
    return encoder_spec(wildcards.encoder).to_dict()


# What the live policy reads (vislaw.aggregate.live_policy): the checkpoint rounds and the policy report track only
# these, so editing the simulation's trials or max_budget does not rerun the rounds and everything after them.
LIVE_POLICY_SETTINGS = {
    key: config["policy"][key]
    for key in ("budget", "initial", "per_round", "top_k", "seed", "train_all")
}


def evaluation_settings(wildcards):
    """The evaluate jobs of one benchmark get the command and that benchmark's metric only, so that
    editing another benchmark's metric does not rerun this benchmark's (possibly hours-long) jobs.
    """
    settings = config["evaluation"]
    metric = settings.get("metric")
    if isinstance(metric, dict):
        metric = metric.get(wildcards.benchmark)
    return {"command": settings.get("command"), "metric": metric}


def check_measurements():
    """Read the measurements table at parse time: a bad table fails the dry run, naming file and line."""
    if MEASURING:
        return None  # made by the workflow, checked when read
    try:
        table = load_measurements(config["measurements"], BENCHMARKS)
        law = config["law"]
        check_enough_scored(
            table,
            min_points([*law["feature_sets"], law["predict_with"]]),
            f"the law's feature sets {law['feature_sets']} and predict_with {law['predict_with']!r} "
            "(config keys 'law.feature_sets', 'law.predict_with')",
        )
    except MeasurementsError as err:
        raise WorkflowError(f"config key 'measurements': {err}") from None
    return table


MEASUREMENTS = check_measurements()


def trained_before(round_number):
    """Settings picked by the policy's rounds before ``round_number`` (each round a checkpoint)."""
    picks = []
    for r in range(1, round_number):
        with open(checkpoints.policy_round.get(round=r).output[0]) as handle:
            picks += json.load(handle)["picks"]
    return picks


def round_files():
    """The policy's round files up to the first that says it is the last."""
    files, r = [], 1
    while True:
        path = checkpoints.policy_round.get(round=r).output[0]
        files.append(path)
        with open(path) as handle:
            if json.load(handle)["done"]:
                return files
        r += 1


def trained_settings():
    return trained_before(len(round_files()) + 1)


def eval_files(settings):
    """{setting: {benchmark: evaluation JSON}}"""
    return {s: {b: f"{OUT}/eval/{s}/{b}.json" for b in BENCHMARKS} for s in settings}


def flat_eval_files(settings):
    return [path for per in eval_files(settings).values() for path in per.values()]


LAW_PLOTS = [
    f"{OUT}/plots/law_fit.png",
    f"{OUT}/plots/law_surface.png",
    f"{OUT}/plots/r2_comparison.png",
    f"{OUT}/plots/policy_recall.png",
]


def summary_inputs(wildcards):
    inputs = {}
    if FIT_LAW:
        inputs.update(
            r2=f"{OUT}/law/r2.csv",
            summary=f"{OUT}/law/summary.csv",
            coefficients=f"{OUT}/law/coefficients.csv",
            predictions=f"{OUT}/law/predictions.csv",
            simulation=f"{OUT}/policy/simulation.csv",
            plots=LAW_PLOTS,
        )
    if MEASURING:
        inputs.update(
            ac=f"{OUT}/scores/ac.csv",
            measurements=MEASUREMENTS_CSV,
            policy=f"{OUT}/policy/recommendation.json",
            evaluations=f"{OUT}/evaluations.csv",
        )
    return inputs


def all_targets():
    world = [f"{OUT}/data"] if "world" in config or "data" in config else []
    measured = [f"{OUT}/scores/ac.csv", f"{OUT}/policy/rounds.csv"] if MEASURING else []
    law = LAW_PLOTS if FIT_LAW else []
    return world + measured + law + [f"{OUT}/summary.md"]
