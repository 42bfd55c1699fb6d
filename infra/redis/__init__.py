"""Redis: rooms shared by workers and hosts (`wschat serve` with `WSCHAT_REDIS_URL`)."""
