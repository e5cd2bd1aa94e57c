//! Listener, client sessions, auth, pools, routing, admin console (see issues 3 and 7).
