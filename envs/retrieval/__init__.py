"""Step-wise multi-KB retrieval QA (R1-Router style) for Step-GRPO: see task.py, response.py and kb.py."""
from .kb import (KB_NAMES, Embedder, KnowledgeBases, Passage, TableKB, TextKB, default_embedder,
                 tokenize)
from .task import (DATA_SOURCE, SYSTEM_PROMPT, TEMPLATES, Example, GoldStep, Parsed, StepState, World,
                   answer_reward, build_prompt, compute_score, generate_examples, generate_world,
                   make_dataset, normalize_answer, parse_response, ret_items_error, score_step,
                   state_from_label, state_label, step_states, token_recall, warm_embeddings)

__all__ = ["KB_NAMES", "Embedder", "KnowledgeBases", "Passage", "TableKB", "TextKB", "default_embedder",
           "tokenize", "DATA_SOURCE", "SYSTEM_PROMPT", "TEMPLATES", "Example", "GoldStep", "Parsed",
           "StepState", "World", "answer_reward", "build_prompt", "compute_score", "generate_examples",
           "generate_world", "make_dataset", "normalize_answer", "parse_response", "ret_items_error",
           "score_step", "state_from_label", "state_label", "step_states", "token_recall", "warm_embeddings"]
