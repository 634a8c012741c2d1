"""Custom kernels for lcplm (imports only torch and triton)."""
