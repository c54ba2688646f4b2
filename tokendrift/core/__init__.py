"""The library: the model, the diffusion processes, the objective, data, checkpoints, configs and the
Hub. Imports nothing of tokendrift outside this folder; its code (with jobs/ and schemas/) is what
makes results stale (tokendrift.core.utils.code_digest)."""
