"""Live rendering of the denoising canvas (rich): masked positions as placeholders filling in step by step."""
from __future__ import annotations

import torch

MASK_GLYPH = "\u2591"  # light shade: one per masked position


class CanvasRenderer:
    """A generate() callback that redraws row 0 of the canvas after every step in a rich Live display."""

    def __init__(self, model, prompt_length: int, console=None, max_rows: int = 4):
        from rich.console import Console

        self.model, self.P = model, prompt_length
        self.console = console or Console(stderr=True)
        self.max_rows = max_rows
        self.live = None
        self.steps = 0

    def __enter__(self):
        from rich.live import Live

        self.live = Live(console=self.console, refresh_per_second=20, transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)

    def render(self, tokens: torch.Tensor, transferred: torch.Tensor | None):
        from rich.text import Text

        tok = self.model.tokenizer
        mask_id = self.model.mask_token_id
        out = Text()
        out.append(f"step {self.steps}\n", style="bold")
        for r in range(min(tokens.shape[0], self.max_rows)):
            row = tokens[r].tolist()
            new = transferred[r].tolist() if transferred is not None else [False] * len(row)
            if tok is not None:
                out.append(tok.decode(row[:self.P], skip_special_tokens=True), style="dim")
            else:
                out.append(" ".join(map(str, row[:self.P])), style="dim")
            for t, fresh in zip(row[self.P:], new[self.P:]):
                if t == mask_id:
                    out.append(MASK_GLYPH, style="grey50")
                else:
                    text = tok.token_text(t) if tok is not None else f" {t}"
                    out.append(text, style="bold green" if fresh else None)
            out.append("\n")
        return out

    def __call__(self, step: int, tokens: torch.Tensor, transferred: torch.Tensor) -> None:
        self.steps = step + 1
        self.live.update(self.render(tokens, transferred))
