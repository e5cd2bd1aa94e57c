//! Statement analysis: fingerprints, normalization, tables, read-only verdicts (see issue 4).
