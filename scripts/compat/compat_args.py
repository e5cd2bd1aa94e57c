"""The command line shared by the compatibility checks (check.py, check_asyncpg.py):
the same flags, the same environment variables (flags win), the same check subsets."""

import argparse
import os


def parse_args(argv, checks, description):
    env = os.environ.get
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default=env("PGOPT_COMPAT_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("PGOPT_COMPAT_PORT", "6432")))
    p.add_argument("--db", default=env("PGOPT_COMPAT_DB", "compat"))
    p.add_argument("--user", default=env("PGOPT_COMPAT_USER", "compat_app"))
    p.add_argument("--password", default=env("PGOPT_COMPAT_PASSWORD"))
    p.add_argument("--mode", choices=["transaction", "session"],
                   default=env("PGOPT_COMPAT_MODE", "transaction"))
    p.add_argument("--auth", choices=["scram-sha-256", "md5", "trust"],
                   default=env("PGOPT_COMPAT_AUTH", "scram-sha-256"))
    p.add_argument("--pool-size", type=int, default=int(env("PGOPT_COMPAT_POOL_SIZE", "0")))
    p.add_argument("--checks", default=env("PGOPT_COMPAT_CHECKS", ",".join(checks)))
    args = p.parse_args(argv)
    args.checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in args.checks if c not in checks]
    if unknown:
        p.error(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(checks)}")
    return args
