"""lcplm: long-context protein language models (LC-PLM BiMamba-S and genome-scale sparse attention)."""

__version__ = "0.1.0"
