"""Language of the mini-world: templated captions, multiple-choice questions and the prompt format.

Captions name every object with its size, texture, colour, category and glyph, and relate the first two
objects spatially ("a small striped red triangle with the letter K above a medium blue star ..."), so a
caption is (almost) determined by its image: the A score can only be high for representations that see
these attributes. Questions are templated per skill; ``mc_prompt`` is the one prompt format used by both the
stage-2 training conversations and the benchmark test split, so that training and evaluation agree.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from vislaw.data.scene import COLOUR_NAMES, GLYPHS, SIZE_NAMES, ObjectSpec, SceneSpec, pick
from vislaw.data.shapes import categories

SKILLS: tuple[str, ...] = ("colour", "shape", "count", "spatial", "glyph", "size")
TEXTURE_WORDS = {"solid": "", "stripes": "striped", "dots": "dotted", "checker": "checkered", "shaded": "shaded"}
BACKGROUND_WORDS = {
    "gradient": "smooth",
    "stripes": "striped",
    "checker": "checkered",
    "noise": "mottled",
    "dots": "dotted",
}
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."  # LLaVA-1.5's
# The mini-world's MLLMs answer with the option itself: its 128-wide LM, fine-tuned on 1,800 conversations,
# learns to copy the right word (contrastive_96, 562 steps: colour 53 %, count 80 %) far sooner than to map
# it to a letter as well (colour 20 %, count 61 %; chance 25 %). The short instruction matters as much:
# "Answer with the option's text from the given choices directly." gave colour 25 % (bench/MLLM_NOTES.md).
OPTION_INSTRUCTION = "Answer with the option."
ANSWER_FORMATS = ("letter", "option")
SPATIAL_OPTIONS: tuple[str, ...] = ("to the left", "to the right", "above", "below")
LOCATION_OPTIONS: tuple[str, ...] = ("on the left", "on the right", "at the top", "at the bottom")
# The spatial skill's two forms: where one object is in the image (SEED-Bench's instance location; the
# default) or where it is relative to another (CV-Bench's relation). The mini-world's 0.9M-parameter LM
# answers the relation at chance even from the caption written out in place of the image (bench/MLLM_NOTES.md).
SPATIAL_QUESTIONS: tuple[str, ...] = ("location", "relation")
MAX_COUNT_OPTION = 6


@dataclass(frozen=True)
class Question:
    skill: str
    question: str
    options: tuple[str, ...]
    answer: int  # index into options

    @property
    def answer_text(self) -> str:
        return self.options[self.answer]

    @property
    def answer_letter(self) -> str:
        return string.ascii_uppercase[self.answer]


def mc_prompt(question: str, options: tuple[str, ...] | list[str], answer_format: str = "letter") -> str:
    """The multiple-choice prompt (without the image token): question, lettered options, and the instruction
    to answer with the letter (LLaVA-1.5's) or with the option's text."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    lines = [question, *(f"{string.ascii_uppercase[i]}. {option}" for i, option in enumerate(options))]
    return "\n".join([*lines, MC_INSTRUCTION if answer_format == "letter" else OPTION_INSTRUCTION])


def expected_answer(question: Question, answer_format: str) -> str:
    """What the MLLM should say: the letter or the option's text."""
    return question.answer_letter if answer_format == "letter" else question.answer_text


def describe(obj: ObjectSpec) -> str:
    """'small striped red triangle with the letter K' (no article)."""
    words = [obj.size, TEXTURE_WORDS[obj.texture], obj.colour, obj.category]
    phrase = " ".join(w for w in words if w)
    if obj.glyph is not None:
        phrase += f" with the {'digit' if obj.glyph.isdigit() else 'letter'} {obj.glyph}"
    return phrase


def relation(a: ObjectSpec, b: ObjectSpec) -> str:
    """Where ``a`` is relative to ``b``, along the axis of the larger offset."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def location(obj: ObjectSpec, scene: SceneSpec) -> str | None:
    """Where ``obj`` is in the image, along the axis of its larger offset from the image's centre; None when
    no axis clearly dominates (the spatial skill's location answer)."""
    dx, dy = obj.cx - scene.width / 2, obj.cy - scene.height / 2
    if not _clear_offset(dx, dy, scene):
        return None
    if abs(dx) >= abs(dy):
        return "on the left" if dx < 0 else "on the right"
    return "at the top" if dy < 0 else "at the bottom"


def position(obj: ObjectSpec, scene: SceneSpec) -> str:
    col = min(int(3 * obj.cx / scene.width), 2)
    row = min(int(3 * obj.cy / scene.height), 2)
    vertical, horizontal = ("top", "", "bottom")[row], ("left", "", "right")[col]
    if vertical and horizontal:
        return f"in the {vertical} {horizontal}"
    if vertical:
        return f"at the {vertical}"
    if horizontal:
        return f"on the {horizontal}"
    return "in the centre"


def caption(scene: SceneSpec) -> str:
    objs = scene.objects
    background = f"on a {BACKGROUND_WORDS[scene.background.kind]} background"
    if len(objs) == 1:
        return f"a {describe(objs[0])} {position(objs[0], scene)} {background}"
    text = f"a {describe(objs[0])} {relation(objs[0], objs[1])} a {describe(objs[1])}"
    for obj in objs[2:]:
        text += f", and a {describe(obj)} {position(obj, scene)}"
    return f"{text}, {background}"


def _with_distractors(rng: np.random.Generator, answer: str, pool: tuple[str, ...], n_options: int) -> Question:
    distractors = [p for p in pool if p != answer]
    chosen = [distractors[i] for i in rng.permutation(len(distractors))[: n_options - 1]]
    options = [answer, *chosen]
    order = rng.permutation(len(options))
    shuffled = tuple(options[i] for i in order)
    return Question(skill="", question="", options=shuffled, answer=shuffled.index(answer))


def _unique(objs: tuple[ObjectSpec, ...], key) -> list[ObjectSpec]:
    keys = [key(o) for o in objs]
    return [o for o, k in zip(objs, keys) if keys.count(k) == 1]


def _clear_offset(dx: float, dy: float, scene: SceneSpec) -> bool:
    # Only ask when one axis clearly dominates and the offset is large, so the answer is not a judgement call.
    dx, dy = abs(dx), abs(dy)
    return max(dx, dy) >= 1.5 * min(dx, dy) and max(dx, dy) >= 0.15 * min(scene.width, scene.height)


def _clear_relation(a: ObjectSpec, b: ObjectSpec, scene: SceneSpec) -> bool:
    return _clear_offset(a.cx - b.cx, a.cy - b.cy, scene)


def make_question(
    skill: str, scene: SceneSpec, rng: np.random.Generator, spatial: str = "location"
) -> Question | None:
    """A question of ``skill`` about the scene, or None if the scene cannot support one unambiguously.
    ``spatial`` picks the spatial skill's form (``SPATIAL_QUESTIONS``)."""
    if spatial not in SPATIAL_QUESTIONS:
        raise ValueError(f"spatial question {spatial!r} unknown; known: {SPATIAL_QUESTIONS}")
    objs = scene.objects
    names = tuple(c.name for c in categories())

    def full_name(o: ObjectSpec) -> tuple[str, str]:
        return (o.colour, o.category)

    if skill == "colour":
        candidates = _unique(objs, lambda o: o.category)
        if not candidates:
            return None
        target = pick(rng, candidates)
        q = _with_distractors(rng, target.colour, COLOUR_NAMES, 4)
        text = f"What colour is the {target.category}?"
    elif skill == "shape":
        candidates = _unique(objs, lambda o: o.colour)
        if not candidates:
            return None
        target = pick(rng, candidates)
        q = _with_distractors(rng, target.category, names, 4)
        text = f"What shape is the {target.colour} object?"
    elif skill == "count":
        n = len(objs)
        start = int(rng.integers(max(1, n - 3), min(n, MAX_COUNT_OPTION - 3) + 1))
        options = tuple(str(k) for k in range(start, start + 4))
        q = Question(skill="", question="", options=options, answer=n - start)
        text = "How many objects are there in the image?"
    elif skill == "spatial" and spatial == "location":
        candidates = [o for o in _unique(objs, full_name) if location(o, scene) is not None]
        if not candidates:
            return None
        target = pick(rng, candidates)
        q = _with_distractors(rng, location(target, scene), LOCATION_OPTIONS, 4)
        text = f"Where in the image is the {target.colour} {target.category}?"
    elif skill == "spatial":
        named = _unique(objs, full_name)
        pairs = [(a, b) for a in named for b in named if a is not b and _clear_relation(a, b, scene)]
        if not pairs:
            return None
        a, b = pick(rng, pairs)
        answer = SPATIAL_OPTIONS[("to the left of", "to the right of", "above", "below").index(relation(a, b))]
        q = _with_distractors(rng, answer, SPATIAL_OPTIONS, 4)
        text = f"Where is the {a.colour} {a.category} relative to the {b.colour} {b.category}?"
    elif skill == "glyph":
        candidates = [o for o in _unique(objs, full_name) if o.glyph is not None]
        if not candidates:
            return None
        target = pick(rng, candidates)
        q = _with_distractors(rng, target.glyph, GLYPHS, 4)
        text = f"What letter or digit is written on the {target.colour} {target.category}?"
    elif skill == "size":
        candidates = _unique(objs, full_name)
        if not candidates:
            return None
        target = pick(rng, candidates)
        q = Question(skill="", question="", options=SIZE_NAMES, answer=SIZE_NAMES.index(target.size))
        text = f"What size is the {target.colour} {target.category}?"
    else:
        raise ValueError(f"unknown skill {skill!r}; known: {SKILLS}")
    return Question(skill=skill, question=text, options=q.options, answer=q.answer)
