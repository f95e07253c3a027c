"""The instruction library of the paper: 7 ways to ask for a first segmentation, 6 ways to ask for a
refinement. Training data draws from it so the agent follows clinicians' phrasing, not one template."""

from __future__ import annotations

import random

from ..agent.prompts import IBIS_V1

INITIALIZATION: dict[str, tuple[str, ...]] = {
    "direct": ("Segment the {target}.", "Outline the {target} in this image."),
    "goal-oriented": (
        "I need an accurate outline of the {target} to measure it.",
        "To plan treatment, delineate the {target}.",
    ),
    "initialization intent": (
        "Start by locating the {target} and place your first point on it.",
        "Begin the segmentation of the {target}.",
    ),
    "conversational": ("Could you help me find the {target} here?", "Let's segment the {target} together."),
    "polite": ("Please segment the {target}, thank you.", "Would you kindly outline the {target}?"),
    "question": ("Where is the {target} in this {modality} image?", "Which region is the {target}?"),
    "concise": ("{target}", "{target} segmentation"),
}

REFINEMENT: dict[str, tuple[str, ...]] = {
    "next step": ('<image>Continue segmenting "{instruction}". What is your next move?',),
    "error hint": ('<image>The green mask for "{instruction}" may contain errors. Fix the largest one.',),
    "concise": ('<image>Refine: "{instruction}".',),
    "improve": ('<image>Improve the green mask so it matches "{instruction}" better, or stop if it is done.',),
    # The released model's own refinement message, so synthesized data keeps the inference contract.
    "verify": (IBIS_V1.refinement_template,),
    "polite": ('<image>Please check the green mask for "{instruction}" and correct it if needed.',),
}


def initial_instruction(target: str, modality: str, rng: random.Random) -> tuple[str, str]:
    """(category, instruction) for a first turn."""
    category = rng.choice(sorted(INITIALIZATION))
    return category, rng.choice(INITIALIZATION[category]).format(target=target, modality=modality)


def refinement_text(instruction: str, rng: random.Random) -> tuple[str, str]:
    """(category, user text) for a refinement turn."""
    category = rng.choice(sorted(REFINEMENT))
    return category, rng.choice(REFINEMENT[category]).format(instruction=instruction)
