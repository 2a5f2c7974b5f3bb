"""Encoders: backbone architectures, the normalising wrapper, checkpoints, SSL recipes."""

from benchmark.encoders.backbones import ENCODERS, Encoder, build_encoder

__all__ = ["ENCODERS", "Encoder", "build_encoder"]
