//! Result cache: L1 memory, L2 Redis, invalidation bus (see issue 6).
