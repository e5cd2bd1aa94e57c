use super::*;

fn err(text: &str) -> String {
    parse_text("pgopt.toml", text).unwrap_err().to_string()
}

#[test]
fn defaults_need_no_file() {
    let loaded = load(None, &[]).unwrap();
    assert_eq!(loaded.config.demo.clients.get(), 4);
    assert_eq!(loaded.config.proxy.pool_mode, proxy::PoolMode::Transaction);
}

#[test]
fn checks_after_parsing_name_the_line_of_their_key() {
    let text = "[proxy]\nauth = \"hba\" # rules\n\n[[proxy.databases]]\nname = \"a\"\n\
                upstream = \"postgres://h/a\"\n\n[[proxy.databases]]\nname = \"a\"\n\
                upstream = \"not a url\"\n";
    assert_eq!(line_of_key(text, "proxy.auth"), Some(2));
    assert_eq!(line_of_key(text, "proxy.databases[0].upstream"), Some(6));
    assert_eq!(line_of_key(text, "proxy.databases[1].upstream"), Some(10));
    assert_eq!(line_of_key(text, "proxy.databases[1]"), Some(8));
    assert_eq!(line_of_key(text, "proxy.databases[2]"), None);
    assert_eq!(line_of_key(text, "proxy.listen"), None);
    let path = std::env::temp_dir().join(format!("pgopt-at-line-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let message = at_line(
        Some(&path),
        "proxy.databases[1]: a database named \"a\" is already configured",
    );
    assert_eq!(
        message,
        format!(
            "{}:8: proxy.databases[1]: a database named \"a\" is already configured",
            path.display()
        )
    );
    // A key the file lacks (set by an environment variable): as it was.
    assert_eq!(
        at_line(Some(&path), "proxy.listen: bad"),
        "proxy.listen: bad"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = err("[demo]\nscale = 1.0\nscal = 2\n");
    assert!(
        e.starts_with("pgopt.toml:3: demo.scal: unknown key `scal`; expected"),
        "{e}"
    );
}

#[test]
fn unknown_section_is_refused() {
    let e = err("[logging]\nlevel = \"info\"\n\n[cache_tier]\nttl = \"1s\"\n");
    assert!(
        e.starts_with("pgopt.toml:4: cache_tier: unknown key"),
        "{e}"
    );
}

#[test]
fn wrong_type_says_what_was_expected() {
    let e = err("[demo]\n\nclients = \"many\"\n");
    assert_eq!(
        e,
        "pgopt.toml:3: demo.clients: expected an integer from 1 to 256, found string \"many\""
    );
}

#[test]
fn out_of_range_values_fail_on_their_line() {
    let e = err("[demo]\nscale = 0\n");
    assert!(
        e.starts_with("pgopt.toml:2: demo.scale: expected a scale above 0"),
        "{e}"
    );
    let e = err("[proxy]\ndefault_pool_size = 0\n");
    assert_eq!(
        e,
        "pgopt.toml:2: proxy.default_pool_size: expected an integer from 1 to 10000, found 0"
    );
}

#[test]
fn bad_enum_and_duration_and_address() {
    let e = err("[proxy]\npool_mode = \"statement-ish\"\n");
    assert!(e.starts_with("pgopt.toml:2: proxy.pool_mode: expected `session` or `transaction`, found `statement-ish`"), "{e}");
    let e = err("[demo]\nduration = \"10 parsecs\"\n");
    assert!(
        e.starts_with("pgopt.toml:2: demo.duration: expected a duration like"),
        "{e}"
    );
    let e = err("[proxy]\nlisten = \"localhost\"\n");
    assert!(e.starts_with("pgopt.toml:2: proxy.listen:"), "{e}");
}

#[test]
fn syntax_errors_have_a_line() {
    let e = err("[logging]\nlevel = \"info\"\n[demo\n");
    assert!(e.starts_with("pgopt.toml:3: "), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn a_file_that_cannot_be_read_is_named() {
    let e = load(Some(Path::new("/nonexistent/pgopt.toml")), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/nonexistent/pgopt.toml: cannot read the config file"),
        "{e}"
    );
}

#[test]
fn environment_overrides_keys() {
    let overrides = vec![
        ("PGOPT_DEMO__SCALE".to_string(), "0.5".to_string()),
        (
            "PGOPT_PROXY__LISTEN".to_string(),
            "127.0.0.1:7000".to_string(),
        ),
        ("PGOPT_LOGGING__LEVEL".to_string(), "debug".to_string()),
    ];
    let loaded = load(None, &overrides).unwrap();
    assert_eq!(loaded.config.demo.scale.0, 0.5);
    assert_eq!(loaded.config.proxy.listen.port(), 7000);
    assert_eq!(loaded.config.logging.level, LogLevel::Debug);
}

#[test]
fn environment_beats_the_file() {
    let path = std::env::temp_dir().join(format!("pgopt-env-{}.toml", std::process::id()));
    std::fs::write(&path, "[demo]\nclients = 8\nseed = 7\n").unwrap();
    let overrides = vec![("PGOPT_DEMO__CLIENTS".to_string(), "2".to_string())];
    let loaded = load(Some(&path), &overrides).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.config.demo.clients.get(), 2);
    assert_eq!(loaded.config.demo.seed, 7);
}

#[test]
fn a_bad_environment_override_is_named() {
    let overrides = vec![("PGOPT_DEMO__CLIENTS".to_string(), "0".to_string())];
    let e = load(None, &overrides).unwrap_err().to_string();
    assert_eq!(e, "environment variable PGOPT_DEMO__CLIENTS: demo.clients: expected an integer from 1 to 256, found 0");
    let overrides = vec![("PGOPT_DEMO__COLOUR".to_string(), "red".to_string())];
    let e = load(None, &overrides).unwrap_err().to_string();
    assert!(
        e.starts_with("environment variable PGOPT_DEMO__COLOUR: demo.colour: unknown key"),
        "{e}"
    );
}

/// The documented example at the repository root must parse and show the real defaults.
#[test]
fn example_config_is_valid_and_documents_the_defaults() {
    let text = include_str!("../../../../pgopt.example.toml");
    let example = parse_text("pgopt.example.toml", text).unwrap();
    assert_eq!(
        toml::to_string(&example).unwrap(),
        toml::to_string(&Config::default()).unwrap(),
        "pgopt.example.toml drifted from the defaults in code"
    );
}

#[test]
fn printed_config_reads_back() {
    let text = toml::to_string_pretty(&Config::default()).unwrap();
    parse_text("printed", &text).unwrap();
}

#[test]
fn cache_rules_and_redis_are_read_and_checked() {
    let text = "[cache]\nenabled = true\nauto = false\nfingerprints = [\"ec2a7271cedbd52d\"]\n\
                table_ttl = { prices = \"5s\" }\n\n[cache.redis]\nurl = \"redis://127.0.0.1:6379\"\n\
                hmac_key = \"k\"\n";
    let config = parse_text("pgopt.toml", text).unwrap();
    let settings = config.cache.settings();
    assert!(!settings.auto);
    assert_eq!(settings.fingerprints, [0xec2a7271cedbd52d]);
    assert_eq!(
        settings.table_ttl,
        [("prices".to_string(), std::time::Duration::from_secs(5))]
    );
    let redis = settings.redis.unwrap();
    assert_eq!(redis.url, "redis://127.0.0.1:6379");
    assert_eq!(redis.hmac_key.as_deref(), Some(&b"k"[..]));
    assert!(parse_text("pgopt.toml", "[cache]\n")
        .unwrap()
        .cache
        .settings()
        .redis
        .is_none());

    let e = err("[cache]\nwal_max_lag = \"1ms\"\n");
    assert!(e.starts_with("pgopt.toml:2: cache.wal_max_lag"), "{e}");
    assert!(e.contains("at least \"100ms\""), "{e}");
    for fine in ["0s", "100ms", "5s"] {
        parse_text(
            "pgopt.toml",
            &format!("[cache]\nwal_max_lag = \"{fine}\"\n"),
        )
        .unwrap();
    }

    let e = err("[cache.redis]\nprefix = \"app{1}:\"\n");
    assert!(e.starts_with("pgopt.toml:2: cache.redis.prefix"), "{e}");
    assert!(e.contains("hash tags"), "{e}");
    let parsed = parse_text("pgopt.toml", "[cache.redis]\nprefix = \"app1:\"\n").unwrap();
    assert_eq!(parsed.cache.redis.prefix, "app1:");
    let e = err("[cache]\ncatalog_refresh = \"500ms\"\n");
    assert!(e.starts_with("pgopt.toml:2: cache.catalog_refresh"), "{e}");
    assert!(e.contains("at least \"1s\""), "{e}");
    let parsed = parse_text("pgopt.toml", "[cache]\ncatalog_refresh = \"2m\"\n").unwrap();
    assert_eq!(
        parsed.cache.settings().catalog_refresh,
        std::time::Duration::from_secs(120)
    );

    let e = err("[cache]\nfingerprints = [\"not hex\"]\n");
    assert!(e.starts_with("pgopt.toml:2: cache.fingerprints"), "{e}");
    assert!(e.contains("16 hex digits"), "{e}");
    let e = err("[cache.redis]\nurl = \"redis://x\"\nttl = \"1s\"\n");
    assert!(
        e.starts_with("pgopt.toml:3: cache.redis.ttl: unknown key"),
        "{e}"
    );
}

#[test]
fn a_bad_database_url_is_named_with_its_line() {
    let e = err("[proxy]\nupstream = \"postgres://a@h/db\"\n\n[[proxy.databases]]\nname = \"r\"\nupstream = \"mysql://h/r\"\n");
    assert!(
        e.starts_with("pgopt.toml:6: proxy.databases[0].upstream: expected postgres://"),
        "{e}"
    );
    let e = err("[[proxy.databases]]\nupstream = \"postgres://a@h/r\"\nreplica = []\n");
    assert!(
        e.starts_with("pgopt.toml:3: proxy.databases[0].replica: unknown key"),
        "{e}"
    );
}

#[test]
fn databases_take_a_name_an_upstream_and_replicas() {
    let config = parse_text(
        "pgopt.toml",
        "[[proxy.databases]]\nupstream = \"postgres://a@h:5433/r\"\nreplicas = [{ host = \"h2\" }]\n",
    )
    .unwrap();
    let db = &config.proxy.databases[0];
    assert_eq!(
        (db.name.as_str(), db.upstream.0.as_str()),
        ("", "postgres://a@h:5433/r")
    );
    assert_eq!(db.replicas[0].port, 5432);
    assert_eq!(db.replicas[0].weight.get(), 1);
}

#[test]
fn databases_take_their_own_pool_settings() {
    let config = parse_text(
        "pgopt.toml",
        "[proxy]\npool_mode = \"transaction\"\n\n[[proxy.databases]]\nname = \"reports\"\n\
         upstream = \"postgres://a@h/r\"\npool_mode = \"session\"\npool_size = 3\n\
         min_pool_size = 1\nreserve_pool_size = 2\n\n[[proxy.databases]]\nupstream = \"postgres://a@h/s\"\n",
    )
    .unwrap();
    let own = config.proxy.databases[0].pool();
    assert_eq!(own.mode, Some(pgopt_proxy::PoolMode::Session));
    assert_eq!(
        (own.size, own.min_size, own.reserve_size),
        (Some(3), Some(1), Some(2))
    );
    assert_eq!(
        config.proxy.databases[1].pool(),
        pgopt_proxy::DatabasePool::default()
    );
    // Printed back, only the keys that were set appear, and read back the same.
    let printed = toml::to_string(&config).unwrap();
    let again = parse_text("printed", &printed).unwrap();
    assert_eq!(again.proxy.databases[0].pool(), own);
    assert_eq!(
        again.proxy.databases[1].pool(),
        pgopt_proxy::DatabasePool::default()
    );
}

#[test]
fn a_bad_database_pool_setting_is_named_with_its_line() {
    let e = err("[[proxy.databases]]\nupstream = \"postgres://a@h/r\"\npool_size = 0\n");
    assert_eq!(
        e,
        "pgopt.toml:3: proxy.databases[0].pool_size: expected an integer from 1 to 10000, found 0"
    );
    let e = err(
        "[[proxy.databases]]\nupstream = \"postgres://a@h/r\"\n\n[[proxy.databases]]\n\
         upstream = \"postgres://a@h/s\"\npool_mode = \"statement\"\n",
    );
    assert!(
        e.starts_with(
            "pgopt.toml:6: proxy.databases[1].pool_mode: expected `session` or `transaction`, found `statement`"
        ),
        "{e}"
    );
    let e = err("[[proxy.databases]]\nupstream = \"postgres://a@h/r\"\nmin_pool_size = -1\n");
    assert!(
        e.starts_with(
            "pgopt.toml:3: proxy.databases[0].min_pool_size: expected an integer from 0 to 10000"
        ),
        "{e}"
    );
    let e = err("[[proxy.databases]]\nupstream = \"postgres://a@h/r\"\npool_size = \"big\"\n");
    assert!(
        e.starts_with("pgopt.toml:3: proxy.databases[0].pool_size: expected an integer from 1 to 10000, found string"),
        "{e}"
    );
}

#[test]
fn auth_query_cache_ttl_is_a_duration_named_with_its_line() {
    let e = err("[proxy]\nauth_query_cache_ttl = \"soon\"\n");
    assert!(
        e.starts_with("pgopt.toml:2: proxy.auth_query_cache_ttl: expected"),
        "{e}"
    );
    let off = parse_text("pgopt.toml", "[proxy]\nauth_query_cache_ttl = \"0s\"\n").unwrap();
    assert!(off.proxy.auth_query_cache_ttl.0.is_zero());
    let loaded = load(None, &[]).unwrap();
    assert_eq!(
        loaded.config.proxy.auth_query_cache_ttl.0,
        std::time::Duration::from_secs(60)
    );
}

#[test]
fn wal_password_comes_from_the_environment_and_is_printed_masked() {
    let overrides = vec![
        ("PGOPT_CACHE__WAL_USER".to_string(), "walreader".to_string()),
        (
            "PGOPT_CACHE__WAL_PASSWORD".to_string(),
            "s3cret-pw".to_string(),
        ),
    ];
    let loaded = load(None, &overrides).unwrap();
    let settings = loaded.config.cache.settings();
    assert_eq!(settings.wal_user.as_deref(), Some("walreader"));
    assert_eq!(settings.wal_password.as_deref(), Some("s3cret-pw"));
    let printed = toml::to_string_pretty(&loaded.config).unwrap();
    assert!(!printed.contains("s3cret-pw"), "{printed}");
    assert!(
        printed.contains(&format!("wal_password = \"{}\"", super::MASK)),
        "{printed}"
    );
    // Unset, it prints as unset (the example config shows the default).
    let printed = toml::to_string_pretty(&Config::default()).unwrap();
    assert!(printed.contains("wal_password = \"\""), "{printed}");
}

#[test]
fn config_print_masks_every_secret() {
    let text = r#"
[proxy]
upstream = "postgres://app:upstream-pw@127.0.0.1:5432/shop"
users = [{ name = "alice", password = "alice-pw" }]
databases = [{ name = "other", upstream = "postgres://app:other-pw@127.0.0.1:5433/other" }]

[cache.redis]
url = "redis://:redis-pw@127.0.0.1:6379,redis://user:node-pw@127.0.0.1:6380/0"
hmac_key = "hmac-secret"
"#;
    let config = parse_text("pgopt.toml", text).unwrap();
    let printed = toml::to_string_pretty(&config).unwrap();
    for secret in [
        "upstream-pw",
        "alice-pw",
        "other-pw",
        "redis-pw",
        "node-pw",
        "hmac-secret",
    ] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
    // What is not secret stays readable.
    for shown in [
        "postgres://app:********@127.0.0.1:5432/shop",
        "postgres://app:********@127.0.0.1:5433/other",
        "redis://:********@127.0.0.1:6379,redis://user:********@127.0.0.1:6380/0",
        "hmac_key = \"********\"",
        "name = \"alice\"",
    ] {
        assert!(printed.contains(shown), "{shown} not in {printed}");
    }
    assert_eq!(
        mask_url_passwords("postgres://app@h/db?sslmode=require"),
        "postgres://app@h/db?sslmode=require"
    );
    assert_eq!(mask_url_passwords("not a url"), "not a url");
    // A host list, and a comma in a password: one URL; a scheme after a comma: two.
    assert_eq!(
        mask_url_passwords("postgres://app:p,w@h1:5432,h2:5433/db"),
        "postgres://app:********@h1:5432,h2:5433/db"
    );
    assert_eq!(
        mask_url_passwords("redis://:a@r1:6379,rediss://u:b,c@r2:6380"),
        "redis://:********@r1:6379,rediss://u:********@r2:6380"
    );
    assert_eq!(
        mask_url_passwords("redis://:a@r1:6379, redis://:b@r2:6380"),
        "redis://:********@r1:6379, redis://:********@r2:6380"
    );
    assert_eq!(
        mask_url_passwords("postgres://app:pa?s@s@db/shop"),
        "postgres://app:********@db/shop"
    );
    assert_eq!(
        mask_url_passwords("postgres://app@/shop?host=/run/pg&password=x&sslmode=disable"),
        "postgres://app@/shop?host=/run/pg&password=********&sslmode=disable"
    );
}

#[test]
fn keepalive_timings_the_kernel_would_refuse_are_config_errors() {
    for bad in ["500ms", "10h", "1.5s"] {
        let e = err(&format!("[proxy]\ntcp_keepidle = \"{bad}\"\n"));
        assert!(
            e.starts_with("pgopt.toml:2: proxy.tcp_keepidle: expected whole seconds"),
            "{e}"
        );
    }
    let e = err("[proxy]\ntcp_keepcnt = 200\n");
    assert!(e.starts_with("pgopt.toml:2: proxy.tcp_keepcnt:"), "{e}");
    let ok = parse_text(
        "pgopt.toml",
        "[proxy]\ntcp_keepidle = \"30s\"\ntcp_keepintvl = \"0s\"\n",
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
    // TCP_USER_TIMEOUT takes milliseconds, with or without keepalive.
    let ok = parse_text(
        "pgopt.toml",
        "[proxy]\ntcp_keepalive = false\ntcp_user_timeout = \"2500ms\"\n",
    )
    .unwrap();
    assert_eq!(
        ok.proxy.tcp_user_timeout.0,
        std::time::Duration::from_millis(2500)
    );
    let e = err("[proxy]\ntcp_user_timeout = \"soon\"\n");
    assert!(
        e.starts_with("pgopt.toml:2: proxy.tcp_user_timeout:"),
        "{e}"
    );
}

#[test]
fn unix_socket_settings_are_checked_as_read() {
    let loaded = parse_text(
        "pgopt.toml",
        "[proxy]\nunix_socket_dir = \"/run/pgopt/\"\nunix_socket_mode = \"0660\"\n\
         unix_socket_group = \"pgopt-clients\"\nso_reuseport = true\n\
         listen_also = [\"10.0.0.5:0\"]\n",
    )
    .unwrap();
    assert_eq!(loaded.proxy.unix_socket_group, "pgopt-clients");
    assert!(loaded.proxy.so_reuseport);
    assert_eq!(
        loaded.proxy.listen_also,
        vec!["10.0.0.5:0".parse::<std::net::SocketAddr>().unwrap()]
    );
    let e = err("[proxy]\nlisten_also = [\"localhost\"]\n");
    assert!(e.starts_with("pgopt.toml:2: proxy.listen_also"), "{e}");
    assert_eq!(
        loaded.proxy.unix_socket_dir,
        proxy::SocketDir(Some("/run/pgopt".into()))
    );
    assert_eq!(loaded.proxy.unix_socket_mode, proxy::FileMode(0o660));
    let e = err("[proxy]\nunix_socket_dir = \"run/pgopt\"\n");
    assert!(
        e.starts_with("pgopt.toml:2: proxy.unix_socket_dir: expected an absolute directory path"),
        "{e}"
    );
    for bad in ["\"0999\"", "\"1777\"", "660"] {
        let e = err(&format!("[proxy]\n\nunix_socket_mode = {bad}\n"));
        assert!(
            e.starts_with("pgopt.toml:3: proxy.unix_socket_mode: expected"),
            "{bad}: {e}"
        );
    }
}
