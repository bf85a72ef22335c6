"""CP + ES evaluation: clipeval's batched evaluators against per-neuron evaluation, same OpenCLIP model.

    python bench/bench_cp_es.py [--quick] [--neurons N] [--concepts N] [--naive-neurons K]

Model: open_clip ViT-B-32 with RANDOM weights (clipeval.models.image_text.OpenClipModel.load('ViT-B-32',
'', image_size=128): the paper's evaluator architecture and its 128 px resize; the weights do not change
the time). Concepts: the first N of wordfreq's common-10k set (default all 10,000; --quick 1,000).
Neurons: 256 (--quick 64) in 4 layers, each with 5 top images drawn without replacement from a pool of
2 x neurons probe images with Zipf-like popularity (weight 1 / (i + 5)), so popular images recur in
many neurons' top-5 lists as in real runs; each neuron is judged with 3 labels (real, shuffled,
constant), i.e. 3 x 5 (image, label) pairs per neuron.

Ways, each timed end to end (images read from disk, preprocessed, encoded; texts encoded):
  ours           ConceptProportion.score then EmbeddingSimilarity.score with an empty cache: every
                 unique image and every concept encoded once (ES then reuses CP's image embeddings),
                 texts through OpenClipModel.encode_texts (context cut to the longest text: exact).
  ours, texts cached   the same with the concept/label embeddings already cached (a second run over the
                 same concept set with the same evaluator model), image embeddings not.
  per-neuron (straightforward)   the concept set encoded once the standard open_clip way
                 (model.encode_text on tokenizer(texts), 77-token context, as the original scripts and
                 open_clip's README do); then for each neuron: read and encode its 5 images, rank each
                 label among the concepts (CP), cosine with the label's concept row (ES).
  per-neuron, our text encoder   the same loop with the concept set encoded by our encode_texts:
                 what is left is the gain from encoding each unique image once.
  per-neuron (naive)   for each neuron: encode the whole concept set, its 5 images and its 3 label
                 texts. Not run in full (hours): its time is N x (standard concept-set encoding) + the
                 loop + N x (3 label texts, measured); --naive-neurons K runs K neurons of it for real.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_s, met, parser, print_machine, probe_images, ratio, set_threads, table, write_json  # noqa: E402

TARGET = 10.0


def build_inputs(n_neurons: int, concepts: list[str], seed: int = 0):
    from clipeval.evaluators.base import EvalInputs, label_variants

    rng = np.random.default_rng(seed)
    pool_size = 2 * n_neurons
    paths, source = probe_images(pool_size, seed)
    weights = 1.0 / (np.arange(pool_size) + 5.0)
    weights /= weights.sum()
    rows = []
    for unit in range(n_neurons):
        layer = f"layer{unit % 4 + 1}"
        for rank, image in enumerate(rng.choice(pool_size, 5, replace=False, p=weights), start=1):
            rows.append((layer, unit, "top", rank, int(image)))
    images = pd.DataFrame(rows, columns=["layer", "unit", "kind", "rank", "image_id"])
    neurons = images[["layer", "unit"]].drop_duplicates().reset_index(drop=True)
    neurons["label"] = rng.choice(np.array(concepts, dtype=object), len(neurons))
    labels, constant = label_variants(neurons, seed)
    inputs = EvalInputs(
        "bench", f"bench-probe-{pool_size}-{seed}", pool_size, labels, images, dict(enumerate(paths)), list(concepts)
    )
    return inputs, source


def ours(model, inputs, cache_dir: Path) -> tuple[float, pd.DataFrame, pd.DataFrame]:
    from clipeval.dissect.pipeline import ArrayCache
    from clipeval.evaluators.cp import ConceptProportion
    from clipeval.evaluators.es import EmbeddingSimilarity

    cache = ArrayCache(cache_dir)
    start = time.perf_counter()
    cp = ConceptProportion(model, "bench-model", cache).score(inputs, progress=False)
    es = EmbeddingSimilarity(model, "bench-model", cache).score(inputs, progress=False)
    return time.perf_counter() - start, cp, es


def per_neuron(model, inputs, concept_embeddings=None, label_texts_per_neuron: bool = False):
    """The straightforward loop. concept_embeddings=None: encode the concept set inside the loop
    for every neuron (naive); else use the given matrix (fair)."""
    import torch

    from clipeval.datasets.probe import load_rgb

    index = {c: i for i, c in enumerate(inputs.concepts)}
    labels = {v: lab.set_index(["layer", "unit"])["label"] for v, lab in inputs.labels.items()}
    out = []
    with torch.no_grad():
        for (layer, unit), g in inputs.images.sort_values("rank").groupby(["layer", "unit"], sort=False):
            T = (
                concept_embeddings
                if concept_embeddings is not None
                else model.encode_texts(list(inputs.concepts)).float().numpy()
            )
            batch = torch.stack([model.preprocess(load_rgb(inputs.paths[int(i)])) for i in g["image_id"]])
            E = model.encode_images(batch).float().numpy()  # (5, d)
            sims = E @ T.T  # (5, |S|)
            names = [labels[v].loc[(layer, unit)] for v in labels]
            if label_texts_per_neuron:
                L = model.encode_texts(names).float().numpy()
            for j, (variant, name) in enumerate(zip(labels, names)):
                col = index[name]
                rank = 1 + (sims > sims[:, col : col + 1]).sum(1)
                cos = E @ (L[j] if label_texts_per_neuron else T[col])
                for r, image, rk, c in zip(g["rank"], g["image_id"], rank, cos):
                    out.append((layer, unit, variant, int(r), int(image), float(rk), float(c)))
    return pd.DataFrame(out, columns=["layer", "unit", "variant", "rank", "image_id", "cp", "es"])


def standard_encode_texts(model, texts: list[str], batch: int = 256):
    """The standard open_clip way: encode_text on the tokenizer's 77-token rows."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        out = [
            model.model.encode_text(model.tokenizer(texts[i : i + batch])).float() for i in range(0, len(texts), batch)
        ]
    return F.normalize(torch.cat(out), dim=-1)


def compare(cp: pd.DataFrame, es: pd.DataFrame, base: pd.DataFrame) -> dict:
    keys = ["layer", "unit", "variant", "rank"]
    m = (
        cp[keys + ["raw"]]
        .rename(columns={"raw": "cp_ours"})
        .merge(es[keys + ["raw"]].rename(columns={"raw": "es_ours"}), on=keys)
        .merge(base, on=keys)
    )
    return {
        "pairs": len(m),
        "cp_equal_share": float((m["cp_ours"] == m["cp"]).mean()),
        "cp_max_rank_diff": float((m["cp_ours"] - m["cp"]).abs().max()),
        "es_max_abs_diff": float((m["es_ours"] - m["es"]).abs().max()),
    }


def main() -> None:
    ap = parser(__doc__.split("\n")[0])
    ap.add_argument("--neurons", type=int)
    ap.add_argument("--concepts", type=int)
    ap.add_argument("--naive-neurons", type=int, default=None, help="also run K neurons of the naive loop")
    args = ap.parse_args()
    set_threads(args.threads)
    import torch

    from clipeval.datasets.concepts import load_concepts
    from clipeval.models.image_text import OpenClipModel

    info = print_machine()
    n_neurons = args.neurons or (64 if args.quick else 256)
    n_concepts = args.concepts or (1000 if args.quick else 10000)
    naive_k = args.naive_neurons or 0
    concepts = list(load_concepts("common-10k").concepts)[:n_concepts]
    model = OpenClipModel.load("ViT-B-32", "", image_size=128)
    inputs, source = build_inputs(n_neurons, concepts)
    n_unique = inputs.images["image_id"].nunique()
    print("model: open_clip ViT-B-32 (random weights), images resized to 128 px then its 224 px preprocessing")
    print(
        f"{n_neurons} neurons x 5 top images ({len(inputs.images)} slots, {n_unique} unique images from a pool of "
        f"{2 * n_neurons}; probe {source}); {len(concepts)} concepts; 3 label variants -> "
        f"{3 * len(inputs.images)} (image, label) pairs per evaluator"
    )
    with torch.no_grad():  # warm up kernels and the tokenizer (not timed)
        model.encode_texts(concepts[:8])
        model.encode_images(torch.zeros(2, 3, 224, 224))

    results = {}
    with tempfile.TemporaryDirectory(prefix="clipeval-bench-cpes-") as tmp:
        tmp = Path(tmp)
        t_ours, cp, es = ours(model, inputs, tmp / "cache")
        print(f"  ours (empty cache)             {fmt_s(t_ours)}", flush=True)
        for sub in (tmp / "cache").iterdir():  # keep the text embeddings, drop the image embeddings
            if "image" in sub.name:
                shutil.rmtree(sub)
        t_warm, _, _ = ours(model, inputs, tmp / "cache")
        print(f"  ours (texts cached)            {fmt_s(t_warm)}", flush=True)

    start = time.perf_counter()
    T = standard_encode_texts(model, concepts).numpy()
    t_concepts = time.perf_counter() - start
    start = time.perf_counter()
    T_ours = model.encode_texts(concepts).numpy()
    t_concepts_ours = time.perf_counter() - start
    text_diff = float(np.abs(T - T_ours).max())
    start = time.perf_counter()
    base = per_neuron(model, inputs, T)
    t_loop = time.perf_counter() - start
    t_fair, t_fair_ours = t_concepts + t_loop, t_concepts_ours + t_loop
    print(f"  per-neuron, straightforward    {fmt_s(t_fair)} (loop {fmt_s(t_loop)} + concept set {fmt_s(t_concepts)})")
    print(f"  per-neuron, our text encoder   {fmt_s(t_fair_ours)} (concept set {fmt_s(t_concepts_ours)})")
    names = list(inputs.labels["real"]["label"][:3])
    start = time.perf_counter()
    for _ in range(3):
        standard_encode_texts(model, names)
    t_labels = (time.perf_counter() - start) / 3
    t_naive = n_neurons * t_concepts + t_loop + n_neurons * t_labels
    print(f"  per-neuron, naive (estimate)   {fmt_s(t_naive)}", flush=True)
    naive_run = None
    if naive_k:
        sub = inputs.images[inputs.images["unit"].isin(sorted(inputs.images["unit"].unique())[:naive_k])]
        small = type(inputs)(**{**inputs.__dict__, "images": sub})
        start = time.perf_counter()
        per_neuron(model, small, None, label_texts_per_neuron=True)
        naive_run = (time.perf_counter() - start) / naive_k
        print(
            f"  naive, run for real on {naive_k} neuron(s): {fmt_s(naive_run)} per neuron "
            f"(estimate {fmt_s(t_naive / n_neurons)} per neuron)",
            flush=True,
        )

    check = compare(cp, es, base)

    def row(way, t):
        return {
            "way": way,
            "seconds": fmt_s(t),
            "vs straightforward": ratio(t_fair, t),
            "vs same text encoder": ratio(t_fair_ours, t),
            "vs naive": ratio(t_naive, t),
            f"target {TARGET:.0f}x met (vs straightforward)": met(t_fair / t >= TARGET),
        }

    rows = [
        row("ours (empty cache)", t_ours),
        row("ours (texts cached)", t_warm),
        {"way": "per-neuron, straightforward (concepts once, standard encode_text)", "seconds": fmt_s(t_fair)},
        {"way": "per-neuron, concepts once with our text encoder", "seconds": fmt_s(t_fair_ours)},
        {"way": "per-neuron, naive (N x concept set; estimate)", "seconds": fmt_s(t_naive)},
    ]
    print()
    print(
        table(
            rows,
            [
                "way",
                "seconds",
                "vs straightforward",
                "vs same text encoder",
                "vs naive",
                f"target {TARGET:.0f}x met (vs straightforward)",
            ],
        )
    )
    print(
        f"\nparts: concept set, standard encode_text {fmt_s(t_concepts)} ({len(concepts) / t_concepts:.0f} texts/s), "
        f"ours {fmt_s(t_concepts_ours)} ({t_concepts / t_concepts_ours:.0f}x faster, max |diff| {text_diff:.1g}); "
        f"3 label texts {fmt_s(t_labels)}; per-neuron loop {fmt_s(t_loop)} "
        f"({len(inputs.images) / t_loop:.1f} images/s incl. reading)"
    )
    print(
        f"same results: {check['pairs']} (image, label) pairs; CP rank identical for {check['cp_equal_share']:.2%} "
        f"(max rank difference {check['cp_max_rank_diff']:.0f}); ES max |diff| {check['es_max_abs_diff']:.1g}"
    )
    results.update(
        {
            "neurons": n_neurons,
            "concepts": len(concepts),
            "unique_images": int(n_unique),
            "slots": len(inputs.images),
            "ours_s": t_ours,
            "ours_texts_cached_s": t_warm,
            "straightforward_s": t_fair,
            "same_text_encoder_s": t_fair_ours,
            "loop_s": t_loop,
            "concepts_standard_s": t_concepts,
            "concepts_ours_s": t_concepts_ours,
            "text_max_diff": text_diff,
            "labels_s": t_labels,
            "naive_estimate_s": t_naive,
            "naive_measured_per_neuron_s": naive_run,
            "check": check,
        }
    )
    write_json(args.json, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
