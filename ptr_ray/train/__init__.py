"""Training stage: encode (mask, dropout, pack), the PTR loss, Ray Train + DeepSpeed, export."""
