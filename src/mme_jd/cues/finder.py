"""The shortcut finder: which tokens and image statistics predict the label on a training split.

    report = find_cues(load_mmsd(), split="train", top=20)
    report["tokens"][0]   # {"token": "#not", "label": "sarcastic", "count": ..., "z": ...}

Text. Every row's text is cut into tokens (:func:`tokenize`: words, ``#hashtags`` — MMSD's
``# word`` joined —, ``@mentions``, ``emoji_<n>`` codes and emoji characters, ``<placeholders>``,
URLs, punctuation), lower-cased, each counted once per row. For each token w and class k
against the other classes the statistic is the **log-odds ratio with an informative Dirichlet
prior, z-scored** (Monroe, Colaresi and Quinn 2008, "Fightin' Words", eq. 22):

    δ_w = log[(y_kw + a_w) / (n_k + a_0 − y_kw − a_w)] − log[(y_rw + a_w) / (n_r + a_0 − y_rw − a_w)]
    σ²_w ≈ 1/(y_kw + a_w) + 1/(y_rw + a_w),        z_w = δ_w / σ_w

with y_kw the rows of class k holding w, n_k the (row, token) pairs of class k (r: the rest),
and the prior a_w = a_0 · (pooled rate of w), a_0 = ``prior_strength`` · N (default 0.1: a
prior worth a tenth of the data, taken from the split itself). Why this one: a raw P(label |
token) or log-odds ratio puts every token seen twice in one class at the top; the prior
shrinks a token's log-odds toward the pooled rate, and dividing by σ (large when y is small)
ranks a token by how sure the data are that it shifts the label, so a rare token can only rank
high with a large, consistent effect. Each token is reported for the class with its largest z,
with its row count, P(class | token) and the class's base rate.

Images. Cheap global statistics (`mme_jd.cues.image.IMAGE_STATISTICS`: channel means,
brightness, saturation, hue, size, aspect ratio, border and corner uniformity) are tested the
same way: per statistic and class, the z statistic of the difference of the class's mean from
the rest's (Welch: (m_k − m_r) / sqrt(v_k/n_k + v_r/n_r)), reported for the class whose mean is
highest above the rest, with P(class | statistic above its median). An optional linear probe
(multinomial logistic regression on the standardised statistics, 5-fold cross-validation)
says how much of the label all of them predict together, against the majority class.

Thresholds. :data:`NO_CUE_Z` (4.0): on a split without a planted cue no token or statistic
should reach it (|z| under no association is about standard normal; 4 is beyond the maximum of
several thousand such draws in most runs); a planted cue reaches far above it (``#irony`` on
the synthetic benchmark: z ≈ 40).
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .image import IMAGE_STATISTICS, image_array, image_statistics

__all__ = ["NO_CUE_Z", "find_cues", "image_associations", "linear_probe", "text_associations", "token_kind",
           "tokenize"]

logger = logging.getLogger("mme_jd")

#: A token or statistic whose z reaches this is reported as a likely shortcut.
NO_CUE_Z = 4.0

_TOKEN = re.compile(
    r"#\s?\w+"  # hashtag; MMSD writes them "# word"
    r"|@\w+"  # mention
    r"|emoji_\w+"  # MMSD's emoji codes
    r"|<\w+>"  # placeholders: <user>, <url>, <num>
    r"|https?://\S+|www\.\S+"  # URL
    r"|\w+(?:'\w+)*"  # word (with its apostrophes)
    r"|[^\w\s]"  # punctuation and emoji characters, one each
)


def tokenize(text: str) -> list[str]:
    """The lower-cased tokens of `text` (see the module docstring); ``# word`` becomes ``#word``."""
    return [re.sub(r"^#\s", "#", t) for t in _TOKEN.findall((text or "").lower())]


def token_kind(token: str) -> str:
    """hashtag, mention, emoji, placeholder, url, word or punctuation."""
    if token.startswith("#") and len(token) > 1:
        return "hashtag"
    if token.startswith("@") and len(token) > 1:
        return "mention"
    if token.startswith("emoji_") or (len(token) == 1 and unicodedata.category(token) == "So"):
        return "emoji"
    if token.startswith("<") and token.endswith(">") and len(token) > 2:
        return "placeholder"
    if token.startswith(("http", "www.")):
        return "url"
    return "word" if re.match(r"\w", token) else "punctuation"


def _label_names(rows, label_column: str, num_labels: int) -> list[str]:
    feature = getattr(rows, "features", {}).get(label_column) if hasattr(rows, "features") else None
    names = getattr(feature, "names", None)
    return list(names) if names else [str(i) for i in range(num_labels)]


def text_associations(texts: Sequence[str], labels: Sequence[int], num_labels: int | None = None,
                      label_names: Sequence[str] | None = None, prior_strength: float = 0.1,
                      progress: bool = False) -> list[dict[str, Any]]:
    """Every token's association with the label, best first (see the module docstring).

    Returns one dict per token: token, kind, label (the class it points to), count (rows with
    it), label_count (of them, rows of that class), p_label_given_token, base_rate, lift, z.
    """
    from tqdm.auto import tqdm

    labels = np.asarray(labels, dtype=np.int64)
    if len(texts) != len(labels) or len(labels) == 0:
        raise ValueError(f"text_associations needs one label per text and at least one row; got {len(texts)} texts "
                         f"and {len(labels)} labels.")
    num_labels = int(num_labels or labels.max() + 1)
    names = list(label_names or [str(i) for i in range(num_labels)])
    per_class = [Counter() for _ in range(num_labels)]
    for text, label in tqdm(zip(texts, labels), total=len(labels), desc="text cues", disable=not progress,
                            leave=False):
        per_class[label].update(set(tokenize(text)))
    vocabulary = sorted(set().union(*per_class))
    if not vocabulary:
        return []
    counts = np.array([[c[w] for c in per_class] for w in vocabulary], dtype=np.float64)  # (V, K)
    rows_per_class = np.bincount(labels, minlength=num_labels).astype(np.float64)
    pairs = counts.sum(axis=0)  # n_k
    total = pairs.sum()
    a0 = prior_strength * total
    prior = a0 * counts.sum(axis=1, keepdims=True) / total  # a_w, (V, 1)
    rest_counts = counts.sum(axis=1, keepdims=True) - counts
    rest_pairs = total - pairs
    odds_k = np.log((counts + prior) / (pairs + a0 - counts - prior))
    odds_r = np.log((rest_counts + prior) / (rest_pairs + a0 - rest_counts - prior))
    z = (odds_k - odds_r) / np.sqrt(1.0 / (counts + prior) + 1.0 / (rest_counts + prior))  # (V, K)
    best = z.argmax(axis=1)
    base = rows_per_class / rows_per_class.sum()
    out = []
    for index, token in enumerate(vocabulary):
        k = int(best[index])
        count = int(counts[index].sum())
        p = counts[index, k] / count
        out.append({"token": token, "kind": token_kind(token), "label": names[k], "label_id": k, "count": count,
                    "label_count": int(counts[index, k]), "p_label_given_token": float(p),
                    "base_rate": float(base[k]), "lift": float(p / base[k]) if base[k] > 0 else math.inf,
                    "z": float(z[index, k])})
    out.sort(key=lambda r: (-r["z"], -r["count"], r["token"]))
    return out


def image_associations(statistics: dict[str, np.ndarray], labels: Sequence[int], num_labels: int | None = None,
                       label_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every image statistic's association with the label, best first: statistic, label (the
    class whose mean is highest above the rest's), z (Welch), class mean, rest mean,
    p_label_given_high (P(class | statistic above its median)), base_rate."""
    labels = np.asarray(labels, dtype=np.int64)
    num_labels = int(num_labels or labels.max() + 1)
    names = list(label_names or [str(i) for i in range(num_labels)])
    base = np.bincount(labels, minlength=num_labels) / len(labels)
    out = []
    for name, values in statistics.items():
        values = np.asarray(values, dtype=np.float64)
        scores = []
        for k in range(num_labels):
            inside, rest = values[labels == k], values[labels != k]
            if len(inside) < 2 or len(rest) < 2:
                scores.append(0.0)
                continue
            se = math.sqrt(inside.var(ddof=1) / len(inside) + rest.var(ddof=1) / len(rest))
            scores.append(float((inside.mean() - rest.mean()) / se) if se > 1e-12 else 0.0)
        k = int(np.argmax(scores))
        high = values > np.median(values)
        p_high = float((labels[high] == k).mean()) if high.any() else None
        out.append({"statistic": name, "label": names[k], "label_id": k, "z": scores[k],
                    "label_mean": float(values[labels == k].mean()) if (labels == k).any() else None,
                    "rest_mean": float(values[labels != k].mean()) if (labels != k).any() else None,
                    "p_label_given_high": p_high, "base_rate": float(base[k])})
    out.sort(key=lambda r: -r["z"])
    return out


def linear_probe(statistics: dict[str, np.ndarray], labels: Sequence[int], num_labels: int | None = None,
                 folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Cross-validated multinomial logistic regression on the standardised statistics: how much
    of the label the image statistics predict together (accuracy and macro F1 against the
    majority class)."""
    import torch

    from ..evaluation.metrics import classification_metrics

    labels_np = np.asarray(labels, dtype=np.int64)
    num_labels = int(num_labels or labels_np.max() + 1)
    features = np.stack([np.asarray(v, dtype=np.float64) for v in statistics.values()], axis=1)
    order = np.random.default_rng(seed).permutation(len(labels_np))
    predictions = np.zeros_like(labels_np)
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        mean, std = features[train].mean(axis=0), features[train].std(axis=0) + 1e-8
        x = torch.tensor((features - mean) / std, dtype=torch.float32)
        y = torch.tensor(labels_np)
        layer = torch.nn.Linear(x.shape[1], num_labels)
        optimiser = torch.optim.LBFGS(layer.parameters(), max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(layer(x[train]), y[train]) + 1e-3 * layer.weight.pow(2).sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        with torch.no_grad():
            predictions[test] = layer(x[test]).argmax(-1).numpy()
    metrics = classification_metrics(predictions, labels_np, num_labels=num_labels)
    majority = float(np.bincount(labels_np, minlength=num_labels).max() / len(labels_np))
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "majority_accuracy": majority,
            "folds": folds, "features": list(statistics)}


def _image_statistics_of(rows, image_column: str, progress: bool, max_images: int | None):
    """{statistic: values} over the rows that have an image, and the indices of those rows."""
    from tqdm.auto import tqdm

    images = rows.select_columns([image_column]) if hasattr(rows, "select_columns") else rows[image_column]
    limit = len(images) if max_images is None else min(len(images), max_images)
    values: dict[str, list[float]] = {name: [] for name in IMAGE_STATISTICS}
    kept = []
    for index in tqdm(range(limit), desc="image cues", disable=not progress, leave=False):
        item = images[index]
        image = item[image_column] if isinstance(item, dict) else item
        if image is None:
            continue
        rgb, size = image_array(image)
        for name, value in image_statistics(rgb, size).items():
            values[name].append(value)
        kept.append(index)
    return {k: np.asarray(v) for k, v in values.items()}, np.asarray(kept, dtype=np.int64)


def find_cues(data, split: str | None = "train", top: int = 20, text_column: str = "text",
              image_column: str = "image", label_column: str = "label", probe: bool = True,
              prior_strength: float = 0.1, max_images: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Rank the tokens and image statistics of a training split by association with the label.

    Args:
        data: a `datasets.Dataset`, a `DatasetDict` (``split`` picks one) or anything with
            `text` / `image` / `label` columns (a dict of lists works).
        top: how many tokens and statistics the report keeps.
        probe: also run the linear probe on the image statistics.
        max_images: look at the first N images only (None: all).
    Returns a JSON-able report: rows, label names and base rates, the statistic's description,
    ``tokens`` (top tokens), ``num_tokens``, ``image`` (statistics, or None with
    ``image_note`` when the rows have no images), ``probe`` and ``threshold`` (:data:`NO_CUE_Z`).
    """
    import datasets

    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"the dataset has no split {split!r}; it has {list(data)}. Pass --split.")
        rows = data[split]
    else:
        rows = data
    columns = rows.column_names if hasattr(rows, "column_names") else list(rows)
    if label_column not in columns:
        raise ValueError(f"find_cues needs a {label_column!r} column; the rows have {columns}.")
    labels = np.asarray(rows[label_column], dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("find_cues: the split is empty.")
    num_labels = int(max(labels.max() + 1, len(_label_names(rows, label_column, 0))))
    names = _label_names(rows, label_column, num_labels)
    report: dict[str, Any] = {
        "split": split if isinstance(data, datasets.DatasetDict) else None, "num_rows": int(len(labels)),
        "label_names": names,
        "base_rates": {n: float(r) for n, r in zip(names, np.bincount(labels, minlength=num_labels) / len(labels))},
        "statistic": f"log-odds ratio with an informative Dirichlet prior (prior_strength {prior_strength}), z-scored "
                     "(Monroe et al. 2008), per token and class against the rest; images: Welch z of the class mean",
        "threshold": NO_CUE_Z,
    }
    if text_column in columns:
        tokens = text_associations(rows[text_column], labels, num_labels, names, prior_strength, progress)
        report["num_tokens"] = len(tokens)
        report["tokens"] = tokens[:top]
        report["tokens_above_threshold"] = sum(t["z"] >= NO_CUE_Z for t in tokens)
    report["image"], report["probe"] = None, None
    if image_column not in columns:
        report["image_note"] = f"no {image_column!r} column"
    else:
        statistics, kept = _image_statistics_of(rows, image_column, progress, max_images)
        if len(kept) < 10:
            report["image_note"] = (f"{len(kept)} rows have an image (MMSD/MMSD2.0 images are not available offline: "
                                    "the loaders give a stand-in); image statistics skipped")
        else:
            image_labels = labels[kept]
            report["image"] = image_associations(statistics, image_labels, num_labels, names)[:top]
            report["num_images"] = int(len(kept))
            if probe:
                report["probe"] = linear_probe(statistics, image_labels, num_labels)
    return report
