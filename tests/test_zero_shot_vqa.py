"""Zero-shot 3D classification and zero-shot VQAv2 through evaluate.py, on a tiny random RegionBLIP and miniature
datasets written in their real on-disk layouts; per-sample LLM prompts for OPT and T5."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evaluate import main as evaluate_main
from lavis.common.config import load_config
from lavis.common.config_schema import config_from_dict
from lavis.common.registry import MODELS
from lavis.common.vqa_accuracy import vqa_accuracy
from lavis.datasets.base import BadSampleError
from lavis.datasets.builders.vqa_builders import VQAv2Builder
from lavis.datasets.loaders import build_eval_loader
from lavis.models.regionblip.model import RegionBLIP
from lavis.models.tiny_assets import write_tiny_assets
from tests.conftest import REPO, write_yaml
from tests.models.test_regionblip import build, make_batch, tiny_model_dict
from tests.test_distributed import torchrun

CLASSES = ["airplane", "night_stand", "chair", "lamp", "sofa", "table"]
PROMPT = "a 3d model of {}"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_tiny_assets(tmp_path_factory.mktemp("tiny_assets"))


def model_block(assets) -> dict:
    qformer = {"config": {"tokenizer_path": str(assets.bert_tokenizer)}}
    return {"arch": "regionblip", "model_type": "tiny", "qformers": {"blip2": qformer, "point": qformer},
            "llm": {"path": str(assets.opt)}}


def run_block(out: Path, task: str) -> dict:
    # the miniature data holds one deliberately bad sample in 13: tolerated here, reported in the metrics
    return {"task": task, "output_dir": str(out), "device": "cpu", "num_workers": 0, "tensorboard": False, "seed": 3,
            "max_bad_sample_fraction": 0.5}


def model_like_evaluate(cfg_path: Path) -> RegionBLIP:
    """The model evaluate.py builds: same config, same seed right before construction."""
    cfg = load_config(str(cfg_path))
    torch.manual_seed(cfg.run.seed)
    return MODELS.get(cfg.model_arch).from_config(cfg.model).eval()


# ---- zero-shot classification ------------------------------------------------------------------------------------
def write_modelnet(root: Path) -> None:
    """The `modelnet40_normal_resampled` folder layout: 6 classes x 2 shapes, plus one unreadable shape."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(CLASSES) + "\n")
    ids = []
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for k in range(2):
            shape_id = f"{name}_{k + 1:04d}"
            cloud = rng.normal(size=(100, 6)) + c  # xyz + normals
            np.savetxt(root / name / f"{shape_id}.txt", cloud, delimiter=",", fmt="%.6f")
            ids.append(shape_id)
    (root / "lamp" / "lamp_0003.txt").write_text("not,a,number\n")
    (root / "modelnet40_test.txt").write_text("\n".join(ids + ["lamp_0003"]) + "\n")


def classification_config(tmp_path: Path, assets, out: str) -> Path:
    root = tmp_path / "modelnet"
    if not root.exists():
        write_modelnet(root)
    data = {
        "model": model_block(assets),
        "datasets": {"modelnet": {"builder": "modelnet40", "modality": "pointcloud", "data_root": str(root),
                                  "layout": "folder", "batch_size": 5, "class_prompt": PROMPT,
                                  "eval_processor": {"num_points": 64, "sampling": "stride"}}},
        "run": run_block(tmp_path / out, "zero_shot_classification"),
    }
    return write_yaml(tmp_path / f"{out}.yaml", data)


def test_zero_shot_classification_matches_a_hand_computation(tmp_path, assets):
    cfg_path = classification_config(tmp_path, assets, "zs")
    evaluate_main(["--cfg-path", str(cfg_path)])
    report = json.loads((tmp_path / "zs" / "modelnet_test_metrics.json").read_text())
    assert report["samples"] == 12 and report["skipped"] == 1 and report["classes"] == 6
    metrics = report["metrics"]
    assert set(metrics) == {"top1", "top5"} and all(0 <= v <= 1 for v in metrics.values())

    # by hand, from the model's own parts: ITC query embeddings vs. the [CLS] embedding of each class prompt
    model = model_like_evaluate(cfg_path)
    cfg = load_config(str(cfg_path))
    dataset = cfg.builder_of("modelnet")(cfg.datasets["modelnet"]).build("test")
    items = []
    for i in range(len(dataset)):
        try:
            items.append(dataset[i])
        except BadSampleError as e:
            assert e.sample_id == "lamp_0003"
    heads, qformer = model.heads["pointcloud"], model.qformers["point"]
    texts = [PROMPT.format(name.replace("_", " ")) for name in CLASSES]
    tokens = model.text_tokenizer(texts, "pointcloud")
    batch = {"modality": "pointcloud", "points": torch.stack([it["points"] for it in items])}
    with torch.no_grad(), model._adapter_scope("pointcloud"):
        queries = F.normalize(heads.vision_proj(model.extract(batch).query_outputs), dim=-1)
        cls = qformer(input_ids=tokens["qformer_text_ids"], attention_mask=tokens["qformer_text_mask"])[:, 0]
        classes = F.normalize(heads.text_proj(cls), dim=-1)
    scores = torch.stack([torch.stack([(q @ c).max() for c in classes]) for q in queries])
    labels = torch.tensor([it["label"] for it in items])
    order = scores.argsort(dim=1, descending=True)
    top1 = (order[:, 0] == labels).float().mean().item()
    top5 = (order[:, :5] == labels[:, None]).any(dim=1).float().mean().item()
    assert metrics["top1"] == pytest.approx(top1, abs=1e-6) and metrics["top5"] == pytest.approx(top5, abs=1e-6)

    assert torch.allclose(model.query_features(batch), queries, atol=1e-6)
    assert torch.allclose(model.text_features(texts, "pointcloud"), classes, atol=1e-6)
    predictions = {p["sample_id"]: p for p in
                   json.loads((tmp_path / "zs" / "modelnet_test_predictions.json").read_text())}
    for item, ranked in zip(items, order):
        assert predictions[item["sample_id"]]["top5"] == [CLASSES[i] for i in ranked[:5]]


@pytest.mark.slow
def test_zero_shot_classification_gathers_over_two_processes(tmp_path, assets):
    """Each process scores half of the samples; after gathering, the report is the one of a single process."""
    evaluate_main(["--cfg-path", str(classification_config(tmp_path, assets, "one"))])
    result = torchrun(2, str(REPO / "evaluate.py"), "--cfg-path", str(classification_config(tmp_path, assets, "two")))
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((tmp_path / run / "modelnet_test_metrics.json").read_text()) for run in ("one", "two"))
    assert two["samples"] == 12 and two["skipped"] == 1 and two["metrics"] == pytest.approx(one["metrics"])
    assert ((tmp_path / "two" / "modelnet_test_predictions.json").read_text()
            == (tmp_path / "one" / "modelnet_test_predictions.json").read_text())


def test_zero_shot_classification_known_answer(tmp_path, assets, monkeypatch):
    """Class features are one-hot; samples of the first two classes point at their class with one query (their
    mean over queries points elsewhere: only the max over queries gets them right), the others at the next class
    first and at their own second. So top-1 = 4/12 and top-5 = 1."""
    seen_texts = []

    def text_features(self, texts, modality):
        seen_texts.append((list(texts), modality))
        return torch.eye(len(texts))

    def query_features(self, batch):
        eye, rows = torch.eye(len(CLASSES)), []
        for label in batch["label"]:
            after = eye[(label + 1) % len(CLASSES)]
            if label < 2:
                rows.append(torch.stack([eye[label], 0.6 * after, 0.6 * after]))
            else:
                rows.append(torch.stack([0.9 * after, 0.8 * eye[label], torch.zeros(len(CLASSES))]))
        return torch.stack(rows)

    monkeypatch.setattr(RegionBLIP, "text_features", text_features)
    monkeypatch.setattr(RegionBLIP, "query_features", query_features)
    cfg_path = classification_config(tmp_path, assets, "known")
    evaluate_main(["--cfg-path", str(cfg_path)])
    metrics = json.loads((tmp_path / "known" / "modelnet_test_metrics.json").read_text())["metrics"]
    assert metrics["top1"] == pytest.approx(4 / 12) and metrics["top5"] == pytest.approx(1.0)
    assert seen_texts == [([PROMPT.format(n.replace("_", " ")) for n in CLASSES], "pointcloud")]
    predictions = json.loads((tmp_path / "known" / "modelnet_test_predictions.json").read_text())
    chair = next(p for p in predictions if p["sample_id"] == "chair_0001")
    assert chair["top5"][:2] == ["lamp", "chair"]


# ---- zero-shot VQAv2 ---------------------------------------------------------------------------------------------
QUESTIONS = [  # (question_id, image_id, question, the ten annotated answers, answer type)
    (101, 1, "What color is the square?", ["red"] * 10, "other"),
    (102, 1, "Is there a circle?", ["yes"] * 9 + ["no"], "yes/no"),
    (103, 2, "How many shapes are there?", ["2"] * 6 + ["two"] * 4, "number"),
    (104, 3, "What is this?", ["a toy"] * 10, "other"),  # its image is missing: a bad sample
    (105, 2, "Is it sunny?", ["no"] * 10, "yes/no"),
]


def write_vqa(root: Path) -> tuple[Path, Path]:
    ann_root, image_root = root / "ann", root / "val2014"
    ann_root.mkdir(parents=True)
    image_root.mkdir(parents=True)
    questions = [{"image_id": img, "question": q, "question_id": qid} for qid, img, q, _, _ in QUESTIONS]
    questions.append({"image_id": 2, "question": "Unannotated?", "question_id": 999})  # skipped at indexing
    annotations = [{"question_id": qid, "image_id": img, "answer_type": kind, "multiple_choice_answer": answers[0],
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                for i, a in enumerate(answers)]}
                   for qid, img, _, answers, kind in QUESTIONS]
    (ann_root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": questions}))
    (ann_root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    rng = np.random.default_rng(0)
    for image_id in (1, 2):
        pixels = rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_root / f"COCO_val2014_{image_id:012d}.jpg")
    return ann_root, image_root


def vqa_config(tmp_path: Path, assets, out: str) -> Path:
    if not (tmp_path / "vqa").exists():
        write_vqa(tmp_path / "vqa")
    data = {
        "model": model_block(assets),
        "datasets": {"vqa": {"builder": "vqav2", "modality": "image", "ann_root": str(tmp_path / "vqa" / "ann"),
                             "image_root": str(tmp_path / "vqa" / "val2014"), "batch_size": 2,
                             "eval_image": {"image_size": 32},
                             "generation": {"num_beams": 2, "max_new_tokens": 4, "min_new_tokens": 1}}},
        "run": run_block(tmp_path / out, "vqa"),
    }
    return write_yaml(tmp_path / f"{out}.yaml", data)


def annotations_of(question_ids) -> list[dict]:
    return [{"question_id": qid, "answers": answers, "answer_type": kind}
            for qid, _, _, answers, kind in QUESTIONS if qid in question_ids]


def test_vqa_accuracy_of_the_generated_answers(tmp_path, assets):
    cfg_path = vqa_config(tmp_path, assets, "vqa_run")
    evaluate_main(["--cfg-path", str(cfg_path)])
    results = json.loads((tmp_path / "vqa_run" / "vqa_val2014_vqa_results.json").read_text())
    assert [r["question_id"] for r in results] == [101, 102, 103, 105]  # 104: bad sample, 999: no annotation
    report = json.loads((tmp_path / "vqa_run" / "vqa_val2014_metrics.json").read_text())
    assert report["samples"] == 4 and report["skipped"] == 1
    expected = vqa_accuracy(results, annotations_of({101, 102, 103, 105}))
    assert report["metrics"]["accuracy"] == pytest.approx(expected.overall)
    assert 0 <= report["metrics"]["accuracy"] <= 1
    assert {"accuracy_yes/no", "accuracy_number", "accuracy_other"} <= set(report["metrics"])

    # the answers are the model's, asked with the YAML's prompt and generation settings
    model, cfg = model_like_evaluate(cfg_path), load_config(str(cfg_path))
    dataset = cfg.builder_of("vqa")(cfg.datasets["vqa"]).build("val2014")
    loader = build_eval_loader("vqa", dataset, modality="image", batch_size=2, rank=0, world_size=1, seed=3,
                               num_workers=0)
    by_hand = {}
    for batch in loader:
        if batch["sample_ids"]:
            prompts = [f"Question: {q} Short answer:" for q in batch["question"]]
            answers = model.generate(batch, instructions=prompts, num_beams=2, max_new_tokens=4, min_new_tokens=1,
                                     length_penalty=-1.0)
            by_hand.update(zip(batch["question_id"], answers))
    assert {r["question_id"]: r["answer"] for r in results} == by_hand


def test_vqa_right_answers_score_one(tmp_path, assets, monkeypatch):
    calls = []
    right = {qid: answers[0] for qid, _, _, answers, _ in QUESTIONS}
    agree = {qid: len(set(answers)) == 1 for qid, _, _, answers, _ in QUESTIONS}
    questions = {qid: q for qid, _, q, _, _ in QUESTIONS}

    def generate(self, batch, instructions=None, **overrides):
        calls.append(overrides)
        assert instructions == [f"Question: {questions[qid]} Short answer:" for qid in batch["question_id"]]
        # as in the official script, only whitespace is cleaned when all ten answers agree, else answers are
        # normalised
        return [f" {right[qid]}\n" if agree[qid] else right[qid].upper() + "." for qid in batch["question_id"]]

    monkeypatch.setattr(RegionBLIP, "generate", generate)
    evaluate_main(["--cfg-path", str(vqa_config(tmp_path, assets, "vqa_right"))])
    metrics = json.loads((tmp_path / "vqa_right" / "vqa_val2014_metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in metrics.values())
    assert calls and all(c["num_beams"] == 2 and c["max_new_tokens"] == 4 and c["length_penalty"] == -1.0
                         for c in calls)


@pytest.mark.parametrize("rule, unanimous_score", [("official", 0.0), ("clean", 1.0)])
def test_vqa_answer_normalization_is_the_entrys(tmp_path, assets, monkeypatch, rule, unanimous_score):
    """A capitalised "Yes." where all ten annotators agree: the official script does not normalise it (0), the
    named "clean" rule does (1); the metrics file records which rule scored."""
    agree = {qid: len(set(answers)) == 1 for qid, _, _, answers, _ in QUESTIONS}
    right = {qid: answers[0] for qid, _, _, answers, _ in QUESTIONS}
    monkeypatch.setattr(RegionBLIP, "generate", lambda self, batch, instructions=None, **kw: [
        right[qid].capitalize() + "." for qid in batch["question_id"]])
    cfg_path = vqa_config(tmp_path, assets, f"vqa_{rule}")
    evaluate_main(["--cfg-path", str(cfg_path), "--options", f"datasets.vqa.answer_normalization={rule}"])
    report = json.loads((tmp_path / f"vqa_{rule}" / "vqa_val2014_metrics.json").read_text())
    assert report["answer_normalization"] == rule
    scored = [r["question_id"] for r in json.loads(
        (tmp_path / f"vqa_{rule}" / "vqa_val2014_vqa_results.json").read_text()) if r["question_id"] in agree]
    unanimous = sum(agree[qid] for qid in scored)
    expected = (unanimous * unanimous_score + (len(scored) - unanimous)) / len(scored)
    assert 0 < unanimous < len(scored) and report["metrics"]["accuracy"] == pytest.approx(expected)


def test_vqa_builder_reports_missing_files(tmp_path):
    ann_root, image_root = write_vqa(tmp_path)
    (ann_root / "v2_mscoco_val2014_annotations.json").unlink()

    def builder(**fields) -> VQAv2Builder:
        paths = {"modality": "image", "ann_root": str(ann_root), "image_root": str(image_root)}
        return VQAv2Builder(config_from_dict(VQAv2Builder.Config, {**paths, **fields}, "datasets.vqa"))

    problems = builder().check_paths()
    assert len(problems) == 1 and "v2_mscoco_val2014_annotations.json" in problems[0]
    dataset = builder(annotations_pattern="").build("val2014")  # test-dev style: answers written, not scored
    assert builder(annotations_pattern="").check_paths() == []
    assert len(dataset) == 6 and dataset.annotations() is None and dataset[0]["answers"] == []
    with pytest.raises(BadSampleError, match="image file not found"):
        dataset[[r.question_id for r in dataset.records].index(104)]
    with pytest.raises(ValueError, match="no {} for the question"):
        builder(prompt="Question:")


# ---- per-sample prompts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["opt", "t5"])
def test_per_sample_prompts_equal_one_sample_at_a_time(assets, family):
    data = tiny_model_dict(assets, family)
    data["modalities"]["image"]["prompt" if family == "opt" else "prefix"] = "a photo of"
    if family == "t5":
        data["lora"]["llm"]["target_modules"] = ["q", "v"]
    model = build(data)
    with torch.no_grad():  # away from the near-uniform random init, so different prompts give different texts
        for p in model.llm.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    batch = make_batch(model, "image", n=3)
    assert model.generate(batch, instructions=["a photo of"] * 3) == model.generate(batch)
    prompts = ["a", "the dog on the left of the sofa", "a photo of a red car"]
    together = model.generate(batch, instructions=prompts)
    alone = [model.generate({k: v[i:i + 1] if torch.is_tensor(v) else v for k, v in batch.items()},
                            instructions=prompts[i:i + 1])[0] for i in range(3)]
    assert together == alone
    assert together != model.generate(batch, instructions=["the lamp on the desk near the window"] * 3)
    with pytest.raises(ValueError, match="2 instructions for a batch of 3"):
        model.generate(batch, instructions=prompts[:2])
