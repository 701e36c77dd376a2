"""Request bodies of `t2l serve` (pydantic, strict types: `"5"` is not a number). Unknown top-level fields of the
OpenAI routes are ignored, as OpenAI-compatible servers do; the `t2l` extension and the adapter routes refuse them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_BATCH_DESCRIPTIONS = 64
MAX_STOP = 4
MAX_STOP_CHARS = 200


class T2LOptions(BaseModel):
    """`"t2l": {...}` in a completion body (the `openai` client's `extra_body`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    description: str | None = None
    scale: float = Field(1.0, allow_inf_nan=False)
    scaling: Literal["rslora", "lora"] = "rslora"
    name: str | None = Field(None, max_length=200)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str = Field(max_length=300)
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    t2l: T2LOptions | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    description: str | None = None
    descriptions: list[str] | None = Field(None, min_length=1, max_length=MAX_BATCH_DESCRIPTIONS)
    scale: float = Field(1.0, allow_inf_nan=False)
    scaling: Literal["rslora", "lora"] = "rslora"
    name: str | None = Field(None, max_length=200)
