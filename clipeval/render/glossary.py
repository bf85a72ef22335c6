"""The glossary the app's help icons link to: one entry per term a collaborator meets on the pages.
Kept as data here (not in a page) so the help texts and the Glossary page cannot drift apart, and a
test can check that every link points at an entry. Every prompt, threshold and rule an entry quotes is
formatted in from the value the code uses (or, where that would import torch, checked by a test)."""

from __future__ import annotations

from clipeval.analysis.headlines import WEAK_RATIO
from clipeval.analysis.intervals import MIN_N, N_BOOT
from clipeval.config import DEFAULT_PROMPT
from clipeval.evaluators.judges import PAPER_THRESHOLDS
from clipeval.evaluators.rules import RULES

VQA_QUESTION = DEFAULT_PROMPT.replace("{label}", "<label>")  # models.vqa.format_prompt, without importing torch

# anchor -> (title, text in Markdown). The anchor is the entry's id on the Glossary page.
TERMS: dict[str, tuple[str, str]] = {
    "clip-dissect": (
        "CLIP-Dissect",
        """
Labels a hidden neuron of a vision network with a concept from a concept set (e.g. the 10,000 most
common English words). It records the neuron's activation on every probe image, embeds the images and
the concepts with an image-text model (CLIP in the paper), and picks the concept whose image
similarities best match the neuron's activation pattern, under a *similarity function* such as
soft-WPMI. The label's *similarity* is that function's score: comparable between neurons of one run,
not a cosine.""",
    ),
    "soft-wpmi": (
        "soft-WPMI",
        """
CLIP-Dissect's default similarity function (soft weighted pointwise mutual information): how much more
likely the concept is among the neuron's most activating images than among all probe images, with each
image's concept probability taken from the image-text model (a softmax over concepts) and the top images
weighted softly rather than cut at a hard top-k. Higher is a better match; values of different runs or
similarity functions are not comparable.""",
    ),
    "cp": (
        "CP: concept proportion",
        f"""
An automatic evaluator. For each of the neuron's top-k images, rank every concept of the set by the
image-text model's similarity; the label is correct if, for ANY of the k images, it ranks within the top
`{RULES["cp"].param}` share of the concept set (cut-off int(|S| x p), as in the original: the largest rank r with
r / |S| <= p). Threshold: **{RULES["cp"].param}** (the paper's {PAPER_THRESHOLDS["cp"]:g} for CLIP; a judge that is not
CLIP starts from its calibrated value, where one is stored).""",
    ),
    "es": (
        "ES: embedding similarity",
        f"""
An automatic evaluator: the cosine between a top image's embedding and the label's text embedding; the
label is correct if ANY top-k image reaches **{RULES["es"].param}** (the paper's {PAPER_THRESHOLDS["es"]:g} is set for
CLIP; other models' cosines live on other scales, so check the baselines before trusting a share).""",
    ),
    "vqa": (
        "VQA",
        f"""
An automatic evaluator: a visual question-answering model (BLIP-2 in the paper) is asked
`{VQA_QUESTION}` for each top image; the label is correct if P(yes) is above the
**{RULES["vqa"].param}** (the paper's {PAPER_THRESHOLDS["vqa"]:g}) for ANY top-k image. Its weights are not shipped
offline, so the demo shows it as unavailable.""",
    ),
    "contrast": (
        "Contrast AUC",
        f"""
An evaluator beyond the paper: the label's cosine with the neuron's top-k images is compared with its
cosine on inactive images (the neuron's least active images and random images below its 90th percentile;
each image once).
The score is the ROC-AUC separating the two groups: 1.0 means the label fits the top images and not the
inactive ones; about 0.5 means a vague label that fits every image. Correct if AUC is at least
**{RULES["contrast"].param}** (default {PAPER_THRESHOLDS["contrast"]:g}).""",
    ),
    "baselines": (
        "Baselines: shuffled and constant labels",
        f"""
Every evaluator also judges wrong labels: the run's labels **shuffled** across the neurons of each layer
(seeded), and one **constant** label (the run's most frequent label) for every neuron. An evaluator that
passes those nearly as often as the real labels cannot tell right from wrong at that threshold; the app
then warns (a baseline passes at least {WEAK_RATIO:.0%} as often as the real labels). Read a share only beside its
baselines.""",
    ),
    "kappa": (
        "Cohen's kappa, and how to read it",
        """
Agreement between two raters corrected for the agreement expected by chance from how often each says
"correct": kappa = (observed - chance) / (1 - chance). 1 is perfect agreement, 0 is chance level, below 0
worse than chance. Rough reading: below 0.2 slight, 0.2-0.4 fair, 0.4-0.6 moderate, 0.6-0.8 substantial,
above 0.8 almost perfect. Two raters that agree 95% of the time can still have kappa about 0 when both say
"correct" almost always. Undefined (shown n/a) when both raters give one constant verdict.""",
    ),
    "agreement": (
        "Agreement and Jaccard",
        """
**Agreement** is the share of neurons on which two raters give the same verdict (the paper's "IoU" values
are this). **Jaccard** is |A and B| / |A or B| over the two raters' "correct" sets. Precision, recall and F1
treat the reference as the truth and "correct" as the positive class.""",
    ),
    "intervals": (
        "n and 95% intervals",
        f"""
Every agreement figure is shown with **n**, the number of neurons both raters judged, and a 95% interval
from a bootstrap over neurons (the neurons are resampled with replacement {N_BOOT:,} times, seeded, and the
2.5th and 97.5th percentiles of the figure are reported). Below {MIN_N} neurons a figure is greyed: it can
move a lot with a few more verdicts.""",
    ),
    "reference": (
        "Reference raters: human and automatic",
        """
The raters evaluators are compared with. **Human** raters are people (the Annotate page, or
`clipeval humans import`). **Automatic** references are computed from ground truth, not by a person: the
demo's *ImageNet class (automatic)* says "correct" where the final layer's label names the unit's
ImageNet class. Every page marks which is which; calibrating to an automatic reference fits it, not people.""",
    ),
    "imagenet-check": (
        "The ImageNet sanity check",
        """
In a 1000-way ImageNet classifier layer, unit i is the logit of ImageNet class i, so its meaning is known.
The Neuron explorer shows that class beside the label, and the Runs page the share of units whose label
(top-1) or one of whose five best concepts (top-5) names it. The original CLIP-Dissect reports 95.5%
top-1 for ResNet-50 with CLIP and ImageNet validation images.""",
    ),
    "conse": (
        "ConSE: the offline stand-in (not CLIP)",
        """
No CLIP weights can be downloaded here, so the demo embeds images with ConSE (Norouzi et al., 2014): the
probability-weighted sentence embedding of an ImageNet classifier's top class names, next to the same
sentence encoder on the concept. It knows object nouns and is weak on colours, textures and scenes, and
its cosines live on another scale than CLIP's. Runs made with it say "not CLIP" on every page.""",
    ),
    "interpretable": (
        "Interpretable unit",
        """
Here: a unit whose CLIP-Dissect label every chosen evaluator judges correct at the current thresholds.
Beside the share, the same share for shuffled and constant labels shows how much of it a wrong label
would also get.""",
    ),
}


def link(anchor: str, text: str | None = None) -> str:
    """A Markdown link to the entry on the Glossary page (relative, so it works under any base URL)."""
    title = TERMS[anchor][0]
    return f"[{text or 'Glossary: ' + title}](glossary#{anchor})"
