"""Modeling code shipped inside every exported model directory (``lcplm export``).

``configuration_lcplm.py``, ``modeling_lcplm.py`` and ``reference_lcplm.py`` are copied next to
``config.json`` and ``model.safetensors``, and the directory's ``auto_map`` points at them, so
``transformers.AutoModelForMaskedLM.from_pretrained(DIR, trust_remote_code=True)`` loads a model
without lcplm installed. They import torch and transformers only (never lcplm): the networks in
``reference_lcplm.py`` are pure-PyTorch reference versions of lcplm's models (sequential selective
scan, dense masked attention), with lcplm's parameter names, so the exported weights load one to
one and the outputs equal lcplm's (``tests/models/test_io.py``).
"""
