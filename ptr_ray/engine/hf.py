"""The transformers engine: the :class:`~ptr_ray.engine.base.Engine` interface without vLLM.

For fast unit tests, machines without vLLM and the sequential-``generate`` benchmark; the
main job, the serving path and their integration tests run on vLLM.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any

from ptr_ray.config import EngineConfig, SamplingConfig
from ptr_ray.engine.base import (
    Completion,
    Generation,
    Prompt,
    checked_prompt_ids,
    clamp_context,
)
from ptr_ray.models import resolve_model


class HFEngine:
    """transformers ``generate``: same interface, no vLLM; for unit tests and the benchmark."""

    def __init__(self, cfg: EngineConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.model_path = resolve_model(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        dtype = {
            "auto": "auto",
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
            "float32": torch.float32,
        }[cfg.dtype]
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
        self.model.eval()
        self.max_model_len = clamp_context(self.model_path, cfg.max_model_len or 10**9)

    def generate(
        self, conversations: Sequence[Prompt], sampling: SamplingConfig
    ) -> list[Generation]:
        import torch

        results = []
        eos = self._eos_ids()
        for conv in conversations:
            ids = checked_prompt_ids(self.tokenizer, conv, self.max_model_len)
            t0 = time.time()
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            inp = torch.tensor([ids])
            kwargs: dict[str, Any] = dict(
                max_new_tokens=min(sampling.max_tokens, self.max_model_len - len(ids)),
                num_return_sequences=sampling.n,
                eos_token_id=eos,
                pad_token_id=self.tokenizer.pad_token_id
                if self.tokenizer.pad_token_id is not None
                else eos[0],
            )
            if sampling.temperature > 0:
                kwargs.update(
                    do_sample=True,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=sampling.top_k or None,
                )
            else:
                kwargs.update(do_sample=False)
            with torch.no_grad():
                out = self.model.generate(inp, attention_mask=torch.ones_like(inp), **kwargs)
            comps = []
            for row in out[:, len(ids) :].tolist():
                n_tok, reason = len(row), "length"
                for i, t in enumerate(row):
                    if t in eos:
                        n_tok, reason = i + 1, "stop"
                        break
                text = self.tokenizer.decode(
                    row[: n_tok if reason == "length" else n_tok - 1], skip_special_tokens=True
                )
                text, hit = _apply_stop(text, sampling.stop)
                comps.append(Completion(text, n_tok, "stop" if hit else reason))
            results.append(Generation(comps, prompt_tokens=len(ids), latency_s=time.time() - t0))
        return results

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return list(ids) if isinstance(ids, (list, tuple)) else [ids]

    def close(self) -> None:
        self.model = None
        gc.collect()


def _apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """vLLM's stop strings for transformers: cut at the earliest one, say whether one hit."""
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
