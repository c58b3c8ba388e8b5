"""Write the tiny pretrained-asset stand-ins the demo and debug configs point at, from a text corpus:

    python tools/make_tiny_assets.py --corpus data/demo/corpus.txt --out data/demo/assets [--llm-steps 300]

  <out>/bert_tokenizer   WordPiece tokenizer for the Q-Former (as bert-base-uncased's directory)
  <out>/opt, <out>/t5    HF model directories (tokenizer + weights) loaded with from_pretrained(local_files_only)

With --llm-steps N the tiny OPT and T5 are first trained as language models on the corpus (plain next-token /
span-free denoising-free LM training), standing in for the pretrained LLMs RegionBLIP keeps frozen.
"""

from __future__ import annotations

import argparse
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


def _train(model, tokenizer, corpus: list[str], steps: int, seed: int, out: Path, causal: bool) -> float:
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        texts = [corpus[i] for i in torch.randint(len(corpus), (32,), generator=gen).tolist()]
        if causal:
            enc = tokenizer([t + "\n" for t in texts], return_tensors="pt", padding=True)
            labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
            loss = model(**enc, labels=labels).loss
        else:
            cut = [max(1, len(t.split()) // 3) for t in texts]
            prefixes = [" ".join(t.split()[:c]) for t, c in zip(texts, cut)]
            targets = [" ".join(t.split()[c:]) for t, c in zip(texts, cut)]
            enc = tokenizer(prefixes, return_tensors="pt", padding=True)
            labels = tokenizer(targets, return_tensors="pt", padding=True).input_ids
            labels = labels.masked_fill(labels == tokenizer.pad_token_id, -100)
            loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return float(loss.detach())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path, help="text file, one caption per line")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--llm-steps", type=int, default=0, help="language-model training steps for OPT and T5")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus} does not exist; write one caption per line (make_synthetic_world.py)")
    corpus = [line.strip() for line in args.corpus.read_text().splitlines() if line.strip()]
    if not corpus:
        parser.error(f"--corpus {args.corpus} is empty")
    torch.manual_seed(args.seed)
    assets = write_tiny_assets(args.out, corpus)
    if args.llm_steps:
        opt_loss = pretrain_causal_lm(assets.opt, corpus, args.llm_steps, args.seed)
        t5_loss = pretrain_t5(assets.t5, corpus, args.llm_steps, args.seed)
        print(f"tiny LLMs trained for {args.llm_steps} steps: OPT loss {opt_loss:.3f}, T5 loss {t5_loss:.3f}")
    print(f"wrote {assets.bert_tokenizer}, {assets.opt}, {assets.t5}")


if __name__ == "__main__":
    main()
