//! TLS keys of a frontend entry (`ssl`, `cert`, `key`, `certReload`): read with the paths made
//! absolute, and every bad file refused at load (missing, not PEM, no certificate, no key, a
//! key of another certificate, expired, not yet valid) with an error naming the servers file,
//! the environment, the entry, the key and the PEM file. Certificates are made here with rcgen.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use kennel_config::settings::{ConnectorConfig, TlsSettings, read_cert_and_key};
use kennel_config::{ConfigError, Problem};
use rcgen::{CertificateParams, KeyPair, date_time_ymd};
use serde_json::{Value, json};

const ENTRY: &str = "entry connector[0] (\"connector-server-1\")";

/// A self-signed certificate for localhost valid from `from` to `until` (years), and its key.
fn cert(from: i32, until: i32) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.not_before = date_time_ymd(from, 1, 1);
    params.not_after = date_time_ymd(until, 1, 1);
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// A project whose frontend entry has `extra`, with `files` ((name, text)) written under
/// `tls/` in the project dir.
fn frontend(extra: Value, files: &[(&str, &str)]) -> tempfile::TempDir {
    let mut entry = json!({"id": "connector-server-1", "port": 4021, "frontend": true,
        "clientPort": 4001, "connector": "ws"});
    entry
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let dir = with_servers(
        &json!({"connector": [entry], "chat": [{"id": "chat-server-1", "port": 4101}]}).to_string(),
    );
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("tls").join(name), text).unwrap();
    }
    dir
}

fn ssl() -> Value {
    json!({"ssl": true, "cert": "tls/cert.pem", "key": "tls/key.pem"})
}

/// The load fails with a `Problem::Setting` on `key`, the message naming every needle, and
/// the rendered error naming servers.json, the environment and the entry.
fn refused(dir: &Path, key: &str, needles: &[&str]) {
    let key_part = format!("`{key}`");
    let mut all = vec![
        "servers.json",
        "environment \"development\"",
        ENTRY,
        &key_part,
    ];
    all.extend_from_slice(needles);
    let err = load_err(dir, &all);
    let ConfigError::Invalid { problem, .. } = &err else {
        panic!("{err:?}")
    };
    let Problem::Setting { key: k, .. } = problem.as_ref() else {
        panic!("{err:?}")
    };
    assert_eq!(k, key, "{err}");
}

#[test]
fn a_valid_certificate_loads_with_absolute_paths_and_the_default_reload() {
    let (c, k) = cert(2020, 4000);
    let dir = frontend(ssl(), &[("cert.pem", &c), ("key.pem", &k)]);
    let p = load(dir.path()).unwrap();
    let s = &p.server("connector-server-1").unwrap().settings;
    assert_eq!(
        s.connector.tls,
        Some(TlsSettings {
            cert: dir.path().join("tls/cert.pem"),
            key: dir.path().join("tls/key.pem"),
            reload: Some(Duration::from_secs(10)),
        })
    );
    // The runtime connector config is untouched: TLS is the entry's alone.
    assert_eq!(
        ConnectorConfig::from(&s.connector).transport,
        kennel_config::settings::Transport::WebSocket
    );
    // The keys stay in `extra` for the game, as mydog's do.
    assert_eq!(
        p.server("connector-server-1").unwrap().info.extra["ssl"],
        json!(true)
    );

    let mut extra = ssl();
    extra["certReload"] = json!(0);
    let dir = frontend(extra, &[("cert.pem", &c), ("key.pem", &k)]);
    let p = load(dir.path()).unwrap();
    let tls = p
        .server("connector-server-1")
        .unwrap()
        .settings
        .connector
        .tls
        .clone();
    assert_eq!(
        tls.unwrap().reload,
        None,
        "certReload 0: only on reload-tls"
    );

    // An absolute path stays as written.
    let abs = dir.path().join("tls/cert.pem");
    let extra = json!({"ssl": true, "cert": abs, "key": "tls/key.pem"});
    let other = frontend(extra, &[("cert.pem", &c), ("key.pem", &k)]);
    let p = load(other.path()).unwrap();
    let tls = p
        .server("connector-server-1")
        .unwrap()
        .settings
        .connector
        .tls
        .clone();
    assert_eq!(tls.unwrap().cert, abs);
}

#[test]
fn without_ssl_cert_and_key_are_game_keys() {
    let dir = frontend(json!({"ssl": false, "cert": 5, "key": {"a": 1}}), &[]);
    let p = load(dir.path()).unwrap();
    let s = p.server("connector-server-1").unwrap();
    assert_eq!(s.settings.connector.tls, None);
    assert_eq!(s.info.extra["key"], json!({"a": 1}));
    let p = load(frontend(json!({"key": "not a file"}), &[]).path()).unwrap();
    assert_eq!(
        p.server("connector-server-1")
            .unwrap()
            .settings
            .connector
            .tls,
        None
    );
}

#[test]
fn ssl_without_its_files_is_refused() {
    refused(
        frontend(json!({"ssl": true, "key": "tls/key.pem"}), &[]).path(),
        "cert",
        &["`ssl` is true", "certificate's PEM file"],
    );
    refused(
        frontend(json!({"ssl": true, "cert": "tls/cert.pem"}), &[]).path(),
        "key",
        &["`ssl` is true", "private key's PEM file"],
    );
    refused(
        frontend(json!({"ssl": true, "cert": "", "key": "k"}), &[]).path(),
        "cert",
        &["non-empty string"],
    );
    refused(
        frontend(json!({"ssl": true, "cert": "c", "key": 7}), &[]).path(),
        "key",
        &["non-empty string", "found 7"],
    );
    let mut extra = ssl();
    extra["certReload"] = json!(100_000);
    refused(
        frontend(extra, &[]).path(),
        "certReload",
        &["from 0 to 86400"],
    );
    let err = load_err(
        frontend(json!({"ssl": "yes"}), &[]).path(),
        &["`ssl`", "invalid type"],
    );
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
}

#[test]
fn bad_certificate_files_are_refused_naming_the_file() {
    let (c, k) = cert(2020, 4000);
    let (_, other_key) = cert(2020, 4000);
    let (expired, expired_key) = cert(2000, 2001);
    let (future, future_key) = cert(3000, 4000);
    let dir = frontend(ssl(), &[("key.pem", &k)]);
    let cert_path = dir.path().join("tls/cert.pem").display().to_string();
    refused(
        dir.path(),
        "cert",
        &["cannot read", &cert_path, "No such file"],
    );

    let dir = frontend(ssl(), &[("cert.pem", &c)]);
    let key_path = dir.path().join("tls/key.pem").display().to_string();
    refused(dir.path(), "key", &["cannot read", &key_path]);

    for (cert_text, key_text, key, needles) in [
        ("junk", k.as_str(), "cert", &["is not a PEM file"][..]),
        (k.as_str(), k.as_str(), "cert", &["holds no certificate"]),
        (c.as_str(), c.as_str(), "key", &["holds no private key"]),
        (
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            k.as_str(),
            "cert",
            &["not a valid PEM file"],
        ),
        (
            c.as_str(),
            other_key.as_str(),
            "key",
            &["does not match the certificate in", "cert.pem"],
        ),
        (
            expired.as_str(),
            expired_key.as_str(),
            "cert",
            &["expired on", "2001", "renew it"],
        ),
        (
            future.as_str(),
            future_key.as_str(),
            "cert",
            &["not valid yet", "3000"],
        ),
    ] {
        let dir = frontend(ssl(), &[("cert.pem", cert_text), ("key.pem", key_text)]);
        refused(dir.path(), key, needles);
    }
}

#[test]
fn the_checked_pair_describes_itself_for_the_logs() {
    let (c, k) = cert(2020, 4000);
    let dir = frontend(json!({}), &[("cert.pem", &c), ("key.pem", &k)]);
    let got = read_cert_and_key(
        &dir.path().join("tls/cert.pem"),
        &dir.path().join("tls/key.pem"),
        std::time::SystemTime::now(),
    )
    .unwrap();
    assert_eq!(got.names, ["localhost", "127.0.0.1"]);
    let text = got.describe();
    assert!(
        text.contains("localhost, 127.0.0.1") && text.contains("4000"),
        "{text}"
    );
}

#[test]
fn commands_on_a_running_cluster_load_without_reading_the_files() {
    let dir = frontend(ssl(), &[("cert.pem", "junk")]);
    load_err(dir.path(), &["`cert`", "is not a PEM file"]);
    let p = kennel_config::Project::load_without_tls_files(dir.path(), "development").unwrap();
    let tls = p
        .server("connector-server-1")
        .unwrap()
        .settings
        .connector
        .tls
        .clone();
    assert_eq!(
        tls.unwrap().cert,
        dir.path().join("tls/cert.pem"),
        "paths still resolved"
    );
}
