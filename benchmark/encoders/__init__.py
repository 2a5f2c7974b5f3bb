"""Encoders: backbone architectures, the normalising wrapper, checkpoints, SSL recipes."""

from daebench.encoders.backbones import ENCODERS, Encoder, build_encoder

__all__ = ["ENCODERS", "Encoder", "build_encoder"]
