"""Plain Python/torch utilities under every other package: atomic writes, RNG capture and seed streams, weight
packing and collective weight sync, loopback pinning. Nothing here imports the rest of diffrl."""
