"""Tiny random chat models made locally, for fast tests and benchmarks (no hub, no download).

The model is a real Llama-architecture checkpoint with a byte-level BPE tokenizer and a
ChatML chat template, small enough to train in seconds on a CPU, with head size 32 so the
CPU build of vLLM can load it too.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS_SEED = [
    "The quick brown fox jumps over the lazy dog.",
    "Please continue thinking and refine your answer.",
    "What is the capital of France? The capital of France is Paris.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? The answer is 72.",
    "Explain why the sky is blue. Rayleigh scattering makes short wavelengths scatter more.",
    "Write a Python function that returns the sum of a list of numbers.",
    "def add(a, b):\n    return a + b",
    "Step 1: read the question. Step 2: think. Step 3: answer clearly.",
    "A) red B) green C) blue D) yellow. The answer is C.",
    "#### 42",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000",
]


def _corpus() -> list[str]:
    lines = []
    for i in range(30):
        for s in _CORPUS_SEED:
            lines.append(s if i % 2 else s.lower())
        lines.append(" ".join(str(i * j) for j in range(12)))
    return lines


def make_tiny_chat_model(
    path: str | Path,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a tiny random Llama chat model (tokenizer + chat template + weights) to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_corpus(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(out)

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, bos_token_id=None
    )
    model.save_pretrained(out, safe_serialization=True)
    return out


class FaultThread(threading.Thread):
    """Base of the fault-injection threads of the integration tests: ``_watch`` waits for the
    moment to strike (an actor busy, a checkpoint written) and kills a real Ray process from
    outside, as Ray's own tests do; production code carries no test hooks. An exception in
    ``_watch`` is kept in ``error`` for the test to raise, and ``stop`` ends the watch."""

    def __init__(self, name: str, timeout_s: float) -> None:
        super().__init__(daemon=True, name=name)
        self.timeout_s = timeout_s
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)

    def run(self) -> None:
        try:
            self._watch()
        except BaseException as e:  # surfaced by the test through .error
            self.error = e

    def _watch(self) -> None:
        raise NotImplementedError


def make_dry_run(root: Path, venv: Path, *args: str) -> str:
    """The commands ``make -n ARGS`` would run in ``root`` for a venv that does not exist yet
    (how the Makefile tests check setup and recipes without installing anything)."""
    import subprocess

    out = subprocess.run(
        ["make", "-n", "--no-print-directory", *args, f"VENV={venv}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for test servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
