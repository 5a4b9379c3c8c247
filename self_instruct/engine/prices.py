"""What requests cost: the price table of well-known models, prices from flags, and the upper
bound of a prompt's tokens that every request reserves before it is sent."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

# Dollars per million prompt and completion tokens, as the providers list them (November 2026
# list prices of OpenAI's API). --price_prompt/--price_completion override; other models are
# priced only when those flags are given.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}
# What a request through the provider's Batch API costs, dollars per million prompt and completion
# tokens: OpenAI lists half of each price above for work that may take up to 24 hours.
# --batch_discount overrides; a model priced only by flags pays its full price in a batch unless
# --batch_discount says otherwise (an unknown discount must not let --max_cost be passed).
BATCH_PRICES: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo-instruct": (0.75, 1.00),
    "gpt-3.5-turbo": (0.25, 0.75),
    "gpt-4o": (1.25, 5.00),
    "gpt-4o-mini": (0.075, 0.30),
    "gpt-4.1": (1.00, 4.00),
    "gpt-4.1-mini": (0.20, 0.80),
    "gpt-4.1-nano": (0.05, 0.20),
}
# Tokens a chat template may wrap around a prompt, on top of the prompt's own.
TEMPLATE_TOKENS = 32


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens; None when unknown (then no cost is shown or capped)."""

    prompt: float
    completion: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


def find_price(model: str, prompt: float | None, completion: float | None, local: bool = False) -> Price | None:
    """The price of a model: flags first, then the table (by name, dated snapshots included), a
    local model is free. Example: find_price("gpt-4o-mini-2024-07-18", None, None) -> Price(0.15, 0.6)"""
    if prompt is not None or completion is not None:
        if prompt is None or completion is None:
            raise ConfigError("--price_prompt and --price_completion go together (dollars per million tokens)")
        return Price(prompt, completion)
    if local:
        return Price(0.0, 0.0)
    known = _table_name(model, PRICES)
    return None if known is None else Price(*PRICES[known])


def _table_name(model: str, table: dict) -> str | None:
    """The table's name for `model` (a dated snapshot of a listed model is the model)."""
    name = model.rsplit("/", 1)[-1]
    for known in sorted(table, key=len, reverse=True):
        if name == known or name.startswith(known + "-"):
            return known
    return None


def find_batch_price(model: str, price: Price | None, options: Any) -> Price | None:
    """What the run pays for a request sent in a batch: the ordinary `price` times --batch_discount
    when given, else the table's batch rate when the ordinary price is the table's, else the
    ordinary price (no discount is assumed that nobody stated).

    Example: find_batch_price("gpt-4o-mini", Price(0.15, 0.6), options_without_flags) -> Price(0.075, 0.3)"""
    if price is None:
        return None
    discount = getattr(options, "batch_discount", None)
    if discount is not None:
        return Price(price.prompt * discount, price.completion * discount)
    known = _table_name(model, BATCH_PRICES)
    by_flags = getattr(options, "price_prompt", None) is not None or getattr(options, "price_completion", None) is not None
    if known is not None and not by_flags:
        return Price(*BATCH_PRICES[known])
    return price


def prompt_bound(prompt: str) -> int:
    """An upper bound of a prompt's tokens: every token is at least one byte for byte-level and
    SentencePiece tokenizers alike, plus what a chat template wraps around it."""
    return len(prompt.encode("utf-8")) + TEMPLATE_TOKENS




def format_cost(cost: float) -> str:
    """Example: format_cost(0.0123) -> '$0.0123'; format_cost(12.5) -> '$12.50'"""
    return f"${cost:.2f}" if cost >= 1 else f"${cost:.4f}"


def price_of(model: str, options: Any, local: bool) -> Price | None:
    """The price a run with these options pays for `model` (--price_prompt/--price_completion, the
    table, free when local). --max_cost without a known price is refused: it could not be kept."""
    price = find_price(model, getattr(options, "price_prompt", None), getattr(options, "price_completion", None),
                       local=local)
    if getattr(options, "max_cost", None) is not None and price is None:
        raise ConfigError(f"--max_cost needs the price of {model!r}: pass --price_prompt and --price_completion "
                          f"(dollars per million tokens)")
    return price
