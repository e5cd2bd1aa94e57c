//! PostgreSQL v3 protocol messages (see issue 3). No sockets, no policy.
