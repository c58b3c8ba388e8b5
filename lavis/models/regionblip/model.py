"""RegionBLIP: frozen encoders -> per-modality queries (+ PaFE) -> Q-Former with the modality's LoRA -> losses and
the frozen LLM with the modality's LoRA. Every modality is a `modalities` entry of the config; no name is code."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lavis.common.checkpoint_io import load_into, read_state_dict
from lavis.common.config_schema import ConfigError
from lavis.common.registry import ENCODERS, MODELS
from lavis.datasets.base import ItemKeys
from lavis.models import lora
from lavis.models.base import BaseModel, FrozenPart, ModelOutput
from lavis.models.llm import LLMFamily, build_llm
from lavis.models.prompt_layout import PromptLayout
from lavis.models.qformer import QFormer, build_qformer_tokenizer
from lavis.models.regionblip import config as regionblip_config
from lavis.models.regionblip import losses as L
from lavis.models.regionblip.config import (
    RegionBLIPConfig,
    encoder_configs,
    instruction_template,
    validate,
    without_unused_parts,
    without_weights,
)
from lavis.models.regionblip.heads import ItcTextHead, ModalityHeads
from lavis.models.regionblip.region import region_dim
from lavis.models.regionblip.text import RegionTextTokenizer
from lavis.processors.region_kinds import has_mask

log = logging.getLogger(__name__)

# Key prefixes of the encoder in a LAVIS BLIP-2 file (the file format, not a modality): EVA ViT-g and its ln_vision
BLIP2_ENCODER_PREFIXES = ("visual_encoder.", "ln_vision.")
BLIP2_QFORMER_PREFIX = "Qformer."
# The heads of a frozen BLIP-2 path that are always BLIP-2's (its captions): queries and the LLM projection
BLIP2_CAPTION_HEADS = ("queries", "llm_proj.")


@dataclass
class QueryFeatures:
    """Steps 1-3 of a forward, for one single-modality batch. A row is one region (a region modality: R rows, the
    regions of all samples, sample after sample) or one sample (a holistic modality: B rows)."""

    encoder_tokens: Tensor  # [rows, N, encoder_width] encoder output (after the width adapter) each row attends to
    encoder_mask: Tensor  # [rows, N] which of them (a mask region: the tokens under its mask)
    query_embeds: Tensor  # [rows, Q, H] learnable queries (+ PaFE position embedding)
    query_outputs: Tensor  # [rows, Q, H] Q-Former outputs at the query positions
    whole_outputs: Optional[Tensor] = None  # [B, Q, H] a region modality's whole-input queries (global_prompt)


def region_layout(batch: dict[str, Any], batch_size: int) -> tuple[list[int], Tensor]:
    """(regions per sample, the sample of every region [R]). Collated batches carry both; a batch built by hand
    with one region_geometry row per sample means one region each."""
    if "region_counts" in batch:
        return list(batch["region_counts"]), batch["region_sample"]
    geometry = batch["region_geometry"]
    if geometry.shape[0] != batch_size:
        raise ValueError(f"{geometry.shape[0]} region_geometry rows for {batch_size} samples and no region_counts: "
                         "collate multi-region samples with lavis.datasets.loaders.Collator")
    return [1] * batch_size, torch.arange(batch_size, device=geometry.device)


@dataclass
class Blip2LoadReport:
    """What loading a BLIP-2 file did, by part (`encoders.<key>`, `qformers.<key>`, `heads.<modality>`)."""

    missing: dict[str, list[str]]  # part -> its BLIP-2 tensors the file lacks (they keep their BERT / random init)
    unexpected: dict[str, list[str]]  # part -> file tensors under its prefix that it has no place for
    unused: dict[str, list[str]]  # top-level module of the file -> keys no part took (e.g. t5_proj under OPT)


@MODELS.register("regionblip")
class RegionBLIP(BaseModel):
    Config = RegionBLIPConfig
    DEFAULT_CONFIGS = {
        "opt2.7b": "models/regionblip_opt2.7b.yaml",
        "opt6.7b": "models/regionblip_opt6.7b.yaml",
        "flant5xl": "models/regionblip_flant5xl.yaml",
        "flant5xxl": "models/regionblip_flant5xxl.yaml",
        "tiny": "models/regionblip_tiny.yaml",
    }

    def __init__(self, cfg: RegionBLIPConfig, encoder_cfgs: dict[str, Any], blip2_state: Optional[dict] = None):
        """Builds every part, loads the weights the config names, then adds LoRA and freezes (in that order: LoRA
        wraps the Linears, so BLIP-2's tensors are loaded into the plain Q-Former first)."""
        super().__init__()
        self.cfg = cfg
        lora_names = [name for name, m in cfg.modalities.items() if m.lora]

        # frozen encoders, and a trainable adapter where an encoder's width differs from its Q-Former's
        self.encoders = nn.ModuleDict(
            {key: ENCODERS.get(entry.name).from_config(encoder_cfgs[key]) for key, entry in cfg.encoders.items()}
        )
        self.qformers = nn.ModuleDict({key: QFormer.from_config(e.config) for key, e in cfg.qformers.items()})
        self.encoder_adapters = nn.ModuleDict()
        for m in cfg.modalities.values():
            width = cfg.qformers[m.qformer].config.encoder_width
            features = self.encoders[m.encoder].num_features
            wanted = features != width or cfg.encoders[m.encoder].width_adapter
            if wanted and m.encoder not in self.encoder_adapters:
                self.encoder_adapters[m.encoder] = nn.Linear(features, width)

        self.llm = build_llm(cfg.llm, lora_names, cfg.lora.llm, random_init=cfg.random_init)
        self.heads = nn.ModuleDict({name: self._build_heads(name) for name in cfg.modalities})
        # the reference's one text projection and temperature for all modalities, or None: each has its own
        contrastive = [name for name, heads in self.heads.items() if heads.vision_proj is not None]  # ITC or ITM on
        width = cfg.qformers[cfg.modalities[contrastive[0]].qformer].config.hidden_size if contrastive else 0
        self.itc_text = ItcTextHead(width, cfg.embed_dim) if cfg.shared_itc_text_head and contrastive else None

        # BLIP-2's own paths kept as loaded (freeze_blip2_pretrain): nothing of theirs trains
        self.frozen_blip2_paths = self._blip2_own_paths() if cfg.freeze_blip2_pretrain else []
        self.blip2_load: Optional[Blip2LoadReport] = None
        if blip2_state is not None:
            self.blip2_load = self.load_blip2_state(blip2_state, where=str(cfg.blip2_checkpoint_path))
        self._add_qformer_adapters()
        self._freeze()

        qformer_tokenizers = {key: build_qformer_tokenizer(e.config.tokenizer_path) for key, e in cfg.qformers.items()}
        for key, tok in qformer_tokenizers.items():
            if len(tok) > cfg.qformers[key].config.vocab_size:
                raise ConfigError(
                    f"model.qformers.{key}: tokenizer has {len(tok)} tokens > config.vocab_size "
                    f"{cfg.qformers[key].config.vocab_size}"
                )
        self.decoder_bos_id = {name: qformer_tokenizers[m.qformer].bos_token_id for name, m in cfg.modalities.items()}
        llm_tokenizer = self.llm.tokenizer.__class__.from_pretrained(cfg.llm.path, local_files_only=True)
        self.text_tokenizer = RegionTextTokenizer(
            {name: qformer_tokenizers[m.qformer] for name, m in cfg.modalities.items()},
            llm_tokenizer,
            cfg.llm.family,
            cfg.max_text_len,
            PromptLayout(llm_tokenizer, cfg.llm.family, cfg.region_token, cfg.num_query_tokens),
            {name: instruction_template(cfg, name) for name in cfg.modalities},
            {name for name, m in cfg.modalities.items() if m.region is not None},
            cfg.llm.bos_target_with_empty_prompt,
        )

    @classmethod
    def check_config(cls, cfg: RegionBLIPConfig) -> None:
        validate(cfg)

    @classmethod
    def modality_inputs(cls, cfg: RegionBLIPConfig) -> dict[str, ItemKeys]:
        return regionblip_config.modality_inputs(cfg)

    @classmethod
    def dataset_instruction(cls, cfg: RegionBLIPConfig, modality: str, task_prompt: Optional[str]) -> str:
        """The template a dataset's items get (checked before anything is built: lavis/common/preflight.py)."""
        return instruction_template(cfg, modality, task_prompt)

    @classmethod
    def frozen_parts(cls, cfg: RegionBLIPConfig) -> list[FrozenPart]:
        return regionblip_config.frozen_parts(cfg)

    @classmethod
    def from_config(cls, cfg: RegionBLIPConfig) -> RegionBLIP:
        validate(cfg)  # every nested block, before any weight is read
        used = without_unused_parts(cfg)  # e.g. the encoder of a removed modality: not built, not checkpointed
        dropped = [f"encoders.{k}" for k in cfg.encoders if k not in used.encoders]
        dropped += [f"qformers.{k}" for k in cfg.qformers if k not in used.qformers]
        if dropped:
            log.info("not built, as no modality uses them: %s", dropped)
        cfg, encoder_cfgs = used, encoder_configs(used)
        if cfg.random_init:  # keep init_from_blip2 flags: they decide what is frozen, as in the real run
            cfg, encoder_cfgs = without_weights(cfg), without_weights(encoder_cfgs)
        blip2_state = read_state_dict(cfg.blip2_checkpoint_path) if cfg.blip2_checkpoint_path else None
        return cls(cfg, encoder_cfgs, blip2_state)

    # ---- construction --------------------------------------------------------------------------------------------
    def _build_heads(self, name: str) -> ModalityHeads:
        m = self.cfg.modalities[name]
        return ModalityHeads(
            num_queries=self.cfg.num_query_tokens,
            width=self.cfg.qformers[m.qformer].config.hidden_size,
            llm_width=self.llm.hidden_size,
            embed_dim=self.cfg.embed_dim,
            region_dim=region_dim(m.region) if m.region else None,
            pafe_hidden=self.cfg.pafe_hidden,
            losses=m.losses,
            own_text_head=not self.cfg.shared_itc_text_head,
        )

    def _add_qformer_adapters(self) -> None:
        for key, entry in self.cfg.qformers.items():
            names = [n for n, m in self.cfg.modalities.items() if m.qformer == key and m.lora]
            if names:
                lora.add_lora_adapters(
                    self.qformers[key], names, self.cfg.lora.qformer, where=f"qformers.{key}", freeze_base=entry.frozen
                )
            elif entry.frozen:
                self.qformers[key].requires_grad_(False)

    def _blip2_own_paths(self) -> list[str]:
        """Modalities that are BLIP-2's own path: their heads come from BLIP-2 (init_from_blip2) and they have no
        region, no adapter of their own and a frozen Q-Former, so with their heads kept as loaded they compute what
        the BLIP-2 file computes. A modality with an adapter is a new one even when it starts from BLIP-2 (point
        clouds; the PaFE-off ablation's region modality, which has `region: null`): it trains."""
        return [
            name for name, m in self.cfg.modalities.items()
            if m.init_from_blip2 and m.region is None and not m.lora and self.cfg.qformers[m.qformer].frozen
        ]

    def _freeze(self) -> None:
        self.encoders.requires_grad_(False)  # BLIP-2's ln_vision included: it is part of the EVA encoder module
        for name in self.frozen_blip2_paths:
            # the queries and LLM projection (its captions), and every ITC / ITM head the file provided (a stage-1
            # file: its zero-shot retrieval stays BLIP-2's); the ITC / ITM heads a stage-2 file lacks would stay
            # random if frozen, so they train, as in the reference RegionBLIP (without a file, random_init: train)
            missing = set(self.blip2_load.missing.get(f"heads.{name}", ())) if self.blip2_load else None
            for key, p in self.heads[name].named_parameters():
                taken = missing is not None and key not in missing
                p.requires_grad_(not (key.startswith(BLIP2_CAPTION_HEADS) or taken))

    @property
    def blip2_report(self) -> dict[str, list[str]]:
        """{part: the BLIP-2 tensors the file lacked}: the summary callers check ({} when no file was loaded)."""
        return self.blip2_load.missing if self.blip2_load else {}

    def checkpoint_mismatch_hint(self, missing: list[str], unexpected: list[str]) -> str:
        hints = []
        if any(k.startswith("itc_text.") for k in missing) and any(".text_proj." in k for k in unexpected):
            hints.append("the checkpoint has an ITC text projection per modality: set model.shared_itc_text_head=false")
        if any(k.startswith("itc_text.") for k in unexpected) and any(".text_proj." in k for k in missing):
            hints.append("the checkpoint has one shared ITC text head: set model.shared_itc_text_head=true")
        frozen_path = [k for k in missing if any(k.startswith(f"heads.{n}.") for n in self.frozen_blip2_paths)]
        if frozen_path:
            hints.append(f"{frozen_path[:4]} are ITC / ITM heads of BLIP-2's image path that the BLIP-2 file lacks: "
                         "they train (as in the reference RegionBLIP), so a checkpoint holds them; one written when "
                         "they stayed frozen at their initial values does not")
        return "; ".join(hints)

    def train(self, mode: bool = True) -> RegionBLIP:
        """Frozen encoders and frozen Q-Formers stay in eval mode (no dropout), as in BLIP-2."""
        super().train(mode)
        self.encoders.eval()
        for key, entry in self.cfg.qformers.items():
            if entry.frozen:
                self.qformers[key].eval()
        return self

    # ---- BLIP-2 weights -------------------------------------------------------------------------------------------
    def load_blip2_state(self, state: dict[str, Tensor], where: str) -> Blip2LoadReport:
        """Load a LAVIS BLIP-2 state dict into the parts marked `init_from_blip2`. A shape mismatch is an error naming
        the key, and so is a path kept frozen by freeze_blip2_pretrain whose queries or LLM projection the file
        lacks (they would stay random, and frozen). Missing, unexpected and unused keys are logged and returned."""
        missing: dict[str, list[str]] = {}
        unexpected: dict[str, list[str]] = {}
        taken: set[str] = set()  # file keys some part consumed
        for key, entry in self.cfg.encoders.items():
            if entry.init_from_blip2:
                part = f"encoders.{key}"
                missing[part], unexpected[part] = self.encoders[key].load_pretrained(state, f"{where} -> {part}")
                taken.update(k for k in state if k.startswith(BLIP2_ENCODER_PREFIXES))
        for key, entry in self.cfg.qformers.items():
            if entry.init_from_blip2:
                part = f"qformers.{key}"
                missing[part], unexpected[part] = self.qformers[key].load_lavis_state_dict(state, f"{where} -> {part}")
                taken.update(k for k in state if k.startswith(BLIP2_QFORMER_PREFIX))

        llm_proj = "opt_proj" if LLMFamily(self.cfg.llm.family) is LLMFamily.opt else "t5_proj"
        # file name -> our name in ModalityHeads; a trailing "." renames a whole module
        renames = {"query_tokens": "queries", f"{llm_proj}.": "llm_proj.", "vision_proj.": "vision_proj.",
                   "text_proj.": "text_proj.", "itm_head.": "itm_head.", "temp": "temp"}

        def matches(key: str, prefix: str) -> bool:
            return key == prefix or (prefix.endswith(".") and key.startswith(prefix))

        for name, m in self.cfg.modalities.items():
            if not m.init_from_blip2:
                continue
            part = f"heads.{name}"
            own = dict(self.heads[name].state_dict())
            mapped, source = {}, {}
            for src, dst in renames.items():
                for k, v in state.items():
                    target = dst + k[len(src):]
                    if matches(k, src) and target in own:
                        mapped[target] = v.reshape(own[target].shape) if k == "temp" else v
                        source[target] = k
            _, unexpected[part] = load_into(self.heads[name], mapped, f"{where} -> {part}")
            taken.update(source.values())
            # the tensors BLIP-2 provides for this modality (PaFE and the regression head never come from it)
            wanted = {k for k in own if any(matches(k, dst) for dst in renames.values())}
            missing[part] = sorted(wanted - mapped.keys())
            if name in self.frozen_blip2_paths:
                self._check_frozen_path(name, missing[part], where, llm_proj)

        if self.itc_text is not None and any(m.init_from_blip2 for m in self.cfg.modalities.values()):
            # shared_itc_text_head: a stage-1 file's text side starts the shared head (which serves every modality,
            # so it trains, as the reference's); a stage-2 file has none
            mapped = {k: v.reshape(()) if k == "temp" else v for k, v in state.items()
                      if k == "temp" or k.startswith("text_proj.")}
            _, unexpected["itc_text"] = load_into(self.itc_text, mapped, f"{where} -> itc_text")
            taken.update(mapped)
            missing["itc_text"] = sorted(set(self.itc_text.state_dict()) - mapped.keys())

        unused: dict[str, list[str]] = {}
        for k in sorted(set(state) - taken):
            unused.setdefault(k.split(".")[0], []).append(k)
        if unused:
            log.warning("%s: %d tensors no part took, by module: %s", where, sum(map(len, unused.values())),
                        {top: len(keys) for top, keys in unused.items()})
        return Blip2LoadReport(missing, unexpected, unused)

    def _check_frozen_path(self, name: str, missing: list[str], where: str, llm_proj: str) -> None:
        """A frozen BLIP-2 path needs BLIP-2's queries and LLM projection from the file (captioning); its ITC / ITM
        heads are not needed for captions, and a stage-2 BLIP-2 file (OPT / FlanT5) lacks them: they train (_freeze)."""
        file_names = {"queries": "query_tokens", "llm_proj.weight": f"{llm_proj}.weight",
                      "llm_proj.bias": f"{llm_proj}.bias"}
        for ours, theirs in file_names.items():
            if ours in missing:
                raise ValueError(
                    f"{where}: modality '{name}' is BLIP-2's own path, kept frozen (freeze_blip2_pretrain), but the "
                    f"file has no '{theirs}' for its {ours}: it would stay random. Use a BLIP-2 file of this LLM "
                    f"family ({self.cfg.llm.family}), or set freeze_blip2_pretrain: false to train it"
                )
        if missing:
            log.info("%s: modality '%s' is BLIP-2's own path; the file lacks its %s (a stage-2 file): they train, "
                     "as in the reference RegionBLIP", where, name, missing)

    # ---- forward ------------------------------------------------------------------------------------------------
    def loss_weights(self, modality: str) -> dict[str, float]:
        return {term: w for term, w in self.cfg.modalities[modality].losses.items() if w > 0}

    def _adapter_scope(self, modality: str) -> contextlib.ExitStack:
        """Only `modality`'s LoRA adapter (or none, for a modality without LoRA) is active inside the scope."""
        m = self.cfg.modalities[modality]
        adapter = modality if m.lora else None
        stack = contextlib.ExitStack()
        stack.enter_context(lora.active_adapter(self.qformers[m.qformer], adapter))
        stack.enter_context(lora.active_adapter(self.llm.model, adapter))
        return stack

    def instruction_template(self, modality: str, task_prompt: Optional[str] = None) -> str:
        """The instruction of `modality`'s samples that bring none (caption datasets): the dataset's task prompt
        (model.task_prompts) or the modality's prompt / prefix, with its region placeholder."""
        return self.dataset_instruction(self.cfg, modality, task_prompt)

    def whole_prompt_first(self, modality: str) -> bool:
        """Whether the whole input's soft prompt precedes the instruction: always for a holistic modality (it is its
        only soft prompt), `global_prompt` for a region modality."""
        m = self.cfg.modalities[modality]
        return m.region is None or bool(m.global_prompt)

    def extract(self, batch: dict[str, Any]) -> QueryFeatures:
        """Steps 1-3; call inside `_adapter_scope(batch["modality"])`. The encoder runs once per image or scene,
        whatever the number of its regions; the Q-Former once for all rows (regions, and whole inputs). A batch
        may hold each image once and `input_index` [B]: the image of every sample (e.g. one sample per region to
        caption, tools/generate_region_captions.py)."""
        name = batch["modality"]
        m = self.cfg.modalities[name]
        encoder_input = batch.get(self.cfg.encoders[m.encoder].input_key)
        # step 1: encode (frozen), or take the encoder's output from the feature cache; then adapt the width to
        # the Q-Former's cross-attention
        if "encoder_tokens" in batch:
            tokens = batch["encoder_tokens"]
        else:
            with torch.no_grad():
                tokens = self.encoders[m.encoder](encoder_input)
        if m.encoder in self.encoder_adapters:
            tokens = self.encoder_adapters[m.encoder](tokens)
        if "input_index" in batch:  # samples sharing an image or scene: it is encoded once, its tokens reused
            tokens = tokens[batch["input_index"]]
            encoder_input = None if encoder_input is None else encoder_input[batch["input_index"]]
        ones = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        heads = self.heads[name]
        if m.region is None:  # one row per sample: the whole input
            queries = heads.query_embeds(tokens.shape[0], None)
            hidden = self.qformers[m.qformer](query_embeds=queries, encoder_hidden_states=tokens,
                                              encoder_attention_mask=ones)
            return QueryFeatures(tokens, ones, queries, hidden)
        # step 2: one row per region: the modality's queries plus PaFE's embedding of the region; a mask region
        # attends only to the tokens under its mask
        counts, sample = region_layout(batch, tokens.shape[0])
        one_each = counts == [1] * tokens.shape[0]  # RegionBLIP's batches: rows are the samples, no gather
        row_tokens = tokens if one_each else tokens[sample]
        row_mask = ones if one_each else ones[sample]
        if has_mask(m.region):
            if encoder_input is None:
                raise ValueError(f"modality '{name}': a {m.region} region needs the batch's "
                                 f"'{self.cfg.encoders[m.encoder].input_key}' to place its mask on the tokens")
            row_mask = self.encoders[m.encoder].region_token_mask(encoder_input, batch["region_mask"], sample).long()
        queries = heads.query_embeds(row_tokens.shape[0], batch["region_geometry"])
        # step 3: the Q-Former with the modality's LoRA, the whole inputs' rows first when the prompt starts with them
        whole_first = self.whole_prompt_first(name)
        all_queries, all_tokens, all_mask = queries, row_tokens, row_mask
        if whole_first:
            all_queries = torch.cat([heads.plain_queries(tokens.shape[0]), queries])
            all_tokens, all_mask = torch.cat([tokens, row_tokens]), torch.cat([ones, row_mask])
        hidden = self.qformers[m.qformer](
            query_embeds=all_queries, encoder_hidden_states=all_tokens, encoder_attention_mask=all_mask
        )
        if not whole_first:
            return QueryFeatures(row_tokens, row_mask, queries, hidden)
        split = tokens.shape[0]
        return QueryFeatures(row_tokens, row_mask, queries, hidden[split:], hidden[:split])

    def llm_inputs(self, name: str, feats: QueryFeatures, prompt: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Step 4's LLM input before the answer: [whole input's soft prompt? | instruction with every region's
        soft prompt at its placeholder]."""
        heads = self.heads[name]
        if self.cfg.modalities[name].region is None:
            region_soft, lead = None, heads.llm_proj(feats.query_outputs)
        else:
            region_soft = heads.llm_proj(feats.query_outputs)
            lead = heads.llm_proj(feats.whole_outputs) if feats.whole_outputs is not None else None
        return self.llm.prompt_inputs(prompt["llm_prompt_ids"], prompt["llm_prompt_mask"],
                                      prompt["llm_region_slots"], region_soft, lead)

    def _batch_size(self, batch: dict[str, Any]) -> int:
        if "input_index" in batch:
            return batch["input_index"].shape[0]
        m = self.cfg.modalities[batch["modality"]]
        inputs = batch["encoder_tokens"] if "encoder_tokens" in batch else batch[self.cfg.encoders[m.encoder].input_key]
        return inputs.shape[0]

    def _check_one_region_each(self, name: str, batch: dict[str, Any], on: dict[str, float]) -> None:
        """ITC, ITM and ITG pair each caption with one region; samples with several regions train the LLM (and REG,
        per region) only."""
        pairing = sorted(set(on) & {"itc", "itm", "itg"})
        if pairing and self.cfg.modalities[name].region is not None:
            counts, _ = region_layout(batch, self._batch_size(batch))
            if counts != [1] * len(counts):
                raise ValueError(f"modality '{name}': losses {pairing} pair one caption with one region, but this "
                                 f"batch's samples have {sorted(set(counts))} regions; give multi-region datasets a "
                                 "modality whose losses are llm (and reg) only")

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        name = batch["modality"]
        on = self.loss_weights(name)
        if name in self.frozen_blip2_paths and self.training and torch.is_grad_enabled() \
                and not self._trains_anything(name, on):
            raise ValueError(
                f"modality '{name}' is BLIP-2's own path, frozen by freeze_blip2_pretrain: none of its enabled "
                f"losses {sorted(on)} trains a tensor. Evaluate it, train other modalities, or set "
                "freeze_blip2_pretrain: false"
            )
        heads = self.heads[name]
        heads.clamp_temperature()
        if self.itc_text is not None:
            self.itc_text.clamp_temperature()
        self._check_one_region_each(name, batch, on)
        with self._adapter_scope(name):
            feats = self.extract(batch)
            # step 4: the enabled loss terms
            losses: dict[str, Tensor] = {}
            if "itc" in on or "itm" in on:
                itc, sims = self._contrastive(name, feats, batch)
                if "itc" in on:
                    losses["itc"] = itc
                if "itm" in on:
                    losses["itm"] = self._matching(name, feats, batch, sims)
            if "itg" in on:
                losses["itg"] = self._captioning(name, feats, batch)
            if "llm" in on:
                embeds, mask = self.llm_inputs(name, feats, batch)
                losses["llm"] = self.llm.loss(embeds, mask, batch["llm_target_ids"], batch["llm_target_mask"])
            if "reg" in on:
                prediction = heads.reg_head(feats.query_outputs.mean(dim=1))
                losses["reg"] = L.regression_loss(prediction, batch["region_geometry"])
        return ModelOutput(losses=losses, extras={"query_outputs": feats.query_outputs.detach()})

    def _trains_anything(self, name: str, on: dict[str, float]) -> bool:
        """Whether an enabled loss of a frozen BLIP-2 path reaches a trainable tensor: its ITC / ITM heads (those its
        file lacked) or the shared ITC text head. Its captioning losses reach nothing trainable."""
        heads = [p for key, p in self.heads[name].named_parameters() if not key.startswith(BLIP2_CAPTION_HEADS)]
        if self.itc_text is not None:
            heads += list(self.itc_text.parameters())
        return bool({"itc", "itm"} & on.keys()) and any(p.requires_grad for p in heads)

    def _text_head(self, name: str) -> tuple[nn.Linear, Tensor]:
        """(text projection, temperature) of `name`'s ITC: the shared ones or its own."""
        owner = self.itc_text if self.itc_text is not None else self.heads[name]
        return owner.text_proj, owner.temp

    def _contrastive(self, name: str, feats: QueryFeatures, batch: dict[str, Any]) -> tuple[Tensor, tuple]:
        heads, qformer = self.heads[name], self.qformers[self.cfg.modalities[name].qformer]
        text_proj, temp = self._text_head(name)
        query_feats = F.normalize(heads.vision_proj(feats.query_outputs), dim=-1)
        text_hidden = qformer(input_ids=batch["qformer_text_ids"], attention_mask=batch["qformer_text_mask"])
        text_feat = F.normalize(text_proj(text_hidden[:, 0]), dim=-1)
        loss, sim_i2t, sim_t2i, targets = L.contrastive_loss(
            query_feats, text_feat, temp, self.cfg.itc_label_smoothing
        )
        return loss, (sim_i2t, sim_t2i, targets)

    def _matching(self, name: str, feats: QueryFeatures, batch: dict[str, Any], sims: tuple) -> Tensor:
        """ITM on (positive, negative sample for each text, negative text for each sample); negatives are drawn
        from the gathered batch by ITC similarity."""
        sim_i2t, sim_t2i, targets = sims
        if sim_t2i.shape[1] < 2:  # a lone sample (a last batch of one) has no negative: no ITM term this step
            return feats.query_outputs.new_zeros(())
        qformer = self.qformers[self.cfg.modalities[name].qformer]
        ids, mask = batch["qformer_text_ids"], batch["qformer_text_mask"]
        if L._world() > 1:  # texts are padded per rank: pad to the common maximum before gathering
            pad = self.cfg.max_text_len - ids.shape[1]
            ids, mask = F.pad(ids, (0, pad)), F.pad(mask, (0, pad))
        negative_sample = L.sample_hard_negatives(sim_t2i, targets)
        negative_text = L.sample_hard_negatives(sim_i2t, targets)
        tokens_all, _ = L.gather_batch(feats.encoder_tokens)
        if has_mask(self.cfg.modalities[name].region):  # a box's rows see every token: no collective for that
            token_mask_all, _ = L.gather_batch(feats.encoder_mask)
        else:
            token_mask_all = feats.encoder_mask.new_ones(tokens_all.shape[:2])
        queries_all, _ = L.gather_batch(feats.query_embeds)
        ids_all, _ = L.gather_batch(ids)
        mask_all, _ = L.gather_batch(mask)
        hidden = qformer(
            query_embeds=torch.cat([feats.query_embeds, queries_all[negative_sample], feats.query_embeds]),
            input_ids=torch.cat([ids, ids, ids_all[negative_text]]),
            attention_mask=torch.cat([mask, mask, mask_all[negative_text]]),
            encoder_hidden_states=torch.cat([feats.encoder_tokens, tokens_all[negative_sample], feats.encoder_tokens]),
            encoder_attention_mask=torch.cat([feats.encoder_mask, token_mask_all[negative_sample], feats.encoder_mask]),
            text_mode="bidirectional",
        )
        logits = self.heads[name].itm_head(hidden[:, : feats.query_embeds.shape[1]]).mean(dim=1)
        return L.matching_loss(logits, ids.shape[0])

    def _captioning(self, name: str, feats: QueryFeatures, batch: dict[str, Any]) -> Tensor:
        """ITG: the Q-Former decodes the caption ([DEC] first) attending to the queries (which see the encoder)."""
        qformer = self.qformers[self.cfg.modalities[name].qformer]
        decoder_ids = batch["qformer_text_ids"].clone()
        decoder_ids[:, 0] = self.decoder_bos_id[name]
        hidden = qformer(
            query_embeds=feats.query_embeds,
            input_ids=decoder_ids,
            attention_mask=batch["qformer_text_mask"],
            encoder_hidden_states=feats.encoder_tokens,
            encoder_attention_mask=feats.encoder_mask,
            text_mode="causal",
        )
        logits = qformer.lm_logits(hidden[:, feats.query_embeds.shape[1]:])
        return L.caption_loss(logits, decoder_ids, batch["qformer_text_mask"])

    # ---- zero-shot features (evaluation) ------------------------------------------------------------------------
    def _itc_heads(self, modality: str) -> ModalityHeads:
        heads = self.heads[modality]
        if heads.vision_proj is None:
            raise ValueError(f"modality '{modality}' has no ITC projections (enable its itc or itm loss)")
        return heads

    @torch.no_grad()
    def query_features(self, batch: dict[str, Any]) -> Tensor:
        """[B, Q, E]: the normalised ITC embedding of every query output, as the ITC loss sees them."""
        name = batch["modality"]
        heads = self._itc_heads(name)
        with self._adapter_scope(name):
            return F.normalize(heads.vision_proj(self.extract(batch).query_outputs), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str], modality: str) -> Tensor:
        """[T, E]: the normalised ITC embedding of each text's [CLS] (the modality's Q-Former and LoRA)."""
        self._itc_heads(modality)
        text_proj, _ = self._text_head(modality)
        qformer = self.qformers[self.cfg.modalities[modality].qformer]
        device = text_proj.weight.device
        tokens = self.text_tokenizer(list(texts), modality)
        with self._adapter_scope(modality):
            hidden = qformer(input_ids=tokens["qformer_text_ids"].to(device),
                             attention_mask=tokens["qformer_text_mask"].to(device))
            return F.normalize(text_proj(hidden[:, 0]), dim=-1)

    # ---- generation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict[str, Any], instructions: Optional[list[str]] = None, **overrides: Any) -> list[str]:
        """Texts for a single-modality batch: steps 1-3, then the LLM's beam search. `instructions`: one per sample
        (e.g. a question; with one placeholder per region of the sample), in place of the batch's `instruction` or
        the modality's template. `overrides` are fields of `generation` (num_beams, max_new_tokens, min_new_tokens,
        repetition_penalty, length_penalty)."""
        return self.llm.decode(self.generate_ids(batch, instructions, **overrides))

    def generation_prompt(self, batch: dict[str, Any], instructions: Optional[list[str]] = None) -> dict[str, Tensor]:
        """The batch's instructions laid out for generation (OPT's </s> in the prompt), on the LLM's device."""
        name = batch["modality"]
        m = self.cfg.modalities[name]
        size = self._batch_size(batch)
        if instructions is None:
            instructions = batch.get("instruction") or [self.instruction_template(name)] * size
        if len(instructions) != size:
            raise ValueError(f"{len(instructions)} instructions for a batch of {size} samples")
        counts = region_layout(batch, size)[0] if m.region else None
        prompt, _ = self.text_tokenizer.prompt(list(instructions), name, counts, bos_in_prompt=True)
        device = self.llm.model.get_input_embeddings().weight.device  # one copy per generate call, not per step
        return {k: v.to(device) for k, v in prompt.items()}

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, Any], instructions: Optional[list[str]] = None,
                     **overrides: Any) -> Tensor:
        """As `generate`, the new token ids [B, L] before decoding."""
        gen = dataclasses.replace(self.cfg.generation, **overrides)
        name = batch["modality"]
        prompt = self.generation_prompt(batch, instructions)
        with self._adapter_scope(name):
            feats = self.extract(batch)
            embeds, mask = self.llm_inputs(name, feats, prompt)
            return self.llm.generate_ids(embeds, mask, gen)
