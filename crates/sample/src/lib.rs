//! The "saas" sample schema, data generator and workload.
