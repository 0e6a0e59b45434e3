//! The configuration's layers, defaults and validation.

use super::*;

#[test]
fn defaults_validate() {
    Config::default().validate().unwrap();
}

#[test]
fn precedence_flags_over_file_over_defaults() {
    let mut cfg = Config::from_toml("port = 1111\ndb_port = 2222\n[rest]\nmax_rows = 5\n").unwrap();
    assert_eq!(cfg.port, 1111);
    assert_eq!(cfg.rest.max_rows, Some(5));
    assert_eq!(cfg.data_dir, PathBuf::from("./.oxibase"));
    let args = ServeArgs {
        port: Some(3333),
        ..Default::default()
    };
    cfg.apply(&args);
    assert_eq!(cfg.port, 3333, "flag/env beats file");
    assert_eq!(cfg.db_port, 2222, "file beats default");
}

#[test]
fn env_layer_is_read_and_flags_beat_env() {
    use clap::Parser;
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ServeArgs,
    }
    // clap reads env for the flag layer; a flag given on the command line wins.
    std::env::set_var("OXIBASE_DB_PORT", "4444");
    std::env::set_var("OXIBASE_LOG", "debug");
    let t = T::parse_from(["x", "--log", "warn"]);
    std::env::remove_var("OXIBASE_DB_PORT");
    std::env::remove_var("OXIBASE_LOG");
    assert_eq!(t.a.db_port, Some(4444));
    assert_eq!(t.a.log.as_deref(), Some("warn"));
}

#[test]
fn unknown_and_malformed_keys_are_errors() {
    assert!(Config::from_toml("prot = 1")
        .unwrap_err()
        .contains("unknown field"));
    assert!(Config::from_toml("port = \"x\"").is_err());
    assert!(Config::from_toml("port = 99999").is_err());
}

#[test]
fn well_known_secret_refuses_public_bind() {
    let mut cfg = Config {
        bind: vec!["0.0.0.0".into()],
        ..Config::default()
    };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("refusing"), "{err}");
    cfg.jwt_secret = Secret("a-different-secret-that-is-long-enough-xx".into());
    cfg.validate().unwrap();
    cfg.bind = vec!["localhost".into()];
    assert!(cfg.validate().is_err());
}

#[test]
fn dump_hides_secrets() {
    let cfg = Config {
        database_url: Some(Secret("postgres://u:pw@h/db".into())),
        ..Config::default()
    };
    let d = cfg.dump();
    assert!(!d.contains(DEFAULT_JWT_SECRET));
    assert!(!d.contains("pw@h"));
    assert!(d.contains("jwt_secret = \"***\""));
    assert!(format!("{cfg:?}").contains("***"));
}

#[test]
fn no_secret_reaches_the_dump_or_debug() {
    let cfg = Config::from_toml(
        "jwt_secret = \"jwt-secret-value-that-is-long-enough-0001\"\n\
         database_url = \"postgres://u:db-pass-0002@h/db\"\n\
         [auth]\nsmtp_url = \"smtp://u:smtp-pass-0003@mail:25\"\n\
         [functions]\nopenai_api_key = \"sk-0004\"\nanthropic_api_key = \"sk-0005\"\n\
         mistral_api_key = \"sk-0006\"\n",
    )
    .unwrap();
    let (dump, debug) = (cfg.dump(), format!("{cfg:?} {cfg:#?}"));
    for n in 1..=6 {
        let marker = format!("000{n}");
        assert!(!dump.contains(&marker), "dump shows secret {n}: {dump}");
        assert!(!debug.contains(&marker), "Debug shows secret {n}");
    }
    for key in ["jwt_secret", "database_url", "smtp_url", "openai_api_key"] {
        assert!(dump.contains(&format!("{key} = \"***\"")), "{key}: {dump}");
    }
    // Unset secrets stay absent, as before.
    assert!(!Config::default().dump().contains("database_url"));
}

#[test]
fn every_key_named_like_a_secret_is_a_secret() {
    // A new `*_key`, `*secret`, `*password` or credential URL typed as a plain string
    // would show in the dump: set each through its variable and look.
    let secretish = |k: &str| {
        k.ends_with("_key")
            || k.ends_with("secret")
            || k.ends_with("password")
            || ["database_url", "smtp_url"].contains(&k)
    };
    let mut checked = 0;
    for (path, default) in env::leaves() {
        let leaf = path.last().unwrap();
        if !secretish(leaf) || !(default.is_string() || default.is_null()) {
            continue;
        }
        let name = env::var_name(&path);
        let value = "marker-secret-value-that-is-long-enough-9999".to_string();
        let cfg = Config::from_layers(None, &ServeArgs::default(), &|k| {
            (k == name).then(|| value.clone())
        })
        .unwrap();
        let dump = cfg.dump();
        assert!(!dump.contains("9999"), "{name} shows in the dump");
        assert!(
            !format!("{cfg:?}").contains("9999"),
            "{name} shows in Debug"
        );
        checked += 1;
    }
    assert_eq!(checked, 7); // + dashboard.password
}

#[test]
fn provider_env_overrides_and_keys_stay_hidden() {
    let mut cfg = Config::from_toml(
        "[functions]\nopenai_api_key = \"sk-file\"\nmistral_base_url = \"http://m.test/v1\"\n",
    )
    .unwrap();
    let env = |k: &str| match k {
        "OPENAI_API_KEY" => Some("sk-env-secret".to_string()),
        "ANTHROPIC_BASE_URL" => Some("http://127.0.0.1:9/".to_string()),
        "MISTRAL_BASE_URL" => Some(String::new()),
        _ => None,
    };
    cfg.functions.apply_env(env);
    assert_eq!(
        cfg.functions.openai_api_key.as_ref().unwrap().expose(),
        "sk-env-secret"
    );
    assert_eq!(cfg.functions.anthropic_base_url, "http://127.0.0.1:9/");
    assert_eq!(
        cfg.functions.mistral_base_url, "http://m.test/v1",
        "empty = unset"
    );
    assert!(cfg.functions.anthropic_api_key.is_none());
    cfg.validate().unwrap();
    assert!(!format!("{cfg:?}").contains("sk-env-secret"));
    let d = cfg.dump();
    assert!(!d.contains("sk-env-secret"), "{d}");
    assert!(d.contains("openai_api_key = \"***\""), "{d}");
    cfg.functions.openai_base_url = "ftp://x".into();
    assert!(cfg.validate().is_err());
}

#[test]
fn example_file_documents_every_key() {
    let text = include_str!("../../config.example.toml");
    // Keys appear as `key = value` or, for optional ones, `# key = value`, under [section].
    let mut section = String::new();
    let mut documented = std::collections::BTreeSet::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') && l.ends_with(']') {
            section = l.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        let l = l.strip_prefix("# ").unwrap_or(l);
        if let Some((k, _)) = l.split_once(" = ") {
            if k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                documented.insert(if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                });
            }
        }
    }
    let keys: std::collections::BTreeSet<String> = Config::key_paths().into_iter().collect();
    assert_eq!(documented, keys, "config.example.toml and Config disagree");
    // And the uncommented part of the example parses as a Config.
    Config::from_toml(text).unwrap();
}
