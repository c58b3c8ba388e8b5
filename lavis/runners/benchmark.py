"""Training-step and generation throughput of a configured model at its configured size, on synthetic batches.

The model is built with random weights (`model.random_init`), batches of each modality are made up (random images /
points / boxes, random captions of realistic length through the model's own `text_tokenizer`), and train steps run
as the runner runs them (task.train_step, backward, AdamW over the trainable tensors, bf16 autocast on GPU).
Per modality: samples/s; the step split into data, encoder / Q-Former / LLM forward (timed by forward hooks, with
CUDA events on GPU), the rest of the forward, backward and optimizer; peak memory; model FLOPs per sample
(torch.utils.flop_counter on one step: forward + backward, the frozen encoder's forward included) and MFU against
the device's dense peak; caption generation samples/s. A dataset with `feature_cache_dir` makes its modality's
batches carry `encoder_tokens` read from a feature store, as the feature cache does in training.

`naive=True` runs the same model without the optimisations that have a switch: no feature cache, the frozen encoder
one sample at a time, fp32 (no autocast, fp32 LLM weights). `find_max_batch` searches the largest per-GPU batch that
trains without running out of CUDA memory.
"""

from __future__ import annotations

import contextlib
import gc
import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lavis.common.compile import apply_run_compile
from lavis.common.config import ResolvedConfig, load_config
from lavis.common.metric_log import peak_memory_mb
from lavis.common.optim import build_optimizer
from lavis.common.registry import MODELS, TASKS
from lavis.datasets.feature_cache import FeatureStore, ShardWriter, deterministic_processor, start_folder
from lavis.datasets.loaders import move_to
from lavis.runners.setup import autocast, autocast_dtype

# Dense (no sparsity) tensor-core peaks in TFLOP/s: (bf16/fp16, tf32). Matched in order against the device name.
PEAK_TFLOPS = (
    ("H100 PCIe", (756.0, 378.0)),
    ("H100 NVL", (835.0, 418.0)),
    ("H100", (989.4, 494.7)),  # SXM
    ("H200", (989.4, 494.7)),
    ("A100", (312.0, 156.0)),
    ("RTX A6000", (154.8, 77.4)),
    ("A6000", (154.8, 77.4)),
)
PARTS = ("data", "encoder", "qformer", "llm", "other_fwd", "backward", "optimizer")
WORDS = ("a the man woman dog cat red blue small large chair table on in of with next to left right sitting "
         "standing near wooden white black car street tree window room bed sofa behind front two people").split()


def peak_tflops(device: torch.device, precision: Optional[torch.dtype]) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, (half, tf32) in PEAK_TFLOPS:
        if pattern in name:
            return half if precision in (torch.bfloat16, torch.float16) else tf32
    return None


@dataclass
class ModalityResult:
    modality: str
    batch_size: int
    cached: bool
    samples_per_s: float
    step_ms: float
    parts_ms: dict[str, float]
    peak_mem_mb: float
    flops_per_sample: float
    mfu: Optional[float]
    generate_samples_per_s: Optional[float]
    # the loss of every train step in order (warm-up, FLOP-counted, then the timed ones): naive and optimised paths
    # of the same seed must agree on them
    losses: list[float] = field(default_factory=list)


# ---- timing --------------------------------------------------------------------------------------------------
class Clock:
    """Marks on the device timeline: CUDA events on GPU (no sync inside the step), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1000.0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class PartTimer:
    """Forward time of named submodules, from pre/post forward hooks (every call within a step is summed)."""

    def __init__(self, clock: Clock, modules: dict[str, nn.Module]):
        self.clock = clock
        self.spans: dict[str, list[tuple[Any, Any]]] = {name: [] for name in modules}
        self._open: dict[str, list[Any]] = {name: [] for name in modules}
        self.handles = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str) -> Callable:
        def hook(module, args):
            self._open[name].append(self.clock.mark())
        return hook

    def _post(self, name: str) -> Callable:
        def hook(module, args, output):
            self.spans[name].append((self._open[name].pop(), self.clock.mark()))
        return hook

    def collect(self) -> dict[str, float]:
        """Milliseconds per part since the last collect (call after Clock.sync)."""
        out = {name: sum(self.clock.ms(a, b) for a, b in spans) for name, spans in self.spans.items()}
        for spans in self.spans.values():
            spans.clear()
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


# ---- synthetic batches ---------------------------------------------------------------------------------------
def random_captions(n: int, gen: torch.Generator, min_words: int = 8, max_words: int = 16) -> list[str]:
    """Captions of COCO-like length (8-16 words; COCO averages about 10)."""
    lengths = torch.randint(min_words, max_words + 1, (n,), generator=gen).tolist()
    picks = torch.randint(0, len(WORDS), (sum(lengths),), generator=gen).tolist()
    out, at = [], 0
    for length in lengths:
        out.append(" ".join(WORDS[i] for i in picks[at:at + length]))
        at += length
    return out


@dataclass
class ModalityInputs:
    """How to make one modality's batch: the encoder input's per-sample shape, or a feature store to read."""

    modality: str
    input_key: str
    input_shape: tuple[int, ...]
    region_dim: Optional[int]
    store: Optional[FeatureStore] = None
    store_ids: list[str] = field(default_factory=list)


def _processor_of(cfg: ResolvedConfig, modality: str) -> tuple[Optional[str], Any, Any]:
    """(dataset name, builder, train processor config) of the first training dataset of `modality`."""
    for name, ds in cfg.datasets.items():
        if ds.modality == modality:
            builder = cfg.builder_of(name)(ds)
            split = ds.train_split or ds.eval_split
            if hasattr(builder, "input_processor_config") and split:
                return name, builder, builder.input_processor_config(split)[1]
            return name, builder, None
    return None, None, None


def input_shape(model: nn.Module, cfg: ResolvedConfig, modality: str) -> tuple[str, tuple[int, ...]]:
    """(input key, per-sample shape) of a modality's encoder input: the dataset's processor decides the size
    (image_size, num_points), the encoder the channels."""
    m = model.cfg.modalities[modality]
    entry, encoder = model.cfg.encoders[m.encoder], model.encoders[m.encoder]
    _, _, processor = _processor_of(cfg, modality)
    if hasattr(encoder, "img_size"):
        size = getattr(processor, "image_size", None) or encoder.img_size
        return entry.input_key, (3, size, size)
    if hasattr(encoder, "in_channels"):
        points = getattr(processor, "num_points", None) or 8192
        return entry.input_key, (points, encoder.in_channels)
    raise ValueError(f"benchmark: cannot make a synthetic input for encoder '{m.encoder}' ({type(encoder).__name__})")


def synthetic_batch(model: nn.Module, spec: ModalityInputs, batch_size: int, gen: torch.Generator) -> dict:
    texts = random_captions(batch_size, gen)
    batch: dict[str, Any] = {"modality": spec.modality, "text_input": texts,
                             "sample_ids": [str(i) for i in range(batch_size)]}
    if spec.store is not None:
        picks = torch.randint(0, len(spec.store_ids), (batch_size,), generator=gen).tolist()
        batch["encoder_tokens"] = torch.stack([spec.store.lookup(spec.store_ids[i])[0] for i in picks])
    else:
        batch[spec.input_key] = torch.randn(batch_size, *spec.input_shape, generator=gen)
    if spec.region_dim:
        lo, hi = torch.rand(2, batch_size, spec.region_dim, generator=gen).sort(dim=0).values
        batch["region_geometry"] = torch.where(torch.arange(spec.region_dim) % 4 < 2, lo, hi)
    batch.update(model.text_tokenizer(texts, spec.modality))
    return batch


def _synthetic_store(model: nn.Module, spec: ModalityInputs, folder: Path, rows: int, device: torch.device,
                     dtype: str) -> FeatureStore:
    """A feature store of `rows` random rows shaped like the encoder's output (found by one forward)."""
    m = model.cfg.modalities[spec.modality]
    with torch.no_grad():
        one = model.encoders[m.encoder](torch.randn(1, *spec.input_shape, device=device))
    start_folder(folder, {"synthetic": True}, world_size=1)
    writer = ShardWriter(folder, 0, 1, dtype, capacity=rows)
    writer.add_rows([str(i) for i in range(rows)], torch.randn(rows, *one.shape[1:]))
    writer.close()
    return FeatureStore(folder, f"<synthetic {spec.modality}>")


def modality_inputs(model: nn.Module, cfg: ResolvedConfig, modality: str, cache_root: Path, batch_size: int,
                    device: torch.device, use_cache: bool = True) -> ModalityInputs:
    """How to make `modality`'s batches; with `use_cache` (and the dataset's `feature_cache_dir`) from a store."""
    from lavis.models.regionblip.region import region_dim

    m = model.cfg.modalities[modality]
    input_key, shape = input_shape(model, cfg, modality)
    spec = ModalityInputs(modality, input_key, shape, region_dim(m.region) if m.region else None)
    name, builder, _ = _processor_of(cfg, modality)
    if use_cache and name is not None and cfg.datasets[name].feature_cache_dir:
        ds = cfg.datasets[name]
        deterministic_processor(builder, name, ds.train_split or ds.eval_split)  # refuse as training would
        rows = 4 * batch_size
        spec.store = _synthetic_store(model, spec, cache_root / modality, rows, device, ds.feature_cache_dtype)
        spec.store_ids = [str(i) for i in range(rows)]
    return spec


# ---- one step ------------------------------------------------------------------------------------------------
def train_step(model: nn.Module, task: Any, optimizer: torch.optim.Optimizer, batch: dict,
               amp_dtype: Optional[torch.dtype], clock: Clock, marks: Optional[dict] = None) -> torch.Tensor:
    """Forward, backward, optimizer step: the runner's step without accumulation, clipping or logging."""
    marks = marks if marks is not None else {}
    marks["fwd0"] = clock.mark()
    with autocast(amp_dtype):
        loss, _ = task.train_step(model, batch)
    marks["bwd0"] = clock.mark()
    loss.backward()
    marks["opt0"] = clock.mark()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    marks["end"] = clock.mark()
    return loss


def count_step_flops(model: nn.Module, task: Any, optimizer: torch.optim.Optimizer, batch: dict,
                     amp_dtype: Optional[torch.dtype], clock: Clock) -> tuple[int, torch.Tensor]:
    """FLOPs of one train step (forward + backward; the optimizer's elementwise work is not counted), and its loss."""
    with FlopCounterMode(display=False) as counter:
        loss = train_step(model, task, optimizer, batch, amp_dtype, clock)
    return counter.get_total_flops(), loss.detach()


@contextmanager
def per_sample_encoders(model: nn.Module) -> Iterator[None]:
    """The naive baseline's encoders: each frozen encoder runs its batch one sample at a time (a per-image loop),
    concatenated back. An instance attribute `forward` shadows the class's, so module hooks (the part timer) still
    wrap the whole loop; the class's forward comes back on exit."""
    def one_at_a_time(batched: Callable) -> Callable:
        def forward(inputs: torch.Tensor) -> torch.Tensor:
            return torch.cat([batched(inputs[i:i + 1]) for i in range(inputs.shape[0])])
        return forward

    encoders = list(model.encoders.values())
    for encoder in encoders:
        encoder.forward = one_at_a_time(encoder.forward)
    try:
        yield
    finally:
        for encoder in encoders:
            del encoder.forward


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    model.eval()
    try:
        yield
    finally:
        model.train()


def benchmark_modality(model: nn.Module, cfg: ResolvedConfig, spec: ModalityInputs, *, steps: int,
                       batch_size: int, device: torch.device, generate_steps: int = 1, seed: int = 0) -> ModalityResult:
    task = TASKS.get(cfg.run.task)()
    optimizer = build_optimizer(model, cfg.run.optimizer, cfg.run.lr_schedule.init_lr)
    amp_dtype = autocast_dtype(device, cfg.run.amp.value)
    clock = Clock(device)
    gen = torch.Generator().manual_seed(seed)
    m = model.cfg.modalities[spec.modality]
    parts_of = {"encoder": model.encoders[m.encoder], "qformer": model.qformers[m.qformer], "llm": model.llm.model}

    def make_batch() -> dict:
        return move_to(synthetic_batch(model, spec, batch_size, gen), device)

    model.train()
    losses = [train_step(model, task, optimizer, make_batch(), amp_dtype, clock).detach()]  # warm-up: lazy init
    flops, loss = count_step_flops(model, task, optimizer, make_batch(), amp_dtype, clock)
    losses.append(loss)
    clock.sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = PartTimer(clock, parts_of)
    totals = dict.fromkeys(PARTS, 0.0)
    try:
        for _ in range(steps):
            clock.sync()
            data0 = clock.mark()
            batch = make_batch()
            marks: dict[str, Any] = {}
            losses.append(train_step(model, task, optimizer, batch, amp_dtype, clock, marks).detach())
            clock.sync()
            forward = timer.collect()
            fwd_ms = clock.ms(marks["fwd0"], marks["bwd0"])
            totals["data"] += clock.ms(data0, marks["fwd0"])
            for part in ("encoder", "qformer", "llm"):
                totals[part] += forward[part]
            totals["other_fwd"] += fwd_ms - sum(forward.values())
            totals["backward"] += clock.ms(marks["bwd0"], marks["opt0"])
            totals["optimizer"] += clock.ms(marks["opt0"], marks["end"])
    finally:
        timer.remove()
    peak = peak_memory_mb(device)
    step_ms = sum(totals.values()) / steps
    per_sample = flops / batch_size
    tflops = peak_tflops(device, amp_dtype)
    mfu = (flops / (step_ms / 1000.0)) / (tflops * 1e12) if tflops else None

    gen_rate = None
    if generate_steps > 0:
        with _eval_mode(model), torch.no_grad(), autocast(amp_dtype):
            batch = make_batch()
            model.generate(batch)  # warm-up
            clock.sync()
            start = time.perf_counter()
            for _ in range(generate_steps):
                model.generate(batch)
            clock.sync()
            gen_rate = generate_steps * batch_size / (time.perf_counter() - start)
    del optimizer
    return ModalityResult(spec.modality, batch_size, spec.store is not None, batch_size / (step_ms / 1000.0),
                          step_ms, {k: v / steps for k, v in totals.items()}, peak, per_sample, mfu, gen_rate,
                          [float(x) for x in losses])  # read after the timed steps: no host sync inside them


# ---- whole runs ----------------------------------------------------------------------------------------------
def build_model(cfg: ResolvedConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.run.seed)
    # on GPU, parameters are created (and randomly initialised) there directly: minutes faster for a 7B LLM
    with torch.device(device) if device.type == "cuda" else contextlib.nullcontext():
        model = MODELS.get(cfg.model_arch).from_config(cfg.model)
    return apply_run_compile(model.to(device), cfg.run.compile)  # as set_up_run does: run.compile=true compiles


def pick_device(cfg: ResolvedConfig) -> torch.device:
    wanted = cfg.run.device.value
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# The naive baseline's switches that are config options: fp32 everywhere (no autocast; fp32 LLM base weights).
NAIVE_OPTIONS = ("run.amp=fp32", "model.llm.dtype=float32")
NAIVE_TITLE = "naive: no feature cache, encoder one sample at a time, fp32 (" + " ".join(NAIVE_OPTIONS) + ")"


def _load(cfg_path: str, options: list[str], random_init: bool, naive: bool = False) -> ResolvedConfig:
    options = list(options) + (["model.random_init=true"] if random_init else []) + (list(NAIVE_OPTIONS) if naive
                                                                                     else [])
    return load_config(cfg_path, options)


def _modalities(model: nn.Module, wanted: Optional[list[str]]) -> list[str]:
    for modality in wanted or ():
        if modality not in model.cfg.modalities:
            raise ValueError(f"--modalities: '{modality}' is not one of {list(model.cfg.modalities)}")
    return wanted or list(model.cfg.modalities)


def _release(model: Optional[nn.Module], device: torch.device) -> None:
    if model is not None:
        model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_benchmark(cfg_path: str, options: list[str], *, modalities: Optional[list[str]] = None, steps: int = 10,
                  batch_size: Optional[int] = None, generate_steps: int = 1, random_init: bool = True,
                  naive: bool = False) -> list[ModalityResult]:
    """Every modality of the configured model; `naive`: the baseline without the switchable optimisations (no
    feature cache, per-sample encoder, fp32), same weights and batches at the same seed."""
    cfg = _load(cfg_path, options, random_init, naive)
    device = pick_device(cfg)
    model = build_model(cfg, device)
    results = []
    with tempfile.TemporaryDirectory(prefix="lavis_bench_") as tmp, \
            per_sample_encoders(model) if naive else contextlib.nullcontext():
        for modality in _modalities(model, modalities):
            size = batch_size or _dataset_batch_size(cfg, modality)
            spec = modality_inputs(model, cfg, modality, Path(tmp), size, device, use_cache=not naive)
            results.append(benchmark_modality(model, cfg, spec, steps=steps, batch_size=size, device=device,
                                              generate_steps=generate_steps))
    del model
    _release(None, device)
    return results


# ---- largest batch -------------------------------------------------------------------------------------------
def find_max_batch(step: Callable[[int], Any], *, start: int = 1, limit: int = 1024,
                   release: Callable[[], None] = lambda: None) -> int:
    """The largest batch in [1, limit] for which `step(batch)` runs without torch.cuda.OutOfMemoryError (0 if even 1
    does not): doubles from `start` until the first OOM, then bisects between the last fit and the first OOM.
    Assumes memory grows with the batch. `release` runs after each OOM, outside the except block (whose traceback
    would keep the failed step's tensors alive)."""
    def fits(batch: int) -> bool:
        try:
            step(batch)
            return True
        except torch.cuda.OutOfMemoryError:
            pass
        release()
        return False

    fit, oom = 0, None  # largest batch known to fit; smallest known to run out of memory
    batch = max(1, min(start, limit))
    while oom is None:
        if not fits(batch):
            oom = batch
        elif batch >= limit:
            return batch
        else:
            fit, batch = batch, min(2 * batch, limit)
    while oom - fit > 1:
        middle = (fit + oom) // 2
        if fits(middle):
            fit = middle
        else:
            oom = middle
    return fit


def max_batch_per_modality(cfg_path: str, options: list[str], *, modalities: Optional[list[str]] = None,
                           start: Optional[int] = None, limit: int = 1024, random_init: bool = True) -> dict[str, int]:
    """Per modality, the largest per-GPU batch whose train step (forward, backward, AdamW step, as the benchmark
    runs it) fits in CUDA memory. The optimizer state is created by one batch-1 step first, as every step but a
    run's first sees it. Refuses a non-CUDA device: only CUDA reports running out of memory as an error to catch."""
    cfg = _load(cfg_path, options, random_init)
    device = pick_device(cfg)
    if device.type != "cuda":
        raise ValueError(f"find_max_batch needs a CUDA device (it searches for torch.cuda.OutOfMemoryError); this "
                         f"run's device is {device.type} (run.device={cfg.run.device.value})")
    model = build_model(cfg, device)
    found = {}
    with tempfile.TemporaryDirectory(prefix="lavis_bench_") as tmp:
        for modality in _modalities(model, modalities):
            first = start or _dataset_batch_size(cfg, modality)
            spec = modality_inputs(model, cfg, modality, Path(tmp), first, device)
            found[modality] = _max_batch(model, cfg, spec, device, start=first, limit=limit)
            _release(model, device)  # this modality's optimizer state went with _max_batch's frame
    del model
    _release(None, device)
    return found


def _max_batch(model: nn.Module, cfg: ResolvedConfig, spec: ModalityInputs, device: torch.device, *, start: int,
               limit: int) -> int:
    task = TASKS.get(cfg.run.task)()
    optimizer = build_optimizer(model, cfg.run.optimizer, cfg.run.lr_schedule.init_lr)
    amp_dtype = autocast_dtype(device, cfg.run.amp.value)
    clock = Clock(device)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    model.train()

    def step(batch: int) -> None:
        train_step(model, task, optimizer, move_to(synthetic_batch(model, spec, batch, gen), device), amp_dtype, clock)
        clock.sync()  # an OOM must surface here, inside find_max_batch's try, not in a later call

    step(1)
    return find_max_batch(step, start=start, limit=limit, release=lambda: _release(model, device))


def format_max_batch(found: dict[str, int], limit: int) -> str:
    rows = [["modality", "max batch per GPU"]]
    rows += [[modality, (f">= {batch}" if batch >= limit else str(batch))] for modality, batch in found.items()]
    return (f"largest train batch per GPU (doubling until torch.cuda.OutOfMemoryError, then bisecting; limit {limit})"
            f"\n" + _table(rows))


def median_runs(runs: list[list[ModalityResult]]) -> list[ModalityResult]:
    """Per modality, the run with the median samples/s (a whole run, so its parts stay consistent)."""
    out = []
    for per_modality in zip(*runs):
        ranked = sorted(per_modality, key=lambda r: r.samples_per_s)
        out.append(ranked[(len(ranked) - 1) // 2])
    return out


def _dataset_batch_size(cfg: ResolvedConfig, modality: str) -> int:
    return next((ds.batch_size for ds in cfg.datasets.values() if ds.modality == modality), 8)


# ---- printing ------------------------------------------------------------------------------------------------
def _fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_results(results: list[ModalityResult], title: str) -> str:
    head = (["modality", "B", "cache", "samples/s", "step ms"] + [f"{p} ms" for p in PARTS]
            + ["peak MB", "GFLOP/sample", "MFU", "gen samples/s"])
    rows = [head]
    for r in results:
        rows.append([r.modality, str(r.batch_size), "yes" if r.cached else "no", _fmt(r.samples_per_s, ".1f"),
                     _fmt(r.step_ms, ".1f")] + [_fmt(r.parts_ms[p], ".1f") for p in PARTS]
                    + [_fmt(r.peak_mem_mb, ".0f"), _fmt(r.flops_per_sample / 1e9, ".3f"),
                       _fmt(r.mfu, ".1%"), _fmt(r.generate_samples_per_s, ".1f")])
    return f"{title}\n" + _table(rows)


def format_comparison(base: list[ModalityResult], cand: list[ModalityResult]) -> str:
    rows = [["modality", "samples/s base", "samples/s cand", "speed-up", "step ms ratio", "GFLOP ratio",
             "gen speed-up"]]
    for b, c in zip(base, cand):
        gen = (c.generate_samples_per_s / b.generate_samples_per_s
               if b.generate_samples_per_s and c.generate_samples_per_s else None)
        rows.append([b.modality, _fmt(b.samples_per_s, ".1f"), _fmt(c.samples_per_s, ".1f"),
                     _fmt(c.samples_per_s / b.samples_per_s, ".2f") + "x", _fmt(c.step_ms / b.step_ms, ".2f"),
                     _fmt(c.flops_per_sample / b.flops_per_sample, ".2f"), _fmt(gen, ".2f")])
    return "candidate / baseline\n" + _table(rows)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def device_line(cfg_path: str, options: list[str]) -> str:
    cfg = load_config(cfg_path, list(options) + ["model.random_init=true"])
    device = pick_device(cfg)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    amp = autocast_dtype(device, cfg.run.amp.value)
    return f"device: {name}; precision: {amp or torch.float32}; torch {torch.__version__}"
