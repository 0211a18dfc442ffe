"""A contrastive stage (pairs or triplets) as a task of the shared training loop.

The model is a sentence-transformers model (Transformer -> Pooling, plus a `QuantizeAware` module
for int8/binary QAT) and the losses are sentence-transformers' own: `MultipleNegativesRankingLoss`
(InfoNCE with in-batch negatives, optional symmetric term, hard negatives as extra columns),
its GradCache form `CachedMultipleNegativesRankingLoss`, `GISTEmbedLoss` for guided false-negative
filtering, and `MatryoshkaLoss`. diffembed's loop supplies what their trainer would: deterministic
batches (exact resume), checkpoints, the time budget and the export. The exported folder is a
plain sentence-transformers folder (Transformer, Pooling, Normalize) that `Embedder`, `diffembed
serve` and `SentenceTransformer(path)` load without diffembed's code.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffembed.atomic import building_dir
from diffembed.errors import DiffembedError
from diffembed.training.checkpoint import TrainerState, settings_fingerprint
from diffembed.training.loop import StepData, TrainingTask
from diffembed.training.pair_batches import BatchPlan, PairRow, cluster_labels, read_pairs, rows_fingerprint
from diffembed.training.train_config import StageConfig


def load_st_model(path: str | Path, max_length: int | None = None, attention: str | None = None):
    """The folder as a sentence-transformers model without Normalize (losses use cosine; int8 QAT
    needs the raw pooled vector). A plain transformers folder gets ST's default Transformer + mean.

    ``attention`` (recipe ``model.attention``) for a decoder: ``"bidirectional"`` makes it
    bidirectional with the runtime's pooling; ``"causal"`` keeps it causal, pools the last token and
    makes the tokenizer append an EOS to every text (``modeling.causal``); None loads it as the
    runtime does (causal only when its config.json says ``is_causal: true``). An encoder with
    ``"causal"`` is refused."""
    from sentence_transformers import SentenceTransformer

    from diffembed.modeling.causal import ATTENTION_VARIANTS
    from diffembed.modeling.layout import read_model_spec
    from diffembed.modeling.loader import quiet_transformers, resolve_model_path

    if attention not in (None, *ATTENTION_VARIANTS):
        raise ValueError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION_VARIANTS)}")
    folder, _ = resolve_model_path(str(path))
    spec = read_model_spec(folder)
    if attention is None:
        attention = "causal" if spec.marked_causal else "bidirectional"
    causal = attention == "causal"
    if causal:
        check_causal_backbone(spec, str(path))
    quiet_transformers()
    try:
        loaded = SentenceTransformer(str(folder), device="cpu", trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any load failure is one clear line
        raise DiffembedError(f"cannot load {path} as a sentence-transformers model: {exc}") from exc
    modules = [_runtime_pooling(m, folder, "last" if causal else None) if type(m).__name__ == "Pooling" else m
               for m in loaded if type(m).__name__ != "Normalize"]
    _plain_text_inputs(modules[0])
    model = SentenceTransformer(modules=modules, device="cpu")
    if causal:
        _causal(model, folder)
    else:
        _bidirectional_like_the_runtime(model, folder)
    tokenizer = model.tokenizer
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:  # decoders: pad with EOS, as the runtime
        tokenizer.pad_token = tokenizer.eos_token
    if causal:
        from diffembed.modeling.causal import append_eos

        append_eos(tokenizer)  # last-token pooling reads the EOS, which has seen the whole text
    model.prompts = dict(loaded.prompts or {})
    if max_length is not None:
        model.max_seq_length = max_length
    return model, folder


def _plain_text_inputs(transformer) -> None:
    """Train on texts tokenized as the runtime tokenizes them. sentence-transformers >= 6 renders
    every text through the chat template when a decoder's tokenizer has one (its "message"
    modality), e.g. SmolLM2's system prompt and ``<|im_end|>\\n`` around each text; `Embedder`,
    serve and late chunking tokenize the bare text. Keeping "message" made training pool other tokens
    than inference (causal arms pooled the newline after ``<|im_end|>``, not the EOS) and made the
    export's ``SentenceTransformer(path)`` disagree with `Embedder`. The export saves this choice."""
    config = getattr(transformer, "modality_config", None)
    if isinstance(config, dict) and "message" in config and "text" in config:
        del config["message"]


def _runtime_pooling(pooling, folder: Path, force: str | None = None):
    """The pooling the runtime reads from the folder (or ``force``, diffembed's name of a mode). They
    agree for sentence-transformers folders; for a plain decoder folder sentence-transformers picks
    last-token pooling, diffembed mean."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    from diffembed.modeling.layout import read_model_spec

    spec = read_model_spec(folder)
    mode = {"mean": "mean", "cls": "cls", "last": "lasttoken"}[force or spec.pooling]
    if pooling.get_config_dict().get("pooling_mode") == mode:
        return pooling
    return Pooling(pooling.get_config_dict()["embedding_dimension"], pooling_mode=mode, include_prompt=spec.include_prompt)


def _bidirectional_like_the_runtime(model, folder: Path) -> None:
    """A decoder trains with the attention the runtime embeds with: `Embedder` makes decoders
    bidirectional (config.is_causal = False), so the stage does too, and the export's config says so."""
    from diffembed.modeling.bidirectional import attends_to_future, set_bidirectional
    from diffembed.modeling.layout import read_model_spec

    if not read_model_spec(folder).is_decoder:
        return
    backbone = model[0].auto_model
    set_bidirectional(backbone.config, True)
    if not attends_to_future(backbone, backbone.config.vocab_size):
        raise DiffembedError(f"{folder}: the decoder stayed causal after config.is_causal = False "
                             "(transformers >= 5.2 is needed for bidirectional decoders)")


def check_causal_backbone(spec, name: str) -> None:
    """``model.attention: causal`` keeps a decoder's attention causal; an encoder has none to keep."""
    if not spec.is_decoder:
        raise DiffembedError(
            f"model.attention: causal keeps a decoder's attention causal, but {name} is a {spec.model_type} "
            "encoder (bidirectional by construction); use attention: bidirectional (the default) or a decoder "
            "backbone")


def _causal(model, folder: Path) -> None:
    """A decoder kept causal (``model.attention: causal``): the export's config.json then records
    ``is_causal: true``, which diffembed's loader honours and transformers keeps."""
    from diffembed.modeling.bidirectional import attends_to_future, set_bidirectional

    backbone = model[0].auto_model
    set_bidirectional(backbone.config, False)
    if attends_to_future(backbone, backbone.config.vocab_size):
        raise DiffembedError(f"{folder}: the decoder still attends to later tokens after config.is_causal = True")


def check_causal_export(folder: Path) -> None:
    """What a causal stage exported says so to every loader (see ``modeling.causal``)."""
    from diffembed.modeling.causal import appends_eos
    from diffembed.modeling.layout import read_model_spec
    from diffembed.modeling.loader import load_tokenizer

    spec = read_model_spec(folder)
    if not spec.marked_causal or spec.pooling != "last":
        raise DiffembedError(f"{folder}: a causal stage's export must record is_causal: true and last-token "
                             f"pooling (found is_causal {spec.config.get('is_causal')!r}, pooling {spec.pooling})")
    if not appends_eos(load_tokenizer(folder)):
        raise DiffembedError(f"{folder}: the saved tokenizer does not append its EOS token, which last-token "
                             "pooling reads")


def build_loss(model, stage: StageConfig, guide=None) -> nn.Module:
    """sentence-transformers' loss for the stage's settings, wrapped for Matryoshka and mixed QAT."""
    from sentence_transformers.sentence_transformer import losses

    cfg = stage.loss
    directions = ("query_to_doc", "doc_to_query") if cfg.symmetric else ("query_to_doc",)
    scale = 1.0 / cfg.temperature
    # symmetric: the mean of the two cross-entropies (query -> documents, document -> queries)
    partition = "per_direction" if cfg.symmetric else "joint"
    # Under DDP every process scores its queries against the documents of all processes.
    gather = torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1
    if cfg.false_negative_margin is not None:
        kind = losses.CachedGISTEmbedLoss if cfg.mini_batch_size else losses.GISTEmbedLoss
        kw: dict[str, Any] = {"mini_batch_size": cfg.mini_batch_size, "show_progress_bar": False} if cfg.mini_batch_size else {}
        loss = kind(model, guide, temperature=cfg.temperature, margin_strategy=cfg.margin_strategy,
                    margin=cfg.false_negative_margin, gather_across_devices=gather, **kw)
    elif cfg.mini_batch_size:
        loss = losses.CachedMultipleNegativesRankingLoss(model, scale=scale, directions=directions,
                                                        partition_mode=partition, gather_across_devices=gather,
                                                        mini_batch_size=cfg.mini_batch_size, show_progress_bar=False)
    else:
        loss = losses.MultipleNegativesRankingLoss(model, scale=scale, directions=directions, partition_mode=partition,
                                                   gather_across_devices=gather)
    if cfg.matryoshka_dims:
        dim = model.get_embedding_dimension()
        dims = [dim] + [d for d in cfg.matryoshka_dims if d < dim]
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=dims)
    if cfg.quantization == "mixed":
        from diffembed.training.quantize_aware import MultiPrecisionLoss

        loss = MultiPrecisionLoss(model, loss, cfg.mixed_weights)
    return loss


class LossModel(nn.Module):
    """The module the loop trains: a loss over a sentence-transformers model (its submodule)."""

    def __init__(self, loss: nn.Module, model, guide=None):
        super().__init__()
        self.loss = loss
        self.model = model
        # The guide is frozen and must not be checkpointed or wrapped by DDP: keep it out of the tree.
        object.__setattr__(self, "_guide", guide)

    def forward(self, sentence_features: list[dict[str, torch.Tensor]], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.loss(sentence_features, labels)}

    # sentence-transformers' losses each hold the model (MatryoshkaLoss holds it twice), so the plain
    # state dict names every weight several times. Checkpoints hold the model's weights once.
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        return self.model.state_dict(destination=destination, prefix=prefix + "model.", keep_vars=keep_vars)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        inner = {k.removeprefix("model."): v for k, v in state_dict.items()}
        return self.model.load_state_dict(inner, strict=strict, assign=assign)


class ContrastiveTask(TrainingTask):
    """One pairs/triplets stage: start folder -> trained sentence-transformers folder."""

    find_unused_parameters = True  # e.g. BERT's pooler: loaded with the model, unused by mean pooling
    rows_label = "pairs"  # what a training row is, in the export's provenance

    def __init__(self, stage: StageConfig, start: str | Path, *, max_length: int | None = None,
                 gradient_checkpointing: bool = False, provenance: dict[str, Any] | None = None,
                 attention: str = "bidirectional"):
        self.stage, self.start_path, self.max_length = stage, str(start), max_length
        self.attention = attention  # the recipe's model.attention (see load_st_model)
        self.gradient_checkpointing = gradient_checkpointing
        self.name = stage.name
        self.rows = self.read_rows()
        self.manual_gradient_sync = stage.loss.mini_batch_size is not None  # GradCache: see TrainingTask
        self.dev = None
        if stage.data.dev:
            from diffembed.eval.datasets import load_dataset

            self.dev = load_dataset(stage.data.dev)
        self.provenance = provenance or {}
        self.st = None

    def read_rows(self) -> list[PairRow]:
        return read_pairs(self.stage.data.train, self.stage.data.negatives)

    # ----------------------------------------------------------------------------- model
    def build_model(self) -> LossModel:
        model, folder = load_st_model(self.start_path, self.max_length, self.attention)
        if self.gradient_checkpointing:
            from diffembed.training.activations import checkpoint_activations

            checkpoint_activations(model)
        mode = self.stage.loss.quantization
        if mode in ("int8", "binary"):
            from diffembed.training.quantize_aware import QuantizeAware

            model.append(QuantizeAware(mode))
        guide = None
        if self.stage.loss.false_negative_margin is not None:
            guide = copy.deepcopy(model) if self.stage.loss.guide == "self" else load_st_model(self.stage.loss.guide)[0]
            guide.eval()
            for p in guide.parameters():
                p.requires_grad_(False)
        if self.st is None:
            self.st, self.start_folder = model, folder
        return LossModel(build_loss(model, self.stage, guide), model, guide)

    def fingerprint(self) -> str:
        s = self.stage
        keep = {"start": self.start_path, "data": rows_fingerprint(self.rows), "seed": s.train.seed,
                "batch": s.batch.model_dump(mode="json"), "loss": s.loss.model_dump(mode="json"),
                "max_length": self.max_length, **self.attention_key()}
        if self.provenance.get("parent_fingerprint"):  # a retrained parent stage retrains this one too
            keep["parent"] = self.provenance["parent_fingerprint"]
        return settings_fingerprint(keep)

    def attention_key(self) -> dict[str, str]:
        """The fingerprint's attention entry: none for the default, so older runs keep their fingerprints."""
        return {} if self.attention == "bidirectional" else {"attention": self.attention}

    # ----------------------------------------------------------------------------- data
    def start(self, state: TrainerState, accelerator) -> None:
        clusters = None
        if self.stage.batch.clusters:
            clusters = self._clusters()
        self.plan = BatchPlan(self.rows, self.stage.batch.size, self.stage.train.seed,
                              no_duplicates=self.stage.batch.no_duplicates, clusters=clusters)
        self.device = accelerator.device

    def _clusters(self):
        """k-means labels of the queries embedded by the stage's starting model (cached per run)."""
        import numpy as np

        cache = self.stage.out / "clusters.npy"
        if cache.is_file():
            labels = np.load(cache)
            if len(labels) == len(self.rows):
                return labels
        from diffembed import Embedder

        emb = Embedder(str(self.start_folder), device="cpu", show_progress=False)
        vecs = emb.encode([r.query for r in self.rows])
        labels = cluster_labels(vecs, self.stage.batch.clusters, self.stage.train.seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, labels)
        return labels

    def next_step(self, state: TrainerState, accelerator) -> StepData:
        idx = self.plan.batch(state.step)
        world, rank = accelerator.num_processes, accelerator.process_index
        if len(idx) % world:
            raise DiffembedError(f"batch.size ({len(idx)}) must divide by the number of processes ({world})")
        per = len(idx) // world
        mine = [self.rows[i] for i in idx[rank * per:(rank + 1) * per]]
        columns = [[r.query for r in mine], [r.positive for r in mine]]
        for j in range(self.stage.data.negatives):
            columns.append([r.negatives[j] for r in mine])
        features = []
        tokens = 0
        for col in columns:
            f = self.st.preprocess(col)
            tokens += int(f["attention_mask"].sum()) * world
            features.append({k: v.to(self.device) if torch.is_tensor(v) else v for k, v in f.items()})
        labels = torch.zeros(len(mine), device=self.device)
        return StepData(micro_batches=[{"sentence_features": features, "labels": labels}], rows=len(idx),
                        tokens=tokens)

    # ----------------------------------------------------------------------------- eval and export
    def evaluate(self, model, accelerator) -> list[dict[str, Any]]:
        if self.dev is None or not accelerator.is_main_process:
            return []
        from diffembed.eval.runner import Grid, SentenceTransformersSystem, evaluate

        st = accelerator.unwrap_model(model).model
        st.eval()
        with torch.no_grad():
            # the model's own output: quantized under int8/binary QAT
            system = SentenceTransformersSystem(self.stage.name, model=st)
            rows = evaluate(self.dev, system, Grid(max_queries=self.stage.data.dev_max_queries))
        st.train()
        r = rows[0]
        return [{"set": "dev", "precision": _live_precision(self.stage), "ndcg@10": r["ndcg@10"],
                 "recall@10": r.get("recall@10"), "mrr@10": r.get("mrr@10")}]

    def step_postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.4f}"}

    def export(self, model, state: TrainerState, *, stopped_early: bool, world_size: int) -> Path:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Normalize

        st = model.model
        keep = [m for m in st if type(m).__name__ != "QuantizeAware"]
        plain = SentenceTransformer(modules=[*keep, Normalize()], device="cpu")
        plain.prompts = dict(st.prompts or {})
        out = self.stage.out / "final"
        with building_dir(out) as tmp:
            plain.save(str(tmp), create_model_card=False)
            info = {"stage": self.stage.model_dump(mode="json"), "start_from": self.start_path,
                    "state": asdict(state), "stopped_early": stopped_early, "world_size": world_size,
                    self.rows_label: len(self.rows), **self.provenance}
            (tmp / "diffembed_train.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            if self.attention == "causal":
                check_causal_export(tmp)
        return out


def _live_precision(stage: StageConfig) -> str:
    q = stage.loss.quantization
    return "float32" if q in ("float", "mixed") else q
