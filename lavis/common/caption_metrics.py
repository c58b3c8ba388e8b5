"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE_L, CIDEr, SPICE) with pycocoevalcap's scorers.

Scores exactly the image ids present in the results, after checking them against the ground truth. SPICE needs the
Stanford CoreNLP 3.6.0 jars, which pycocoevalcap does not ship and would try to download on first use; here they are
looked for (never downloaded) and, when absent, SPICE is left out with a message in `CaptionReport.missing` while the
other metrics are still computed.

A result set that lacks some ground-truth images is scored over the rest: `coverage` turns the counts into the
metrics-file keys (`gt_items`, `scored_items`, `missing_items`, `missing_ids`, `incomplete`) and `format_table` marks
such numbers with `*`, since they are not comparable with full-set ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
CORENLP_CONFIG_KEY = "run.caption_metrics.corenlp_dir"
METRIC_ORDER = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
MAX_LISTED_IDS = 20  # missing ids written to a metrics file; missing_items counts them all
log = logging.getLogger("lavis.caption_metrics")
SPICE_HEAP = "8G"  # the heap SPICE's own usage line and pycocoevalcap ask for; CoreNLP's parser needs several GB


def evalcap() -> SimpleNamespace:
    """pycocoevalcap's scorers and its spice/ folder, imported when captions are scored: training and benchmarks run
    without the package (a 100 MB wheel, with the SPICE jars)."""
    try:
        from pycocoevalcap import spice as spice_package
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as e:
        raise ImportError(f"caption metrics need pycocoevalcap (pip install pycocoevalcap): {e}") from e
    # pycocoevalcap is a namespace package; spice/ is not
    return SimpleNamespace(Bleu=Bleu, Cider=Cider, Meteor=Meteor, Rouge=Rouge, PTBTokenizer=PTBTokenizer,
                           spice_dir=Path(spice_package.__file__).resolve().parent)


@dataclass
class CaptionMetricsConfig:
    spice: bool = True
    corenlp_dir: Optional[str] = None  # a folder holding the two CORENLP_JARS; None: pycocoevalcap's spice/lib


@dataclass
class CaptionReport:
    metrics: dict[str, float]  # corpus scores in [0, 1] (CIDEr can exceed 1), keys in METRIC_ORDER
    missing: list[str] = field(default_factory=list)  # what was not computed or not covered, and why
    per_image: dict[Any, dict[str, float]] = field(default_factory=dict)  # every metric but SPICE, per image id
    num_images: int = 0  # images scored
    num_ground_truth: int = 0  # images in the ground truth; 0: not known
    unscored_ids: list = field(default_factory=list)  # ground-truth image ids without a result

    @property
    def incomplete(self) -> bool:
        return self.num_images < self.num_ground_truth


def coco_caption_scores(results: list[dict], ground_truth: dict | str | Path,
                        cfg: CaptionMetricsConfig) -> CaptionReport:
    """Score COCO-format results [{"image_id", "caption"}] against COCO caption ground truth (a dict or JSON path)."""
    references = load_references(ground_truth)
    candidates = check_results(results, references)
    if shutil.which("java") is None:
        raise RuntimeError("caption metrics need Java on PATH (pycocoevalcap's tokenizer and METEOR are Java programs)")
    ids = list(candidates)
    # scoring takes a while (Java: the tokenizer, METEOR, SPICE): say so before and how long after
    names = "BLEU-1..4, METEOR, ROUGE_L, CIDEr" + (", SPICE" if cfg.spice else "")
    truth = ground_truth if isinstance(ground_truth, (str, Path)) else "the given ground truth"
    log.info("scoring %d captions against %s with %s", len(ids), truth, names)
    started = time.perf_counter()
    gts, res = tokenize({i: references[i] for i in ids}, {i: [candidates[i]] for i in ids})
    metrics, per_image = standard_scores(gts, res)
    missing = []
    unscored = len(references) - len(ids)
    if unscored:
        # "samples", not "images": the ground truth's `images` are point clouds or objects for 3D datasets
        missing.append(f"{unscored} of {len(references)} ground-truth samples have no result; "
                       f"metrics cover the {len(ids)} samples in the results")
    if cfg.spice:
        jars, problem = find_corenlp_jars(cfg)
        if problem is None:
            spice, problem = spice_score(gts, res, jars)
            if spice is not None:
                metrics["SPICE"] = spice
        if problem is not None:
            missing.append(problem)
    # ids are all int or all str in practice; the type name keeps a mixed set sortable
    unscored_ids = sorted((i for i in references if i not in candidates), key=lambda i: (type(i).__name__, i))
    log.info("scored %d captions against %s in %.1f s", len(ids), truth, time.perf_counter() - started)
    return CaptionReport(metrics=metrics, missing=missing, per_image=per_image, num_images=len(ids),
                         num_ground_truth=len(references), unscored_ids=unscored_ids)


def load_references(ground_truth: dict | str | Path) -> dict[Any, list[str]]:
    """image id -> its reference captions; every id of `images` is a key, even one without annotations."""
    if not isinstance(ground_truth, dict):
        with open(ground_truth) as f:
            ground_truth = json.load(f)
    if "annotations" not in ground_truth:
        raise ValueError("ground truth is not in COCO caption format: it has no 'annotations' list")
    references: dict[Any, list[str]] = {image["id"]: [] for image in ground_truth.get("images", [])}
    for annotation in ground_truth["annotations"]:
        references.setdefault(annotation["image_id"], []).append(annotation["caption"])
    return references


def check_results(results: list[dict], references: dict[Any, list[str]]) -> dict[Any, str]:
    """image id -> caption, refusing empty results, duplicated ids, unknown ids and ids without references."""
    if not results:
        raise ValueError("no results to score")
    counts = Counter(r["image_id"] for r in results)
    duplicated = [i for i, n in counts.items() if n > 1]
    if duplicated:
        raise ValueError(f"{len(duplicated)} image ids occur more than once in the results, e.g. {duplicated[:5]}; "
                         "COCO results hold one caption per image")
    unknown = [i for i in counts if i not in references]
    if unknown:
        known_as_text = {str(i) for i in references}
        hint = (" (they match ground-truth ids as text: check int vs str ids)"
                if all(str(i) in known_as_text for i in unknown[:5]) else "")
        raise ValueError(f"{len(unknown)} result image ids are not in the ground truth, e.g. {unknown[:5]}{hint}")
    unreferenced = [i for i in counts if not references[i]]
    if unreferenced:
        raise ValueError(f"{len(unreferenced)} result image ids have no reference caption in the ground truth, "
                         f"e.g. {unreferenced[:5]}")
    captions = {}
    for r in results:
        if not isinstance(r["caption"], str):
            raise ValueError(f"image {r['image_id']!r}: caption must be a string, got {type(r['caption']).__name__}")
        captions[r["image_id"]] = r["caption"]
    return captions


def tokenize(gts: dict[Any, list[str]], res: dict[Any, list[str]]) -> tuple[dict[Any, list[str]], dict[Any, list[str]]]:
    """PTB-tokenize references and candidates in one Java call (the tokenizer works line by line, so this equals
    tokenizing each side separately, as pycocoevalcap's COCOEvalCap does)."""
    # str.split() also splits on \r, \x1c-\x1f, \u2028 ...: a caption must stay one line for the line-aligned output
    both = {(side, i): [{"caption": " ".join(c.split())} for c in captions]
            for side, group in (("gts", gts), ("res", res)) for i, captions in group.items()}
    tokenized = evalcap().PTBTokenizer().tokenize(both)
    if any(len(tokenized.get(key, [])) != len(captions) for key, captions in both.items()):
        raise RuntimeError("PTBTokenizer returned a different number of lines than captions it was given")
    return ({i: tokenized[("gts", i)] for i in gts}, {i: tokenized[("res", i)] for i in res})


def standard_scores(gts: dict[Any, list[str]], res: dict[Any, list[str]]
                    ) -> tuple[dict[str, float], dict[Any, dict[str, float]]]:
    """BLEU-1..4, METEOR, ROUGE_L and CIDEr on tokenized captions: corpus scores and per-image scores."""
    scorers = evalcap()
    corpus: dict[str, float] = {}
    per_metric: dict[str, list[float]] = {}
    bleu, bleu_per_image = scorers.Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        corpus[f"Bleu_{n + 1}"] = float(bleu[n])
        per_metric[f"Bleu_{n + 1}"] = bleu_per_image[n]
    meteor = scorers.Meteor()
    try:
        corpus["METEOR"], per_metric["METEOR"] = meteor.compute_score(gts, res)
    finally:
        _stop(meteor.meteor_p)
    corpus["ROUGE_L"], per_metric["ROUGE_L"] = scorers.Rouge().compute_score(gts, res)
    corpus["CIDEr"], per_metric["CIDEr"] = scorers.Cider().compute_score(gts, res)
    per_image: dict[Any, dict[str, float]] = defaultdict(dict)
    for name, scores in per_metric.items():
        for image_id, score in zip(gts, scores):
            per_image[image_id][name] = float(score)
    return {name: float(score) for name, score in corpus.items()}, dict(per_image)


def _stop(process: subprocess.Popen) -> None:
    # pycocoevalcap only stops the METEOR JVM in Meteor.__del__; stop it now rather than whenever the object is freed
    process.stdin.close()
    process.kill()
    process.wait()


def find_corenlp_jars(cfg: CaptionMetricsConfig) -> tuple[list[Path], Optional[str]]:
    """The CoreNLP jars SPICE needs, from cfg.corenlp_dir or else pycocoevalcap's spice/lib, or a message naming the
    absent ones. Only looks: pycocoevalcap's Spice() would start a download here, which hangs or fails offline."""
    folder = Path(cfg.corenlp_dir).expanduser() if cfg.corenlp_dir else evalcap().spice_dir / "lib"
    jars = [folder / name for name in CORENLP_JARS]
    absent = [str(jar) for jar in jars if not jar.is_file()]
    if not absent:
        return jars, None
    return [], (f"SPICE not computed: {' and '.join(absent)} {'is' if len(absent) == 1 else 'are'} missing; put "
                f"{' and '.join(CORENLP_JARS)} (from stanford-corenlp-full-2015-12-09.zip) in a folder and set "
                f"corenlp_dir (evaluation key {CORENLP_CONFIG_KEY}) to it")


# SPICE is run here rather than through pycocoevalcap's Spice class, with the same tokenized input and the same score
# (the mean over images of the per-image 'All' F-score, which is what the jar prints), because that class
# - downloads CoreNLP when spice/lib lacks it, instead of using jars from another folder;
# - passes `-cache`, whose FST serialisation fails on Java >= 9 (InaccessibleObjectException);
# - reads `-out`, which the jar writes through the Nashorn JavaScript engine that Java 15+ no longer has;
# - writes temporary files into site-packages.
# An explicit classpath points the jar at the CoreNLP jars wherever they are, so nothing is copied or linked and
# site-packages is never written; scratch files go to a temporary directory.
_SPICE_F_SCORE = re.compile(r"f-score:\s*(\S+)\s*\(SPICE metric\)")
_SPICE_NUM_IMAGES = re.compile(r"num images:\s*(\d+)")


def spice_score(gts: dict[Any, list[str]], res: dict[Any, list[str]], corenlp_jars: list[Path]
                ) -> tuple[Optional[float], Optional[str]]:
    """(SPICE, None) on success, (None, why) when the jar fails."""
    spice_dir = evalcap().spice_dir
    classpath = [spice_dir / "spice-1.0.jar", *sorted((spice_dir / "lib").glob("*.jar")), *corenlp_jars]
    items = [{"image_id": n, "test": res[i][0], "refs": gts[i]} for n, i in enumerate(gts)]
    with tempfile.TemporaryDirectory(prefix="lavis_spice_") as scratch:
        input_file = Path(scratch) / "input.json"
        input_file.write_text(json.dumps(items))
        # an English locale so that the printed scores use a decimal point
        command = ["java", f"-Xmx{SPICE_HEAP}", "-Duser.language=en", "-Duser.country=US",
                   "-cp", os.pathsep.join(str(p) for p in classpath), "edu.anu.spice.SpiceScorer", str(input_file)]
        run = subprocess.run(command, cwd=scratch, capture_output=True, text=True)
    score, num_images = _SPICE_F_SCORE.search(run.stdout), _SPICE_NUM_IMAGES.search(run.stdout)
    if run.returncode != 0 or score is None or num_images is None:
        lines = [line for line in (run.stderr or run.stdout).splitlines() if not line.strip().startswith("at ")]
        tail = "\n".join(lines[-8:])  # the exception messages, without stack frames
        return None, f"SPICE not computed: the SPICE jar exited with status {run.returncode}:\n{tail}"
    if int(num_images.group(1)) != len(items):
        return None, f"SPICE not computed: it scored {num_images.group(1)} of {len(items)} images"
    return float(score.group(1)), None


def coverage(ground_truth: int, scored: int, missing_ids: list) -> dict[str, Any]:
    """The completeness keys of a metrics file: how many ground-truth items there are, how many were scored."""
    return {"gt_items": ground_truth, "scored_items": scored, "missing_items": ground_truth - scored,
            "missing_ids": list(missing_ids[:MAX_LISTED_IDS]), "incomplete": scored < ground_truth}


def incomplete_note(gt_items: int, scored_items: int) -> str:
    return (f"incomplete: {scored_items} of {gt_items} ground-truth items scored; not comparable with full-set "
            "numbers")


def format_table(report: CaptionReport) -> str:
    """The metrics x100 with one decimal, as papers report them, one per line; `*` and a footnote when some
    ground-truth images have no result."""
    names = [n for n in METRIC_ORDER if n in report.metrics] + [n for n in report.metrics if n not in METRIC_ORDER]
    width = max(len(n) for n in names + ["metric"])
    mark = "*" if report.incomplete else ""
    lines = [f"{'metric':<{width}}  score  ({report.num_images} samples)"]
    lines += [f"{name:<{width}}  {100 * report.metrics[name]:5.1f}{mark}" for name in names]
    if report.incomplete:
        lines.append(f"* {incomplete_note(report.num_ground_truth, report.num_images)}")
    return "\n".join(lines)
