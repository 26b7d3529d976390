"""Layer-by-layer ("sequential") execution of a checkpoint bigger than memory.

As llm-compressor's sequential pipeline and llmc's blockwise mode do: the model's module tree is built from its
configuration on the meta device (accelerate's ``init_empty_weights``: no memory), and only one part holds real
weights at a time, read from the checkpoint's safetensors files (memory-mapped, ``safetensors.safe_open``):

1. the input embedding: every batch of tokens goes through the model's own forward until the first block, which
   records its inputs (the hidden states ``h_0`` and the keyword arguments the model passes every block: rotary
   position embeddings, attention mask, positions) and stops;
2. block 0, 1, … in turn: loaded, every batch's hidden states run through it, freed;
3. the final norm and the output head last.

The hidden states between blocks stay in memory while they fit ``state_budget`` bytes and go to ``.npy`` files
(memory-mapped, in a temporary folder) beyond. Peak memory is one block, the embedding (or the head), and the
hidden states of one batch on top of those kept between blocks. The numbers are the in-memory model's: the same
modules run on the same inputs in the same order (tested to 1e-5 on tiny Llama, Qwen2 and Gemma-3 models).

Families whose blocks take different masks or position embeddings (``layer_types`` mixing sliding-window and full
attention: Gemma-2/3, Qwen with ``max_window_layers``, …) record them at the first block of each kind: the blocks
before it pass their input on unchanged (no weights are needed for that), and every block then gets what its own
kind receives in memory.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from analysis.model.architecture import ModelLoadError, block_list, final_norm, output_head
from analysis.model.loading import (
    DTYPES,
    checkpoint_folder,
    fingerprint_items,
    model_bytes,
    read_config,
    read_tokenizer,
    resolve_device,
)

log = logging.getLogger(__name__)


class NotSequential(ModelLoadError):
    """This model cannot run layer by layer (the message says why)."""


class _Stop(Exception):
    pass


class _Catcher(nn.Module):
    """Stands in for a block: records what the model passes it, then stops the forward (``last``) or passes its
    input on unchanged (a block before the last one whose inputs are needed)."""

    def __init__(self, block: nn.Module, last: bool = True):
        super().__init__()
        self.block = block
        self.last = last
        self.seen: tuple | None = None

    def forward(self, hidden_states, *args, **kwargs):
        self.seen = (hidden_states, args, kwargs)
        if self.last:
            raise _Stop
        return hidden_states


# ----------------------------------------------------------------------------------------------------------------
# The checkpoint's tensors


def weight_index(folder: Path) -> dict[str, Path]:
    """Tensor name → safetensors file of a checkpoint folder (one file or a sharded index)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    out: dict[str, Path] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.update({k: f for k in h.keys()})
    if not out:
        raise NotSequential(f"{folder} holds no safetensors weights; layer-by-layer execution reads safetensors only")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Hidden states between blocks


class StateStore:
    """One tensor per batch, overwritten block after block: in memory up to ``budget`` bytes, then ``.npy`` files."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.used = 0
        self._mem: dict[int, torch.Tensor] = {}
        self._disk: dict[int, tuple[np.memmap, torch.dtype]] = {}
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def on_disk(self) -> bool:
        return bool(self._disk)

    @staticmethod
    def _numpy(h: torch.Tensor) -> np.ndarray:  # bfloat16 has no numpy dtype: its bits go as int16
        h = h.detach().cpu()
        return (h.view(torch.int16) if h.dtype == torch.bfloat16 else h).numpy()

    def put(self, i: int, h: torch.Tensor) -> None:
        h = h.detach()
        if i in self._disk:
            self._disk[i][0][...] = self._numpy(h)
            return
        if i in self._mem:
            self._mem[i] = h
            return
        size = h.numel() * h.element_size()
        if self.used + size <= self.budget:
            self._mem[i] = h
            self.used += size
            return
        if self._dir is None:
            from analysis import cache

            self._dir = tempfile.TemporaryDirectory(prefix="sequential-", dir=cache.scratch_root())
        a = self._numpy(h)
        arr = np.lib.format.open_memmap(
            os.path.join(self._dir.name, f"{i}.npy"), mode="w+", dtype=a.dtype, shape=a.shape
        )
        arr[...] = a
        self._disk[i] = (arr, h.dtype)

    def get(self, i: int, device: torch.device) -> torch.Tensor:
        if i in self._mem:
            return self._mem[i].to(device)
        arr, dtype = self._disk[i]
        t = torch.from_numpy(np.array(arr))
        return (t.view(torch.bfloat16) if dtype == torch.bfloat16 else t).to(device)

    def close(self) -> None:
        self._mem.clear()
        self._disk.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


# ----------------------------------------------------------------------------------------------------------------
# The model, one part at a time


@dataclass
class SequentialModel:
    """A checkpoint folder run one block at a time (see the module docstring); duck-types the parts of
    :class:`analysis.model.loading.LoadedModel` that a capture and an evaluation use."""

    folder: Path
    config: object
    tokenizer: object
    spec: object
    name: str
    skeleton: nn.Module
    torch_dtype: torch.dtype
    device_name: str
    index: dict[str, Path]
    tied: dict[str, str]  # skeleton name → checkpoint name for tensors the checkpoint stores once (tied head)
    fingerprint: str = ""
    load_seconds: float = 0.0
    source_kind: str = "sequential"
    notes: list[str] = field(default_factory=list)
    state_budget: int = 2 * 2**30
    sequential: bool = True
    reason: str = ""

    # --- LoadedModel's facts ---------------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:  # the module tree without weights (shapes, names, structure)
        return self.skeleton

    @property
    def checkpoint_dir(self) -> Path:
        return self.folder

    @property
    def blocks(self) -> nn.ModuleList:
        return block_list(self.skeleton)[1]

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        return int(self.skeleton.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        return torch.device(self.device_name)

    @property
    def dtype(self) -> torch.dtype:
        return self.torch_dtype

    def n_parameters(self) -> int:
        """Parameters counted once per checkpoint tensor (a tied head is the embedding, loaded or not)."""
        seen, total = set(), 0
        for name, p in self.skeleton.named_parameters(remove_duplicate=False):
            stored = self.tied.get(name, name)
            if stored not in seen and id(p) not in seen:
                seen.update((stored, id(p)))
                total += p.numel()
        return total

    def card(self) -> dict:
        cfg = self.config
        return {
            "name": self.name,
            "source": getattr(self.spec, "source", str(self.folder)),
            "architecture": type(self.skeleton).__name__,
            "model_type": getattr(cfg, "model_type", "?"),
            "blocks": self.n_blocks,
            "width": self.width,
            "parameters": self.n_parameters(),
            "dtype": str(self.torch_dtype).replace("torch.", ""),
            "device": self.device_name,
            "device_map": "sequential",
            "memory_bytes": model_bytes(self.folder, self.torch_dtype),
            "resident_bytes": self.resident_bytes(),
            "fingerprint": self.fingerprint,
            "last_state_is_normed": True,
            "load_seconds": round(self.load_seconds, 2),
        }

    def resident_bytes(self) -> int:
        """The most weights resident at once: the largest block, or the embedding with the head and final norm."""
        size = torch.finfo(self.torch_dtype).bits // 8
        per_block = max(sum(p.numel() for p in b.parameters()) for b in self.blocks)
        in_blocks = {id(p) for p in self.blocks.parameters()}
        outer = sum(p.numel() for p in self.skeleton.parameters() if id(p) not in in_blocks)
        return int(max(per_block, outer) * size)

    # --- loading and freeing parts ----------------------------------------------------------------------------
    def _source_name(self, name: str) -> str:
        return self.tied.get(name, name)

    def load(self, module: nn.Module, prefix: str) -> nn.Module:
        """Give ``module`` (the skeleton's, named ``prefix``) its weights from the checkpoint, on the device."""
        from accelerate.utils import set_module_tensor_to_device
        from safetensors import safe_open

        names = [n for n, _ in module.named_parameters(remove_duplicate=False)]
        names += [n for n, b in module.named_buffers(remove_duplicate=False) if b.device.type == "meta"]
        by_file: dict[Path, list[tuple[str, str]]] = {}
        for n in names:
            src = self._source_name(f"{prefix}{n}")
            if src not in self.index:
                raise NotSequential(
                    f"{src} is not in the checkpoint {self.folder}; this family stores its weights "
                    "under other names, and layer-by-layer execution reads them as the model names "
                    "them"
                )
            by_file.setdefault(self.index[src], []).append((n, src))
        for f, pairs in by_file.items():
            with safe_open(str(f), framework="pt", device="cpu") as h:
                for n, src in pairs:
                    set_module_tensor_to_device(module, n, self.device, value=h.get_tensor(src), dtype=self.torch_dtype)
        return module

    @staticmethod
    def free(module: nn.Module) -> None:
        """Send ``module``'s weights back to the meta device (their memory is released)."""
        from accelerate.utils import set_module_tensor_to_device

        for n, p in list(module.named_parameters(remove_duplicate=False)):
            if p.device.type != "meta":
                set_module_tensor_to_device(module, n, "meta")
        gc.collect()

    def _prefix(self, module: nn.Module) -> str:
        for name, m in self.skeleton.named_modules():
            if m is module:
                return f"{name}." if name else ""
        raise NotSequential("a module is not part of the model")

    # --- running --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(
        self,
        batches: Sequence[torch.Tensor],
        on_state: Callable[[int, int, torch.Tensor], None] | None = None,
        on_final: Callable[[int, torch.Tensor], None] | None = None,
        blocks: Iterable[int] | None = None,
        progress: Callable[[int, int, str], None] | None = None,
        needs_head: bool = False,
    ) -> None:
        """Run token batches through the model part by part.

        ``on_state(state, batch, h)`` gets every hidden state as the in-memory model's ``output_hidden_states``
        gives it (``state`` 0 = embedding output, ``s`` = output of block ``s − 1``; the last one after the final
        norm). ``on_final(batch, h)`` gets the final-normed states with the output head loaded (call
        :meth:`head_logits` inside it). ``blocks`` runs only those blocks, in order (a pruned variant).
        """
        base_name, layers = block_list(self.skeleton)
        order = list(range(len(layers))) if blocks is None else [int(b) for b in blocks]
        total = len(order) + 2
        store = StateStore(self.state_budget)
        t0 = time.perf_counter()
        try:
            # 1. embeddings: the model's own forward up to the first block, which records its inputs
            emb = self.skeleton.get_input_embeddings()
            kwargs = self._embed(batches, store, on_state)
            if not (needs_head and self._head_is_embedding()):
                self.free(emb)
            if progress:
                progress(1, total, "embeddings")
            # 2. the blocks, one at a time
            n_run = len(order)
            for step, b in enumerate(order):
                block = self.load(layers[b], f"{base_name}.{b}.")
                for i in range(len(batches)):
                    args, kw = kwargs[i][b]
                    out = block(store.get(i, self.device), *args, **kw)
                    h = out[0] if isinstance(out, tuple) else out
                    store.put(i, h)
                    if on_state and step < n_run - 1:  # the last state is given after the final norm
                        on_state(step + 1, i, h)
                self.free(block)
                if progress:
                    progress(step + 2, total, f"block {b} ({time.perf_counter() - t0:.0f} s)")
            # 3. the final norm (and the head)
            norm = final_norm(self.skeleton)
            self.load(norm, self._prefix(norm))
            head = output_head(self.skeleton) if on_final else None
            if head is not None:
                self.load(head, self._prefix(head))
            for i in range(len(batches)):
                h = norm(store.get(i, self.device))
                if on_state:
                    on_state(n_run, i, h)
                if on_final:
                    on_final(i, h)
            self.free(norm)
            if head is not None:
                self.free(head)
            self.free(emb)
            if progress:
                progress(total, total, "final norm and head")
        finally:
            store.close()

    def layer_kinds(self) -> list:
        """Each block's attention kind (``layer_types``; one kind for every block when the config has none)."""
        cfg = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        kinds = list(getattr(cfg, "layer_types", None) or [])
        return kinds if len(kinds) == self.n_blocks else [None] * self.n_blocks

    def _embed(self, batches, store: StateStore, on_state=None) -> list[list[tuple[tuple, dict]]]:
        """Load the embedding, put every batch's ``h_0`` in ``store`` and return what each batch passes each block
        (``[batch][block] → (args, kwargs)``), recorded at the first block of each attention kind."""
        _, layers = block_list(self.skeleton)
        emb = self.skeleton.get_input_embeddings()
        self.load(emb, self._prefix(emb))
        kinds = self.layer_kinds()
        first = {k: kinds.index(k) for k in dict.fromkeys(kinds)}  # kind → its first block
        last = max(first.values())
        catchers = {b: _Catcher(layers[b], last=b == last) for b in range(last + 1)}
        kwargs = []
        for b, c in catchers.items():
            layers[b] = c
        try:
            for i, ids in enumerate(batches):
                try:
                    self.skeleton.base_model(input_ids=ids.to(self.device), use_cache=False)
                except _Stop:
                    pass
                seen = {}
                for kind, b in first.items():
                    _, args, kw = catchers[b].seen
                    seen[kind] = (args, {k: v for k, v in kw.items() if k not in ("past_key_value", "past_key_values")})
                kwargs.append([seen[k] for k in kinds])
                h = catchers[0].seen[0]
                store.put(i, h)
                if on_state:
                    on_state(0, i, h)
        finally:
            for b, c in catchers.items():
                layers[b] = c.block
        return kwargs

    @torch.no_grad()
    def run_without_each(
        self,
        batches: Sequence[torch.Tensor],
        order: Sequence[int],
        on_final: Callable[[int, int, torch.Tensor], None],
        progress: Callable[[int, int, str], None] | None = None,
    ) -> None:
        """The model of ``order``'s blocks and, at once, each of its variants without one of them, every block
        loaded once: ``on_final(t, batch, h)`` gets the final-normed states of the variant without ``order[t]``
        (``t = -1``: the model with all of ``order``), with the head loaded (:meth:`run_variants`)."""
        order = [int(b) for b in order]
        variants = [order] + [order[:t] + order[t + 1 :] for t in range(len(order))]
        self.run_variants(batches, variants, lambda v, i, h: on_final(v - 1, i, h), progress=progress)

    @torch.no_grad()
    def run_variants(
        self,
        batches: Sequence[torch.Tensor],
        variants: Sequence[Sequence[int]],
        on_final: Callable[[int, int, torch.Tensor], None],
        progress: Callable[[int, int, str], None] | None = None,
    ) -> int:
        """Several block-removal variants of the model at once, every block loaded once.

        ``variants[v]`` lists the blocks variant ``v`` keeps. Variants that kept the same blocks so far share one
        stream of hidden states (a prefix tree): a block runs once per stream that keeps it, and a stream splits
        where its variants part. ``on_final(v, batch, h)`` gets variant ``v``'s final-normed states, with the head
        loaded, batch after batch and, within a batch, ``v`` in order. Returns the number of (block, stream) runs
        per batch. The streams' states stay between blocks (on disk beyond ``state_budget``)."""
        base_name, layers = block_list(self.skeleton)
        kept = [set(int(b) for b in v) for v in variants]
        n = len(batches)
        blocks = sorted(set().union(*kept)) if kept else []
        total = len(blocks) + 2
        store = StateStore(self.state_budget)
        streams: list[list[int]] = [list(range(len(variants)))]  # stream s: the variants it carries
        key = lambda s, i: s * n + i  # noqa: E731 - stream s, batch i
        runs = 0
        t0 = time.perf_counter()
        try:
            kwargs = self._embed(batches, store)  # stream 0 lives at keys 0..n-1
            emb = self.skeleton.get_input_embeddings()
            if not self._head_is_embedding():
                self.free(emb)
            if progress:
                progress(1, total, "embeddings")
            for step, b in enumerate(blocks):
                running = []
                for s in range(len(streams)):
                    keep = [v for v in streams[s] if b in kept[v]]
                    skip = [v for v in streams[s] if b not in kept[v]]
                    if keep and skip:  # the stream parts here: those without block b go on with its input
                        streams.append(skip)
                        for i in range(n):
                            store.put(key(len(streams) - 1, i), store.get(key(s, i), self.device))
                        streams[s] = keep
                    if keep:
                        running.append(s)
                block = self.load(layers[b], f"{base_name}.{b}.")
                for s in running:
                    for i in range(n):
                        args, kw = kwargs[i][b]
                        out = block(store.get(key(s, i), self.device), *args, **kw)
                        store.put(key(s, i), out[0] if isinstance(out, tuple) else out)
                runs += len(running)
                self.free(block)
                if progress:
                    progress(
                        step + 2, total, f"block {b} for {len(running)} streams ({time.perf_counter() - t0:.0f} s)"
                    )
            norm = final_norm(self.skeleton)
            head = output_head(self.skeleton)
            self.load(norm, self._prefix(norm))
            self.load(head, self._prefix(head))
            stream_of = {v: s for s, vs in enumerate(streams) for v in vs}
            for i in range(n):
                normed: dict[int, torch.Tensor] = {}
                for v in range(len(variants)):
                    s = stream_of[v]
                    if s not in normed:
                        normed[s] = norm(store.get(key(s, i), self.device))
                    on_final(v, i, normed[s])
            self.free(norm)
            self.free(head)
            self.free(emb)
            if progress:
                progress(total, total, "final norm and head")
        finally:
            store.close()
        return runs

    def _head_is_embedding(self) -> bool:
        head = output_head(self.skeleton)
        return head.weight is self.skeleton.get_input_embeddings().weight

    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The output head on final-normed states (inside ``on_final``, while the head is loaded)."""
        logits = output_head(self.skeleton)(h)
        scale = getattr(self.config, "final_logit_softcapping", None)
        if scale:
            logits = torch.tanh(logits / scale) * scale
        return logits


_NUMPY_OF = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.int16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(n)), 8 + n


@dataclass
class CheckpointTensor:
    """A tensor left in its safetensors file: shape and dtype (as the model holds it), and a strided sample read
    through a memory map opened for that read only (a few MB touched, never the whole tensor)."""

    path: Path
    info: dict
    data_start: int
    shape: tuple
    dtype: torch.dtype

    def strided_sample(self, n: int) -> torch.Tensor:
        numel = int(np.prod(self.info["shape"])) if self.info["shape"] else 1
        step = max(1, numel // n)
        kind = self.info["dtype"]
        mm = np.memmap(
            self.path,
            dtype=_NUMPY_OF[kind],
            mode="r",
            offset=self.data_start + int(self.info["data_offsets"][0]),
            shape=(numel,),
        )
        sample = torch.from_numpy(np.array(mm[::step][:n]))
        del mm
        if kind == "BF16":
            sample = sample.view(torch.bfloat16)
        return sample.to(self.dtype)


def sequential_fingerprint(sm: SequentialModel, samples_per_tensor: int = 4096) -> str:
    """The fingerprint :func:`analysis.model.loading.fingerprint` gives the same weights loaded in memory,
    computed from the checkpoint's files without loading them (only each tensor's strided sample is read), so the
    caches of both runs are shared."""
    meta = sm.skeleton.state_dict()
    headers = {f: _header(f) for f in set(sm.index.values())}

    def items():
        for name in sorted(meta):
            src = sm._source_name(name)
            if src not in sm.index:
                raise NotSequential(f"{src} is not in the checkpoint {sm.folder}")
            f = sm.index[src]
            header, start = headers[f]
            yield name, CheckpointTensor(f, header[src], start, tuple(meta[name].shape), meta[name].dtype)

    return fingerprint_items(sm.skeleton, items(), samples_per_tensor)


def open_sequential(
    spec, progress: Callable[[str], None] | None = None, reason: str = "", state_budget: int | None = None
) -> SequentialModel:
    """A :class:`SequentialModel` for what ``spec`` names (a checkpoint folder, the bundled model's converted copy,
    or a hub id in the local cache): the configuration, the tokenizer and the module tree, no weights."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    say = progress or (lambda m: log.info(m))
    t0 = time.perf_counter()
    if spec.device_map_auto:
        raise NotSequential("layer-by-layer execution and --device-map-auto exclude each other; choose one")
    name, folder = checkpoint_folder(spec, say)
    config = read_config(spec, say)
    dtype = DTYPES[spec.dtype]
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=spec.trust_remote_code)
    skeleton.eval()
    index = weight_index(folder)
    tied = {}
    head = output_head(skeleton)
    emb = skeleton.get_input_embeddings()
    names = {id(m): n for n, m in skeleton.named_modules()}
    head_name, emb_name = f"{names[id(head)]}.weight", f"{names[id(emb)]}.weight"
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    if head.weight is emb.weight or (head_name not in index and getattr(cfg, "tie_word_embeddings", False)):
        tied[head_name] = emb_name  # stored once, as the input embedding
    sm = SequentialModel(
        folder=folder,
        config=skeleton.config,
        tokenizer=read_tokenizer(spec),
        spec=spec,
        name=f"{name} (layer by layer)",
        skeleton=skeleton,
        torch_dtype=dtype,
        device_name=resolve_device(spec.device),
        index=index,
        tied=tied,
        reason=reason,
    )
    if state_budget is not None:
        sm.state_budget = int(state_budget)
    say("fingerprinting the checkpoint's weights, one tensor at a time")
    sm.fingerprint = sequential_fingerprint(sm)
    sm.load_seconds = time.perf_counter() - t0
    sm.notes.append(f"run layer by layer from {folder}" + (f": {reason}" if reason else ""))
    return sm


def batches_of(windows: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    return [torch.as_tensor(windows[s : s + batch_size]) for s in range(0, windows.shape[0], batch_size)]


def describe_peak(sm: SequentialModel) -> str:
    """One line: roughly what a layer-by-layer run keeps in memory."""
    per_block = max(sum(p.numel() for p in b.parameters()) for b in sm.blocks) * torch.finfo(sm.dtype).bits // 8
    emb = sm.skeleton.get_input_embeddings().weight.numel() * torch.finfo(sm.dtype).bits // 8
    return (
        f"one block ({per_block / 2**20:,.0f} MiB) at a time, the embedding or the head "
        f"({emb / 2**20:,.0f} MiB), hidden states in memory up to {sm.state_budget / 2**30:.1f} GiB, then on disk"
    )
