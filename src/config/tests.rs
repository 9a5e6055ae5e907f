use super::*;
use std::collections::HashMap;

fn load_str(yaml: &str, env: &[(&str, &str)]) -> Result<Settings, Diagnostics> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("easehook.yaml");
    std::fs::write(&path, yaml).unwrap();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let r = load(&path, &env);
    drop(dir);
    r
}

#[test]
fn minimal_config_gets_every_default() {
    let s = load_str(
        "secrets: {\"org#app\": [\"${EASEMOB_SECRET}\"]}\n",
        &[("EASEMOB_SECRET", "abcdefgh12345678")],
    )
    .unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.admin_listen.to_string(), "127.0.0.1:9464");
    assert_eq!(s.callback_path, "/easemob/callback");
    assert_eq!(s.max_body, 65536);
    assert_eq!(s.max_event_age, None);
    assert_eq!(s.dedup_window, Duration::from_secs(86400));
    assert_eq!(s.retention, Duration::from_secs(7 * 86400));
    assert_eq!(s.timezone, chrono_tz::Tz::Asia__Shanghai);
    assert_eq!(s.delivery, DeliverySettings::default());
    assert!(s.state_dir.ends_with("data"));
    assert!(s.rules_dir.ends_with("rules"));
    assert_eq!(s.smtp["default"].port, 587);
    assert_eq!(s.smtp["default"].tls, SmtpTls::Starttls);
    assert_eq!(
        s.secrets.for_appkey("org#app").unwrap()[0].expose(),
        "abcdefgh12345678"
    );
    assert!(s.secrets.for_appkey("other#app").is_none());
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn human_units_and_fallback_secrets() {
    let s = load_str(
            "secrets: {\"*\": [old-secret-1, new-secret-2]}\nmax_body: 1MiB\nmax_event_age: 5m\ndelivery: {timeout: 500ms}\nsmtp: {relay: {tls: tls}}\n",
            &[],
        )
        .unwrap();
    assert_eq!(s.max_body, 1 << 20);
    assert_eq!(s.max_event_age, Some(Duration::from_secs(300)));
    assert_eq!(s.delivery.timeout, Duration::from_millis(500));
    assert_eq!(s.smtp["relay"].port, 465);
    assert_eq!(s.secrets.for_appkey("any#app").unwrap().len(), 2);
    // Secrets written in the file itself deserve a warning.
    assert_eq!(s.warnings.len(), 2);
}

#[test]
fn every_problem_is_reported_at_once_and_no_secret_leaks() {
    let err = load_str(
        concat!(
            "secrets: {\"org#app\": [\"${EASEMOB_SECRET}\"]}\n",
            "listen: nowhere\n",
            "max_body: lots\n",
            "dedup_window: 10\n",
            "delivery: {max_attempts: 0, timeout: soon, max_backoff: later}\n",
            "smtp: {default: {prot: 25, tls: maybe}}\n",
            "timezone: Mars/Olympus\n",
            "colour: blue\n",
            "admin_token: ${ADMIN_TOKEN}\n",
            "callback_path: \"${EASEMOB_SECRET}\"\n",
        ),
        &[("EASEMOB_SECRET", "topsecretvalue")],
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "easehook.yaml: listen: \"nowhere\" is not an address",
        "easehook.yaml: max_body: invalid size \"lots\"",
        "easehook.yaml: dedup_window: invalid duration 10",
        "easehook.yaml: delivery.max_attempts: must be at least 1",
        "easehook.yaml: smtp.default.prot: unknown field `prot`",
        "easehook.yaml: smtp.default.tls: unknown variant `maybe`",
        "easehook.yaml: delivery.timeout: invalid duration \"soon\"",
        "easehook.yaml: delivery.max_backoff: invalid duration \"later\"",
        "easehook.yaml: timezone: unknown time zone",
        "easehook.yaml: colour: unknown field `colour`",
        "easehook.yaml: admin_token: environment variable ADMIN_TOKEN is not set",
        "easehook.yaml: callback_path: \"***\" must be a URL path",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("topsecretvalue"), "{text}");
    assert_eq!(err.len(), 12, "{text}");
}

#[test]
fn store_settings_are_checked_without_the_network_and_the_password_is_a_secret() {
    let ok = load_str(
        "secrets: {\"*\": [s3cretvalue]}\nstore: {type: postgres, url: '${DB_URL}', pool: 4}\n",
        &[(
            "DB_URL",
            "postgres://app:pa55word-x@db.internal:5432/easehook?sslmode=verify-full",
        )],
    )
    .unwrap();
    let StoreSettings::Postgres(pg) = &ok.store else {
        panic!("not postgres: {:?}", ok.store)
    };
    assert_eq!(pg.pool, 4);
    assert_eq!(
        pg.shown_url,
        "postgres://app:***@db.internal:5432/easehook?sslmode=verify-full"
    );
    assert!(!format!("{:?}", ok.store).contains("pa55word-x"));
    assert_eq!(
        ok.redactor.redact("auth pa55word-x failed"),
        "auth *** failed"
    );
    assert!(ok.secret_values().contains(&"pa55word-x".to_string()));
    let c = pg.driver_config().unwrap();
    assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    assert_eq!(c.get_dbname(), Some("easehook"));

    let err = load_str(
            concat!(
                "secrets: {\"*\": [s3cretvalue]}\n",
                "store: {type: postgres, url: 'mysql://root:hunter2-pw@db/x?sslmode=maybe', pool: 0, ca_file: /nonexistent/ca.pem}\n",
            ),
            &[],
        )
        .unwrap_err();
    let text = err.to_string();
    for needle in [
        "easehook.yaml: store.url: not a PostgreSQL URL",
        "easehook.yaml: store.pool: must be at least 2",
        "easehook.yaml: store.ca_file: /nonexistent/ca.pem is not a readable file",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("hunter2-pw"), "{text}");

    let err = load_str(
        "secrets: {\"*\": [s3cretvalue]}\nstore: {type: postgres}\n",
        &[],
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("easehook.yaml: store.url: required with `type: postgres`"),
        "{err}"
    );
    let err = load_str(
        "secrets: {\"*\": [s3cretvalue]}\nstore: {type: mongo}\n",
        &[],
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("store.type: unknown variant `mongo`"),
        "{err}"
    );
    // The default, and a URL left behind when going back to SQLite.
    let s = load_str("secrets: {\"*\": [s3cretvalue]}\n", &[]).unwrap();
    assert_eq!(s.store, StoreSettings::Sqlite);
    let s = load_str(
        "secrets: {\"*\": [s3cretvalue]}\nstore: {url: 'postgres://a:b@h/d'}\n",
        &[],
    )
    .unwrap();
    assert_eq!(s.store, StoreSettings::Sqlite);
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("store.url: is used only with `type: postgres`"))
    );
}

#[test]
fn postgres_urls_are_masked_in_both_forms() {
    assert_eq!(
        mask_postgres_url("postgresql://u:p%40ss@h:1/d"),
        "postgresql://u:***@h:1/d"
    );
    assert_eq!(
        mask_postgres_url("host=h user=u password=s3cret dbname=d"),
        "host=h user=u password=*** dbname=d"
    );
    assert_eq!(mask_postgres_url("postgres://u@h/d"), "postgres://u@h/d");
}

#[test]
fn missing_secrets_and_bad_yaml() {
    let err = load_str("listen: 127.0.0.1:1\n", &[]).unwrap_err();
    assert!(err.to_string().contains("secrets: required"), "{err}");
    let err = load_str("secrets: [unclosed\n", &[]).unwrap_err();
    assert!(err.to_string().contains("invalid YAML"), "{err}");
    assert!(err.to_string().contains("line "), "{err}");
}

#[test]
fn config_path_resolution() {
    let env: HashMap<String, String> =
        HashMap::from([("EASEHOOK_CONFIG".into(), "/x/y.yaml".into())]);
    assert_eq!(
        resolve_path(Some(Path::new("a.yaml")), &env),
        PathBuf::from("a.yaml")
    );
    assert_eq!(resolve_path(None, &env), PathBuf::from("/x/y.yaml"));
}
