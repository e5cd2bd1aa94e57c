//! What is known about function names: which built-ins change state, which
//! return a different value on every call, which depend on the session, and
//! which are safe to run on a replica.

/// Functions whose call changes database or session state (or cannot run on
/// a hot standby). A statement calling one is never read-only.
pub(crate) fn is_side_effecting(name: &str) -> bool {
    matches!(
        name,
        "nextval"
            | "setval"
            | "set_config"
            | "txid_current"
            | "pg_current_xact_id"
            | "pg_notify"
            | "pg_advisory_lock"
            | "pg_advisory_lock_shared"
            | "pg_advisory_xact_lock"
            | "pg_advisory_xact_lock_shared"
            | "pg_try_advisory_lock"
            | "pg_try_advisory_lock_shared"
            | "pg_try_advisory_xact_lock"
            | "pg_try_advisory_xact_lock_shared"
            | "pg_advisory_unlock"
            | "pg_advisory_unlock_shared"
            | "pg_advisory_unlock_all"
            | "pg_terminate_backend"
            | "pg_cancel_backend"
            | "pg_reload_conf"
            | "pg_rotate_logfile"
            | "pg_switch_wal"
            | "pg_create_restore_point"
            | "pg_promote"
            | "pg_backup_start"
            | "pg_backup_stop"
            | "pg_log_backend_memory_contexts"
            | "pg_stat_statements_reset"
            | "pg_import_system_collations"
            | "pg_logical_emit_message"
            | "pg_drop_replication_slot"
            | "pg_copy_physical_replication_slot"
            | "pg_copy_logical_replication_slot"
            | "pg_replication_slot_advance"
            | "pg_logical_slot_get_changes"
            | "pg_logical_slot_get_binary_changes"
            | "pg_wal_replay_pause"
            | "pg_wal_replay_resume"
            | "pg_file_write"
            | "pg_file_unlink"
            | "pg_file_rename"
            | "pg_file_sync"
            | "pg_sequence_last_value"
    ) || name.starts_with("lo_")
        || name.starts_with("dblink")
        || name.starts_with("pg_stat_reset")
        || name.starts_with("pg_replication_origin_")
        || (name.starts_with("pg_create_") && name.ends_with("_replication_slot"))
        || name == "loread"
        || name == "lowrite"
}

/// Side-effecting functions ([`is_side_effecting`]) that may change rows of tables a
/// query can read: dblink's (its SQL may run on this database), and any name
/// [`is_side_effecting`] matches by its prefix alone but PostgreSQL does not have (a
/// user's `lo_restock`). The built-ins change settings, locks, sequences, large
/// objects, files, replication state or statistics: no table a result could be
/// cached from (sequences and catalogs never are).
pub(crate) fn writes_tables(name: &str) -> bool {
    let prefixed = [
        "lo_",
        "dblink",
        "pg_stat_reset",
        "pg_replication_origin_",
        "pg_create_",
    ];
    prefixed.iter().any(|p| name.starts_with(p))
        && !matches!(
            name,
            "lo_creat"
                | "lo_create"
                | "lo_open"
                | "lo_close"
                | "lo_lseek"
                | "lo_lseek64"
                | "lo_tell"
                | "lo_tell64"
                | "lo_truncate"
                | "lo_truncate64"
                | "lo_unlink"
                | "lo_import"
                | "lo_export"
                | "lo_get"
                | "lo_put"
                | "lo_from_bytea"
                | "pg_stat_reset"
                | "pg_stat_reset_shared"
                | "pg_stat_reset_single_table_counters"
                | "pg_stat_reset_single_function_counters"
                | "pg_stat_reset_slru"
                | "pg_stat_reset_replication_slot"
                | "pg_stat_reset_subscription_stats"
                | "pg_replication_origin_create"
                | "pg_replication_origin_drop"
                | "pg_replication_origin_oid"
                | "pg_replication_origin_session_setup"
                | "pg_replication_origin_session_reset"
                | "pg_replication_origin_session_is_setup"
                | "pg_replication_origin_session_progress"
                | "pg_replication_origin_xact_setup"
                | "pg_replication_origin_xact_reset"
                | "pg_replication_origin_advance"
                | "pg_replication_origin_progress"
                | "pg_create_physical_replication_slot"
                | "pg_create_logical_replication_slot"
                | "pg_create_restore_point"
        )
}

/// Session-level advisory locks (held past the transaction).
pub(crate) fn is_session_advisory_lock(name: &str) -> bool {
    matches!(
        name,
        "pg_advisory_lock"
            | "pg_advisory_lock_shared"
            | "pg_try_advisory_lock"
            | "pg_try_advisory_lock_shared"
    )
}

/// Functions whose result changes from call to call (or within a
/// transaction): never cache a result that used them.
pub(crate) fn is_volatile(name: &str) -> bool {
    matches!(
        name,
        "now"
            | "clock_timestamp"
            | "statement_timestamp"
            | "transaction_timestamp"
            | "timeofday"
            | "random"
            | "random_normal"
            | "setseed"
            | "gen_random_uuid"
            | "uuidv4"
            | "uuidv7"
            | "uuid_generate_v1"
            | "uuid_generate_v1mc"
            | "uuid_generate_v4"
            | "nextval"
            | "setval"
            | "currval"
            | "lastval"
            | "txid_current"
            | "pg_current_xact_id"
            | "txid_current_snapshot"
            | "pg_current_snapshot"
            | "array_shuffle"
            | "array_sample"
            // The one-argument form is from the current date (both are taken so).
            | "age"
            | "pg_sleep"
            | "pg_sleep_for"
            | "pg_sleep_until"
            | "pg_current_wal_lsn"
            | "pg_current_wal_insert_lsn"
            | "pg_last_wal_replay_lsn"
            | "pg_last_wal_receive_lsn"
            | "pg_last_xact_replay_timestamp"
            | "pg_is_in_recovery"
            // Sizes and files of relations, which writes change.
            | "pg_relation_size"
            | "pg_total_relation_size"
            | "pg_table_size"
            | "pg_indexes_size"
            | "pg_database_size"
            | "pg_tablespace_size"
            | "pg_relation_filenode"
            | "pg_relation_filepath"
            | "pg_filenode_relation"
            | "pg_conf_load_time"
            | "pg_blocking_pids"
            | "pg_safe_snapshot_blocking_pids"
            | "pg_xact_status"
            | "txid_status"
            // Volatile in the catalog too, though read-only; and the server's start,
            // which a restart changes with no write pgopt hears.
            | "pg_jit_available"
            | "pg_partition_tree"
            | "pg_partition_ancestors"
            | "pg_postmaster_start_time"
            // Indexes' and extended statistics' definitions, and names resolved in
            // the catalog at run time: DDL that changes no table's rows changes them
            // without ending cached results (see `Analysis::maintenance`).
            | "pg_get_indexdef"
            | "pg_get_statisticsobjdef"
            | "pg_get_statisticsobjdef_columns"
            | "pg_get_statisticsobjdef_expressions"
            | "pg_index_has_property"
            | "pg_index_column_has_property"
            | "to_regclass"
    ) || name.starts_with("pg_stat_get_")
}

/// Whether a value, given to a date/time input, may read the clock when the statement
/// runs: it holds a clock word ([`is_clock_word`]) as a word of its own — alone
/// (`' Now '`), with a time (`'today 10:00'`, `'10:00 tomorrow'`, `'today+1'`), or
/// in an element of an array or range literal (`'{now}'::timestamptz[]`,
/// `'[today,)'`). A result that used one is volatile. A value (an element) of up to 64
/// bytes but for spaces is taken as such whatever its other words (`'Today I
/// learned'` too: PostgreSQL's parser would refuse it as a date, but which words it
/// takes is not followed here); a longer one is not a date.
pub fn reads_clock(text: &str) -> bool {
    reads_clock_bytes(text.as_bytes())
}

/// [`reads_clock`] of bytes (not necessarily UTF-8).
pub fn reads_clock_bytes(value: &[u8]) -> bool {
    // C's isspace, as PostgreSQL's parser skips: \v too, which `trim_ascii` keeps.
    let space = |b: u8| b.is_ascii_whitespace() || b == 0x0b;
    let start = value.iter().position(|&b| !space(b)).unwrap_or(value.len());
    let value = &value[start..];
    let array = matches!(value.first(), Some(b'{' | b'[' | b'('));
    if !array && value.iter().filter(|&&b| !space(b)).nth(64).is_some() {
        return false;
    }
    // One pass: words (letters and `_`, so `is_today` is not `today`) in elements
    // (an array's or range's, split at its punctuation; a value is one element).
    // An array element's backslashes escape the next byte: `{"n\\ow"}` is `now`.
    let mut word = [0u8; 9];
    let mut word_len = 0usize;
    let (mut element_len, mut element_clock) = (0usize, false);
    let end_word = |word: &[u8; 9], len: usize| {
        (3..=9).contains(&len)
            && [&b"now"[..], b"today", b"tomorrow", b"yesterday"]
                .iter()
                .any(|c| word[..len].eq_ignore_ascii_case(c))
    };
    // Inside an element's double quotes only the closing quote ends it.
    let (mut quoted, mut escaped) = (false, false);
    for &b in value {
        if array && b == b'\\' && !escaped {
            escaped = true;
            continue;
        }
        let delimiter = array
            && !escaped
            && if quoted {
                b == b'"'
            } else {
                matches!(b, b'{' | b'}' | b'[' | b']' | b'(' | b')' | b',' | b'"')
            };
        escaped = false;
        if b.is_ascii_alphabetic() || b == b'_' {
            if word_len < word.len() {
                word[word_len] = b;
            }
            word_len += 1;
        } else {
            element_clock |= end_word(&word, word_len);
            word_len = 0;
        }
        if delimiter {
            if element_clock && element_len <= 64 {
                return true;
            }
            (element_len, element_clock) = (0, false);
            if b == b'"' {
                quoted = !quoted;
            }
        } else if !space(b) {
            element_len += 1;
        }
    }
    element_clock |= end_word(&word, word_len);
    element_clock && element_len <= 64
}

/// Date/time input words whose value is read from the clock when a statement runs
/// (`'now'::timestamptz`, `WHERE day = 'today'`): a result that used one is volatile.
pub fn is_clock_word(text: &str) -> bool {
    let t = text.trim();
    t.len() <= 9
        && ["now", "today", "tomorrow", "yesterday"]
            .iter()
            .any(|w| t.eq_ignore_ascii_case(w))
}

/// Functions whose result depends on the session (sequence state, backend,
/// settings read by name): read-only but not cacheable across sessions.
pub(crate) fn is_session_dependent(name: &str) -> bool {
    matches!(
        name,
        "currval"
            | "lastval"
            | "current_setting"
            | "pg_backend_pid"
            | "inet_client_addr"
            | "inet_client_port"
            | "pg_my_temp_schema"
            | "pg_is_other_temp_schema"
            | "pg_trigger_depth"
            | "txid_current_if_assigned"
            | "pg_current_xact_id_if_assigned"
            | "pg_listening_channels"
            | "pg_notification_queue_usage"
    )
}

/// Built-in functions known to be free of side effects. Anything not listed
/// here and not side-effecting is treated as a user function.
pub(crate) fn is_known_read_only(name: &str) -> bool {
    if is_volatile(name) && !is_side_effecting(name) || is_session_dependent(name) {
        return true;
    }
    if name.starts_with("regr_")
        || name.starts_with("has_")
        || name.starts_with("pg_get_")
        || name.starts_with("json_")
        || name.starts_with("jsonb_")
        || name.starts_with("array_")
        || name.starts_with("regexp_")
        // (But for the two that run a query given as text: what it reads, and calls,
        // is unknown.)
        || name.starts_with("ts_") && !matches!(name, "ts_stat" | "ts_rewrite")
        || name.starts_with("to_")
        || name.starts_with("make_")
        || name.starts_with("justify_")
        || name.starts_with("pg_size_")
    {
        return true;
    }
    matches!(
        name,
        // aggregates and window functions
        "count" | "sum" | "avg" | "min" | "max" | "string_agg" | "bool_and" | "bool_or"
            | "every" | "bit_and" | "bit_or" | "bit_xor" | "stddev" | "stddev_pop"
            | "stddev_samp" | "variance" | "var_pop" | "var_samp" | "corr" | "covar_pop"
            | "covar_samp" | "percentile_cont" | "percentile_disc" | "mode" | "any_value"
            | "rank" | "dense_rank" | "row_number" | "percent_rank" | "cume_dist" | "ntile"
            | "lag" | "lead" | "first_value" | "last_value" | "nth_value" | "grouping"
            | "range_agg" | "range_intersect_agg" | "xmlagg"
            // strings
            | "length" | "char_length" | "character_length" | "octet_length" | "bit_length"
            | "lower" | "upper" | "initcap" | "substr" | "substring" | "position" | "strpos"
            | "replace" | "translate" | "trim" | "btrim" | "ltrim" | "rtrim" | "lpad" | "rpad"
            | "left" | "right" | "repeat" | "reverse" | "split_part" | "concat" | "concat_ws"
            | "format" | "md5" | "sha224" | "sha256" | "sha384" | "sha512" | "encode"
            | "decode" | "ascii" | "chr" | "quote_ident" | "quote_literal" | "quote_nullable"
            | "starts_with" | "string_to_array" | "string_to_table" | "overlay" | "unistr"
            | "normalize" | "casefold" | "convert" | "convert_from" | "convert_to"
            | "crc32" | "crc32c"
            // numbers
            | "abs" | "ceil" | "ceiling" | "floor" | "round" | "trunc" | "sign" | "sqrt"
            | "cbrt" | "power" | "pow" | "exp" | "ln" | "log" | "log10" | "mod" | "div"
            | "pi" | "degrees" | "radians" | "sin" | "cos" | "tan" | "asin" | "acos"
            | "atan" | "atan2" | "sinh" | "cosh" | "tanh" | "greatest" | "least"
            | "width_bucket" | "gcd" | "lcm" | "factorial" | "scale" | "min_scale"
            | "trim_scale" | "erf" | "erfc" | "gamma" | "lgamma"
            // dates and times
            | "date_trunc" | "date_part" | "extract" | "isfinite" | "date_bin"
            | "date_add" | "date_subtract" | "timezone" | "overlaps"
            // arrays, sets, ranges
            | "cardinality" | "unnest" | "generate_series" | "generate_subscripts"
            | "lower_inc" | "upper_inc" | "lower_inf" | "upper_inf" | "isempty"
            | "range_merge" | "int4range" | "int8range" | "numrange" | "tsrange"
            | "tstzrange" | "daterange" | "multirange"
            // json and text search not caught by prefixes
            | "row_to_json" | "plainto_tsquery" | "phraseto_tsquery" | "websearch_to_tsquery"
            | "setweight" | "strip" | "numnode" | "querytree" | "tsvector_to_array"
            // types used as functions
            | "int2" | "int4" | "int8" | "float4" | "float8" | "numeric" | "text" | "varchar"
            | "bool" | "date" | "time" | "timestamp" | "timestamptz" | "interval" | "uuid"
            | "json" | "jsonb" | "bytea" | "inet" | "cidr" | "macaddr" | "money" | "char"
            | "bpchar" | "name" | "oid" | "regclass"
            // networks
            | "host" | "hostmask" | "netmask" | "network" | "masklen" | "broadcast" | "family"
            | "abbrev" | "set_masklen" | "inet_same_family" | "inet_merge"
            // misc and catalog
            | "nullif" | "coalesce" | "num_nulls" | "num_nonnulls" | "version"
            | "current_database" | "current_schema" | "current_schemas" | "current_user"
            | "session_user" | "current_role" | "current_catalog" | "pg_typeof" | "format_type"
            | "pg_relation_size" | "pg_total_relation_size" | "pg_table_size"
            | "pg_indexes_size" | "pg_database_size" | "pg_tablespace_size" | "pg_column_size"
            | "pg_relation_filenode" | "pg_relation_filepath" | "obj_description"
            | "col_description" | "shobj_description" | "pg_table_is_visible"
            | "pg_type_is_visible" | "pg_function_is_visible" | "pg_wal_lsn_diff"
            | "pg_postmaster_start_time" | "pg_conf_load_time" | "pg_encoding_to_char"
            | "pg_char_to_encoding" | "pg_column_compression" | "pg_input_is_valid"
            | "pg_input_error_info" | "pg_tablespace_location" | "pg_options_to_table"
            | "pg_settings_get_flags" | "pg_blocking_pids" | "pg_safe_snapshot_blocking_pids"
            | "pg_xact_status" | "txid_status" | "pg_visible_in_snapshot"
            | "pg_snapshot_xmin" | "pg_snapshot_xmax" | "pg_indexam_has_property"
            | "pg_index_has_property" | "pg_index_column_has_property"
            | "pg_partition_tree" | "pg_partition_root" | "pg_partition_ancestors"
            | "inet_server_addr" | "inet_server_port" | "pg_jit_available"
            | "row_security_active" | "xmlelement" | "xmlforest" | "xmlconcat" | "xpath"
            | "xpath_exists" | "xmlparse" | "xmlserialize" | "xml_is_well_formed"
            // catalog helpers (pg_dump's and psql's queries)
            | "acldefault" | "aclexplode" | "makeaclitem" | "pg_describe_object"
            | "pg_identify_object" | "pg_identify_object_as_address" | "pg_filenode_relation"
            | "pg_collation_is_visible" | "pg_conversion_is_visible"
            | "pg_opclass_is_visible" | "pg_operator_is_visible" | "pg_opfamily_is_visible"
            | "pg_statistics_obj_is_visible" | "pg_ts_config_is_visible"
            | "pg_ts_dict_is_visible" | "pg_ts_parser_is_visible"
            | "pg_ts_template_is_visible" | "pg_sequence_parameters"
            | "pg_column_is_updatable" | "pg_relation_is_updatable" | "pg_is_in_recovery"
            | "pg_relation_is_publishable"
    )
}

#[cfg(test)]
mod tests {
    use super::reads_clock;

    #[test]
    fn words_of_short_values_and_of_array_elements_read_the_clock() {
        for clock in [
            "now",
            "\u{b} Today ",
            "today 10:00",
            "today10:00",
            "now()",
            "{2020-01-01,now}",
            "[yesterday,)",
            r#"{"n\ow"}"#,
            "\u{b}{2020-01-01,2020-01-02,2020-01-03,2020-01-04,2020-01-05,2020-01-06,now}",
        ] {
            assert!(reads_clock(clock), "{clock:?}");
        }
        let prose =
            "a long sentence, of more than sixty-four letters, that says now somewhere in it";
        for plain in [
            "2020-01-01",
            "snow",
            "is_today",
            prose,
            &format!(r#"{{"text": "{prose}"}}"#),
            "",
        ] {
            assert!(!reads_clock(plain), "{plain:?}");
        }
    }
}
