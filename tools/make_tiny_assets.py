"""Write the tiny pretrained-asset stand-ins the demo and debug configs point at, from a text corpus:

    python tools/make_tiny_assets.py --corpus data/demo/corpus.txt --out data/demo/assets [--llm-steps 1000]
        [--llms opt t5]

  <out>/bert_tokenizer   WordPiece tokenizer for the Q-Former (as bert-base-uncased's directory)
  <out>/opt, <out>/t5    HF model directories (tokenizer + weights) loaded with from_pretrained(local_files_only)

With --llm-steps N the tiny OPT and T5 are first trained as language models on the corpus, standing in for the
pretrained LLMs RegionBLIP keeps frozen. A real LLM writes about what its context holds; a tiny LM trained on bare
captions does not (it learns one caption prior, and a soft prompt cannot steer it). So each training caption is
preceded by its content words, in order ("red circle blue square </s> a picture of a red circle and a blue square"):
the LM learns to expand a context, and RegionBLIP's soft prompt then has to supply that context from the encoder.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from lavis.models.tiny_assets import write_tiny_assets


def pretrain_causal_lm(model_dir: Path, corpus: list[str], steps: int, seed: int) -> float:
    """Train the OPT directory's model on the corpus; returns the final loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    return _train(model, tokenizer, corpus, steps, seed, model_dir, causal=True)


def pretrain_t5(model_dir: Path, corpus: list[str], steps: int, seed: int) -> float:
    """Train the T5 directory's model to continue a caption from its first words (a prefix LM, as RegionBLIP
    uses FlanT5: the encoder reads a prefix, the decoder writes the rest)."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = T5ForConditionalGeneration.from_pretrained(model_dir, local_files_only=True)
    return _train(model, tokenizer, corpus, steps, seed, model_dir, causal=False)


FUNCTION_WORDS = frozenset({"a", "an", "the", "of", "at", "on", "in", "and", "to", "with"})


def content_words(caption: str) -> str:
    """The caption's words without function words and punctuation, in their order: the LM's context."""
    return " ".join(w for w in re.findall(r"\w+", caption.lower()) if w not in FUNCTION_WORDS)


def _causal_batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """[content words | </s> | caption "\n"], right padded; the loss covers the caption and "\n" only, the layout
    RegionBLIP trains with ([soft prompt | </s> prompt | caption "\n"])."""
    rows, targets = [], []
    for text in texts:
        context = tokenizer(content_words(text), add_special_tokens=False).input_ids
        caption = tokenizer(text + "\n", add_special_tokens=False).input_ids
        rows.append(context + [tokenizer.eos_token_id] + caption)
        targets.append([-100] * (len(context) + 1) + caption)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, target) in enumerate(zip(rows, targets)):
        ids[i, : len(row)], labels[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), torch.tensor(target), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _seq2seq_batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """Encoder: content words + the caption's first words (RegionBLIP's prefix); decoder: the rest of the caption."""
    cut = [max(1, len(t.split()) // 3) for t in texts]
    sources = [content_words(t) + " " + " ".join(t.split()[:c]) for t, c in zip(texts, cut)]
    targets = [" ".join(t.split()[c:]) for t, c in zip(texts, cut)]
    enc = tokenizer(sources, return_tensors="pt", padding=True)
    labels = tokenizer(targets, return_tensors="pt", padding=True).input_ids
    return {**enc, "labels": labels.masked_fill(labels == tokenizer.pad_token_id, -100)}


def _train(model, tokenizer, corpus: list[str], steps: int, seed: int, out: Path, causal: bool) -> float:
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    # warm-up then annealing: at a constant rate the 32-wide LM never learns to copy from its context reliably
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    loss = torch.tensor(float("nan"))
    make_batch = _causal_batch if causal else _seq2seq_batch
    for _ in range(steps):
        texts = [corpus[i] for i in torch.randint(len(corpus), (32,), generator=gen).tolist()]
        loss = model(**make_batch(tokenizer, texts)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    model.save_pretrained(out)
    return float(loss.detach())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path, help="text file, one caption per line")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--llm-steps", type=int, default=0, help="language-model training steps of each LLM")
    parser.add_argument("--llms", nargs="+", choices=["opt", "t5"], default=["opt", "t5"],
                        help="which LLMs --llm-steps trains (the others keep random weights)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus} does not exist; write one caption per line (make_synthetic_world.py)")
    corpus = [line.strip() for line in args.corpus.read_text().splitlines() if line.strip()]
    if not corpus:
        parser.error(f"--corpus {args.corpus} is empty")
    torch.manual_seed(args.seed)
    assets = write_tiny_assets(args.out, corpus)
    trainers = {"opt": (pretrain_causal_lm, assets.opt), "t5": (pretrain_t5, assets.t5)}
    for name in args.llms if args.llm_steps else []:
        train, directory = trainers[name]
        loss = train(directory, corpus, args.llm_steps, args.seed)
        print(f"tiny {name} trained as a language model for {args.llm_steps} steps: final loss {loss:.3f}")
    print(f"wrote {assets.bert_tokenizer}, {assets.opt}, {assets.t5}")


if __name__ == "__main__":
    main()
