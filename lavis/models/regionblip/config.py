"""RegionBLIP's configuration: what YAML fills, with every default in one place, and the checks that run before any
weight is read. Modalities are entries of `modalities`; the model code never names one."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Dict, Optional

from lavis.common.config import is_weight_path
from lavis.common.config_schema import ConfigError, config_from_dict
from lavis.common.registry import ENCODERS, REGION_KINDS, Registry, RegistryError
from lavis.datasets.base import ItemKeys
from lavis.models.base import FrozenPart
from lavis.models.llm import GenerationConfig, LLMConfig, LLMFamily
from lavis.models.lora import LoraSettings
from lavis.models.qformer import QFormerConfig

LOSS_TERMS = ("itc", "itm", "itg", "llm", "reg")


@dataclass
class EncoderEntry:
    name: str = "???"  # a registered encoder (lavis.common.registry.ENCODERS)
    input_key: str = "???"  # the batch key it reads, e.g. image or points
    params: Dict[str, Any] = field(default_factory=dict)  # fields of the encoder's Config
    init_from_blip2: bool = False  # load visual_encoder.* / ln_vision.* of blip2_checkpoint_path
    # a trainable Linear from the encoder's width to its Q-Formers' encoder_width: where the widths differ (false),
    # or always (true), as the reference's `pc_adapter`, which a release holds even at equal widths
    width_adapter: bool = False
    # The encoder is frozen: without a weight file (params.checkpoint_path, or init_from_blip2) a run refuses to
    # start unless this says random weights are meant (tiny debug flavours); a file, when named, is still loaded
    allow_random_weights: bool = False


@dataclass
class QFormerEntry:
    config: QFormerConfig = field(default_factory=QFormerConfig)
    frozen: bool = True  # base weights; the LoRA adapters always train
    init_from_blip2: bool = False  # load Qformer.* of blip2_checkpoint_path
    allow_random_weights: bool = False  # frozen without bert_init_path / checkpoint_path / init_from_blip2: allowed


@dataclass
class LoraConfigs:
    qformer: LoraSettings = field(default_factory=LoraSettings)
    llm: LoraSettings = field(default_factory=lambda: LoraSettings(target_modules=["q_proj", "v_proj"]))


@dataclass
class ModalityConfig:
    encoder: str = "???"  # a key of `encoders`
    qformer: str = "???"  # a key of `qformers`
    region: Optional[str] = None  # a registered region kind; None: holistic (no PaFE, no regression head)
    losses: Dict[str, float] = field(default_factory=dict)  # term -> weight, terms among LOSS_TERMS; 0 = off
    # The instruction of samples that bring none (caption datasets without a task_prompt), region placeholders
    # (model.region_token) included; a region modality's template without one has its region first (RegionBLIP's
    # layout: soft prompt, then text). OPT takes `prompt`, FlanT5 `prefix` (e.g. "a photo of").
    prompt: str = ""
    prefix: str = ""
    # A region modality: the whole image's (scene's) soft prompt precedes the instruction, as context for its
    # regions (one more Q-Former row per sample). null: off; a holistic modality always leads with it.
    global_prompt: Optional[bool] = None
    lora: bool = True  # own LoRA adapter in the Q-Former and the LLM
    init_from_blip2: bool = False  # copy BLIP-2's query tokens, LLM / ITC projections, ITM head and temperature


@dataclass
class RegionBLIPConfig:
    encoders: Dict[str, EncoderEntry] = field(default_factory=dict)
    qformers: Dict[str, QFormerEntry] = field(default_factory=dict)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoraConfigs = field(default_factory=LoraConfigs)
    modalities: Dict[str, ModalityConfig] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    num_query_tokens: int = 32
    pafe_hidden: int = 128
    embed_dim: int = 256  # ITC projection width
    max_text_len: int = 32  # tokens, for both the Q-Former text and the LLM target
    # The placeholder that stands for a region in an instruction; each becomes num_query_tokens slots holding the
    # region's soft prompt (lavis/models/prompt_layout.py)
    region_token: str = "<region>"
    # Task-guided instructions (RegionGPT), by name; a dataset picks one with its `task_prompt` (e.g. brief_caption:
    # "<region> A short description:"), otherwise its modality's prompt / prefix applies
    task_prompts: Dict[str, str] = field(default_factory=dict)
    itc_label_smoothing: float = 0.1
    # One ITC text projection and temperature shared by every modality with ITC / ITM (checkpoint keys
    # `itc_text.*`), as the reference RegionBLIP (`stage1_proj_text`, `temp`); false: each modality has its own
    shared_itc_text_head: bool = False
    # Keep BLIP-2's own path as loaded, so it stays BLIP-2's function: the queries and LLM projection of each
    # modality with init_from_blip2, no region, lora: false and a frozen Q-Former, and its ITC / ITM heads where the
    # file holds them (a stage-1 file); those a stage-2 file lacks train, as in the reference. The encoders
    # (ln_vision included) and frozen Q-Formers are frozen regardless.
    freeze_blip2_pretrain: bool = True
    blip2_checkpoint_path: Optional[str] = None  # a LAVIS BLIP-2 file: {"model": state dict}, read weights-only
    # Random weights everywhere: no checkpoint is read and weight paths need not exist; the LLM is built from the
    # config.json in llm.path (tokenizers are still read). For benchmarks and tests at any size.
    random_init: bool = False


def _unknown(registry: Registry, name: str) -> str:
    """The registry's own message for an unknown name (with its suggestion and the registered names)."""
    try:
        registry.get(name)
    except RegistryError as e:
        return str(e)
    return ""


def _check_refs(cfg: RegionBLIPConfig) -> None:
    if not cfg.modalities:
        raise ConfigError("model.modalities: at least one modality is needed (all were removed, or none defined)",
                          key="model.modalities")
    for name, m in cfg.modalities.items():
        where = f"model.modalities.{name}"
        if m.encoder not in cfg.encoders:
            raise ConfigError(f"{where}.encoder '{m.encoder}' is not a key of model.encoders ({list(cfg.encoders)})",
                              key=f"{where}.encoder")
        if m.qformer not in cfg.qformers:
            raise ConfigError(f"{where}.qformer '{m.qformer}' is not a key of model.qformers ({list(cfg.qformers)})",
                              key=f"{where}.qformer")
        if m.region is not None and m.region not in REGION_KINDS:
            raise ConfigError(f"{where}.region: {_unknown(REGION_KINDS, m.region)}. Use null for a holistic "
                              "modality; a new kind is one register_region_kind call in a run.imports module",
                              key=f"{where}.region")
        unknown = sorted(set(m.losses) - set(LOSS_TERMS))
        if unknown:
            raise ConfigError(f"{where}.losses: unknown term(s) {unknown}; terms are {list(LOSS_TERMS)}",
                              key=f"{where}.losses")
        if any(w < 0 for w in m.losses.values()):
            raise ConfigError(f"{where}.losses: weights must be >= 0, got {m.losses}", key=f"{where}.losses")
        if m.losses.get("reg", 0) > 0 and m.region is None:
            raise ConfigError(f"{where}.losses.reg > 0 needs a region kind (region: null has nothing to regress)",
                              key=f"{where}.losses.reg")
        if (m.losses.get("llm", 0) > 0 or m.lora) and not cfg.llm.path:
            raise ConfigError("model.llm.path is not set", key="model.llm.path")
        family = LLMFamily(cfg.llm.family)
        if family is LLMFamily.opt and m.prefix:
            raise ConfigError(f"{where}.prefix is for llm.family t5; OPT takes `prompt`", key=f"{where}.prefix")
        if family is LLMFamily.t5 and m.prompt:
            raise ConfigError(f"{where}.prompt is for llm.family opt; FlanT5 takes `prefix`", key=f"{where}.prompt")
    if not cfg.region_token.strip():
        raise ConfigError("model.region_token must not be empty", key="model.region_token")
    for name, m in cfg.modalities.items():
        if m.region is None and m.global_prompt is False:
            raise ConfigError(f"model.modalities.{name}.global_prompt: false leaves a holistic modality (region: "
                              "null) without any soft prompt; drop the setting", key=f"model.modalities.{name}")
        instruction_template(cfg, name)
    for task in cfg.task_prompts:
        for name in cfg.modalities:
            _template_check(cfg, name, cfg.task_prompts[task], f"model.task_prompts.{task}", name_only=True)
    if cfg.llm.bos_target_with_empty_prompt and LLMFamily(cfg.llm.family) is not LLMFamily.opt:
        raise ConfigError("model.llm.bos_target_with_empty_prompt is for llm.family opt (T5 has no leading </s>)",
                          key="model.llm.bos_target_with_empty_prompt")


def _template_check(cfg: RegionBLIPConfig, modality: str, text: str, key: str, name_only: bool = False) -> str:
    """`text` as `modality`'s instruction for one-region (or no-region) samples: a holistic modality has no region
    to place; a region modality's one region goes where its placeholder is, or first. `name_only`: only the
    placeholder count beyond one is checked (a task prompt may serve either kind of modality)."""
    found = text.count(cfg.region_token)
    region = cfg.modalities[modality].region
    if found > 1:
        raise ConfigError(f"{key}: {found} '{cfg.region_token}' placeholders, but caption samples have one region; "
                          "instructions over several regions come with their samples (instruction datasets)", key=key)
    if name_only:
        return text
    if region is None and found:
        raise ConfigError(f"{key}: modality '{modality}' has no region (region: null), so its instruction cannot "
                          f"hold '{cfg.region_token}'", key=key)
    return text if found or region is None else cfg.region_token + text


def instruction_template(cfg: RegionBLIPConfig, modality: str, task_prompt: Optional[str] = None) -> str:
    """The instruction given to `modality`'s samples that bring none: the named task prompt, else the modality's
    prompt (OPT) or prefix (T5); ConfigError naming the key when it does not fit the modality."""
    if task_prompt is None:
        m = cfg.modalities[modality]
        field_name = "prompt" if LLMFamily(cfg.llm.family) is LLMFamily.opt else "prefix"
        return _template_check(cfg, modality, getattr(m, field_name), f"model.modalities.{modality}.{field_name}")
    if task_prompt not in cfg.task_prompts:
        raise ConfigError(f"task_prompt '{task_prompt}' is not a key of model.task_prompts "
                          f"({sorted(cfg.task_prompts)})", key="model.task_prompts")
    return _template_check(cfg, modality, cfg.task_prompts[task_prompt], f"model.task_prompts.{task_prompt}")


def _check_qformers(cfg: RegionBLIPConfig) -> None:
    for key, entry in cfg.qformers.items():
        if not entry.config.tokenizer_path:
            raise ConfigError(f"model.qformers.{key}.config.tokenizer_path is not set (a BERT tokenizer directory)",
                              key=f"model.qformers.{key}.config.tokenizer_path")


def _check_widths(cfg: RegionBLIPConfig) -> None:
    """All Q-Formers an encoder feeds must share one width, so one adapter per encoder suffices; a shared ITC text
    head needs one Q-Former width."""
    if cfg.shared_itc_text_head:
        hidden = {cfg.qformers[m.qformer].config.hidden_size for m in cfg.modalities.values()}
        if len(hidden) > 1:
            raise ConfigError(f"model.shared_itc_text_head: the modalities' Q-Formers have different hidden_size "
                              f"{sorted(hidden)}; one text projection cannot serve them (set it false)",
                              key="model.shared_itc_text_head")
    widths: dict[str, set[int]] = {}
    for m in cfg.modalities.values():
        widths.setdefault(m.encoder, set()).add(cfg.qformers[m.qformer].config.encoder_width)
    for encoder, found in widths.items():
        if len(found) > 1:
            raise ConfigError(f"model.encoders.{encoder} feeds Q-Formers of different encoder_width {sorted(found)}",
                              key=f"model.encoders.{encoder}")
    if cfg.blip2_checkpoint_path is None:
        blip2_users = [k for k, e in {**cfg.encoders, **cfg.qformers}.items() if e.init_from_blip2]
        blip2_users += [k for k, m in cfg.modalities.items() if m.init_from_blip2]
        if blip2_users:
            raise ConfigError(f"init_from_blip2 is set for {blip2_users} but model.blip2_checkpoint_path is not set",
                              key="model.blip2_checkpoint_path")


def encoder_configs(cfg: RegionBLIPConfig) -> dict[str, Any]:
    """Each encoder's typed Config, validated against its registered class (fails naming the YAML block)."""
    configs = {}
    for key, entry in cfg.encoders.items():
        where = f"model.encoders.{key}"
        if entry.name not in ENCODERS:
            raise ConfigError(f"{where}.name: {_unknown(ENCODERS, entry.name)}", key=f"{where}.name")
        try:
            configs[key] = config_from_dict(ENCODERS.get(entry.name).Config, entry.params, f"{where}.params")
        except ConfigError as e:
            raise ConfigError(str(e), key=f"{where}.params") from None
    return configs


def without_unused_parts(cfg: RegionBLIPConfig) -> RegionBLIPConfig:
    """A copy without the encoders and Q-Formers no modality uses (e.g. after `model.modalities.<name>: null`):
    they are neither built, read nor checkpointed."""
    encoders = {m.encoder for m in cfg.modalities.values()}
    qformers = {m.qformer for m in cfg.modalities.values()}
    return replace(cfg, encoders={k: e for k, e in cfg.encoders.items() if k in encoders},
                   qformers={k: q for k, q in cfg.qformers.items() if k in qformers})


def modality_inputs(cfg: RegionBLIPConfig) -> dict[str, ItemKeys]:
    """What each modality reads from its items: its encoder's input key and its region kind's geometry length."""
    return {name: ItemKeys(cfg.encoders[m.encoder].input_key,
                           REGION_KINDS.get(m.region).dim if m.region is not None else None,
                           m.region is not None and REGION_KINDS.get(m.region).has_mask)
            for name, m in cfg.modalities.items()}


def frozen_parts(cfg: RegionBLIPConfig) -> list[FrozenPart]:
    """Every frozen part a run uses, with the key naming its weights. `random_init` makes every part random on
    purpose; a part's `allow_random_weights` that part."""
    cfg = without_unused_parts(cfg)
    blip2 = "model.blip2_checkpoint_path" if cfg.blip2_checkpoint_path else None
    all_random = "model.random_init" if cfg.random_init else None
    parts = []
    for key, entry in cfg.encoders.items():
        where = f"model.encoders.{key}"
        weights = (f"{where}.params.checkpoint_path" if entry.params.get("checkpoint_path") else
                   blip2 if entry.init_from_blip2 else None)
        allowed = f"{where}.allow_random_weights" if entry.allow_random_weights else all_random
        fix = (f"set {where}.params.checkpoint_path (or {where}.init_from_blip2=true with model.blip2_checkpoint_path),"
               f" or {where}.allow_random_weights=true to keep it random knowingly")
        parts.append(FrozenPart(where, None if cfg.random_init else weights, allowed, fix))
    for key, entry in cfg.qformers.items():
        if not entry.frozen:
            continue
        where = f"model.qformers.{key}"
        weights = (f"{where}.config.checkpoint_path" if entry.config.checkpoint_path else
                   blip2 if entry.init_from_blip2 else
                   f"{where}.config.bert_init_path" if entry.config.bert_init_path else None)
        allowed = f"{where}.allow_random_weights" if entry.allow_random_weights else all_random
        fix = (f"set {where}.init_from_blip2=true with model.blip2_checkpoint_path (or {where}.config.checkpoint_path"
               f" / bert_init_path), set {where}.frozen=false to train it, or {where}.allow_random_weights=true")
        parts.append(FrozenPart(where, None if cfg.random_init else weights, allowed, fix))
    parts.append(FrozenPart("model.llm", None if cfg.random_init else "model.llm.path", all_random,
                            "set model.llm.path"))
    return parts


def without_weights(obj: Any) -> Any:
    """A copy of a config (dataclass or mapping, recursively) with every weight path (`is_weight_path`) unset:
    what `random_init` builds from."""
    if is_dataclass(obj):
        changes = {f.name: None if is_weight_path(f.name) else without_weights(getattr(obj, f.name))
                   for f in fields(obj)}
        return replace(obj, **changes)
    if isinstance(obj, dict):
        return {k: without_weights(v) for k, v in obj.items() if not is_weight_path(str(k))}
    return obj


def validate(cfg: RegionBLIPConfig) -> dict[str, Any]:
    """Every cross-reference and nested block; returns the encoder configs. Runs before any weight is read."""
    _check_refs(cfg)
    _check_qformers(cfg)
    _check_widths(cfg)
    if cfg.num_query_tokens <= 0:
        raise ConfigError("model.num_query_tokens must be positive")
    return encoder_configs(cfg)
