//! The `io` key of a frontend entry (`"epoll"`, the default, or `"uring"`): typed and checked by
//! `Project::load`; `uring` refused with a WebSocket connector or TLS, naming the file, the
//! environment, the entry and the key; a near miss warned about.

mod common;

use common::*;
use kennel_config::settings::{ConnectorConfig, Io, WarningKind};
use kennel_config::{ConfigError, Problem};
use serde_json::{Value, json};

/// The load fails with a problem for `io` naming the file, environment, entry and `what`.
fn refused(extra: Value, what: &str) {
    let dir = frontend_with(extra);
    let err = load_err(
        dir.path(),
        &[
            "config/sys/servers.json",
            "environment \"development\"",
            "entry connector[0] (\"connector-server-1\")",
            "`io`",
            what,
        ],
    );
    let ConfigError::Invalid { problem, .. } = &err else {
        panic!("{err:?}")
    };
    let Problem::Setting { key, .. } = problem.as_ref() else {
        panic!("{err:?}")
    };
    assert_eq!(key, "io", "{err}");
}

fn io_of(extra: Value) -> (Option<Io>, Io) {
    let p = load(frontend_with(extra).path()).unwrap();
    let s = &p.server("connector-server-1").unwrap().settings.connector;
    (s.io, ConnectorConfig::from(s).io)
}

#[test]
fn io_defaults_to_epoll() {
    assert_eq!(io_of(json!({})), (None, Io::Epoll));
    assert_eq!(ConnectorConfig::default().io, Io::Epoll);
    assert_eq!(io_of(json!({"io": "epoll"})), (Some(Io::Epoll), Io::Epoll));
    assert_eq!(io_of(json!({"io": "uring"})), (Some(Io::Uring), Io::Uring));
    assert_eq!(
        io_of(json!({"io": "uring", "connector": "tcp", "ssl": false})).1,
        Io::Uring
    );
}

#[test]
fn uring_is_refused_with_websocket_or_tls() {
    refused(
        json!({"io": "uring", "connector": "ws"}),
        "`uring` drives plain TCP clients only, and this entry has `connector: \"ws\"`",
    );
    refused(
        json!({"io": "uring", "connector": "websocket"}),
        "`connector: \"ws\"`",
    );
    refused(
        json!({"io": "uring", "ssl": true, "cert": "c.pem", "key": "k.pem"}),
        "this entry has `ssl: true`",
    );
}

#[test]
fn a_bad_io_value_is_refused() {
    refused(json!({"io": "iouring"}), "unknown variant `iouring`");
    refused(json!({"io": true}), "invalid type");
}

#[test]
fn a_misspelt_io_key_gets_a_did_you_mean_warning() {
    let p = load(frontend_with(json!({"IO": "uring", "ip": "1.2.3.4"})).path()).unwrap();
    let got: Vec<(&str, &WarningKind)> = p
        .warnings
        .iter()
        .map(|w| (w.key.as_str(), &w.kind))
        .collect();
    assert_eq!(got, [("IO", &WarningKind::DidYouMean("io"))]);
    assert!(p.warnings[0].to_string().contains("did you mean `io`?"));
    // The misspelt key does nothing: still epoll.
    let s = &p.server("connector-server-1").unwrap().settings.connector;
    assert_eq!(s.io, None);
}
