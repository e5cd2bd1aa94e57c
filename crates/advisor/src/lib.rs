//! Health checks and index advisor against a live database (see issue 5).
