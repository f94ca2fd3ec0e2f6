//! kennel's own settings are checked when the project loads: `kennel config` and `kennel start`
//! refuse a bad value (naming the file, the environment, the entry and the key) before any
//! server process starts, and a misspelt key gets a "did you mean" warning.

mod common;

use common::*;

/// A project whose frontend entry carries `frontend_extra` (e.g. `, "maxLen": 2`).
fn project_with_frontend(frontend_extra: &str) -> tempfile::TempDir {
    let (c, cp, a) = (free_port(), free_port(), free_port());
    project(
        free_port(),
        &format!(
            r#"{{"connector": [{{"id": "connector-server-1", "host": "127.0.0.1", "port": {c}, "frontend": true, "clientPort": {cp}{frontend_extra}}}],
                "chat": [{{"id": "chat-server-1", "host": "127.0.0.1", "port": {a}}}]}}"#
        ),
    )
}

fn config(dir: &std::path::Path) -> std::process::Output {
    output(kennel().args(["config", "--dir"]).arg(dir))
}

/// The message names the servers file, the environment, the entry and the key.
fn assert_names_it(stderr: &str, key: &str, what: &str) {
    for needle in [
        "config/sys/servers.json",
        "environment \"development\"",
        "entry connector[0] (\"connector-server-1\")",
        &format!("`{key}`"),
        what,
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
}

#[test]
fn kennel_config_refuses_a_bad_connector_value() {
    for (extra, key, what) in [
        (r#", "maxLen": 2"#, "maxLen", "at least 3"),
        (r#", "connector": "udp""#, "connector", "udp"),
        (
            r#", "rateLimit": {"perSecond": 10, "burst": 0}"#,
            "rateLimit.burst",
            "at least 1",
        ),
    ] {
        let dir = project_with_frontend(extra);
        let out = config(dir.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra}: {stderr}");
        assert_names_it(&stderr, key, what);
    }
}

#[test]
fn kennel_start_refuses_a_bad_value_before_starting_anything() {
    let dir = project_with_frontend(r#", "maxLen": 2"#);
    let out = output(
        kennel()
            .args(["start", "--dir"])
            .arg(dir.path())
            .env("KENNEL_SERVER_SECRET", "s3cret-s3cret-s3cret")
            .env("KENNEL_CLI_SECRET", "cli-s3cret-cli-s3cret"),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_names_it(&stderr, "maxLen", "at least 3");
    // No server was started: the stand-in server writes its log line first thing.
    for id in ["connector-server-1", "chat-server-1"] {
        let log = dir.path().join(format!("logs/{id}.log"));
        assert!(
            !log.exists(),
            "{} exists: a server was started",
            log.display()
        );
    }
}

#[test]
fn a_misspelt_key_gets_a_did_you_mean_warning_and_still_loads() {
    let dir = project_with_frontend(r#", "maxlen": 1000, "roomCap": 8"#);
    let out = config(dir.path());
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for needle in [
        "warning",
        "config/sys/servers.json",
        "entry connector[0] (\"connector-server-1\")",
        "`maxlen`",
        "did you mean `maxLen`",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
    // A game key that resembles no kennel key is not warned about.
    assert!(!stderr.contains("roomCap"), "{stderr}");
    assert!(text(&out.stdout).contains("connector-server-1"));
}
