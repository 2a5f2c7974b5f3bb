"""An encoder as a grid names it: an SSL recipe to pre-train on a dataset, or a checkpoint.

Core vocabulary (a defense declares its auxiliary encoders with it, a grid its victims).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EncoderSpec(BaseModel):
    """A victim encoder: pre-trained by the harness (`method` + `dataset`) or a `checkpoint`."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    method: str | None = None
    dataset: str | None = None
    checkpoint: str | None = None
    key_map: dict[str, str] | None = None
    arch: str = "resnet18"
    width: int = Field(64, ge=1, le=1024)
    conv1_padding: int | None = Field(None, ge=0, le=3, description="None: the architecture's own (resnet18: 2, as solo-learn)")
    normalization: Literal["cifar", "imagenet"] = "cifar"
    profile: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # What a checkpoint is, for the tables only (they label a victim by its SSL method and
    # group it by its pre-training data, as the paper does); the artifact is the file's.
    trained_with: str | None = Field(None, description="a checkpoint's SSL method, e.g. simclr")
    trained_on: str | None = Field(None, description="a checkpoint's pre-training data as tables name it, e.g. imagenet")

    @model_validator(mode="after")
    def _one_source(self) -> "EncoderSpec":
        if (self.method is None) == (self.checkpoint is None):
            raise ValueError("an encoder needs exactly one of `method` (+ `dataset`) to pre-train it, or `checkpoint`")
        if self.method is not None and (self.trained_with or self.trained_on):
            raise ValueError(f"encoder with method '{self.method}': `trained_with` / `trained_on` describe a "
                             "`checkpoint`; an encoder the harness pre-trains is described by `method` and `dataset`")
        if self.trained_with is not None:
            from daebench.encoders.ssl import SSL_METHODS

            if self.trained_with not in SSL_METHODS.names():
                raise ValueError(f"trained_with '{self.trained_with}' is not an SSL method; valid: "
                                 f"{', '.join(sorted(SSL_METHODS.names()))}")
        if self.method is not None and self.dataset is None:
            raise ValueError(f"encoder with method '{self.method}' needs `dataset` (its pre-training data D_p)")
        if self.name is None:
            self.name = f"{self.method}-{self.dataset}" if self.method else Path(self.checkpoint).stem
        return self
