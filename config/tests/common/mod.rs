//! Helpers shared by the integration tests: throwaway project directories.
#![allow(dead_code)]

use std::path::Path;

use kennel_config::{ConfigError, Project};
use tempfile::TempDir;

pub const MASTER_JSON: &str = r#"{
  "development": {"id": "master-server-1", "host": "127.0.0.1", "port": 3005, "bin": "bin/game"},
  "production": {"id": "master-server-1", "host": "10.0.0.1", "port": 3005}
}"#;

pub const SERVERS_JSON: &str = r#"{
  "development": {
    "connector": [{"id": "connector-server-", "idStart": 1, "host": "127.0.0.1", "port": [4021, 4022], "frontend": true, "clientPort": 4001}],
    "chat": [{"id": "chat-server-", "idStart": 1, "host": "127.0.0.1", "port": [4101, 4102]}]
  },
  "production": {
    "connector": [{"id": "connector-server-1", "host": "10.0.0.1", "port": 4021, "frontend": true, "clientPort": 4001}],
    "chat": [{"id": "chat-server-1", "host": "10.0.0.1", "port": 4101}]
  }
}"#;

pub const ROUTE_JSON: &str =
    r#"["connector.main.login", "chat.main.join", "chat.main.send", "onChat"]"#;

/// A project with the default files, except those in `files` (`("servers.json", text)`);
/// giving `name.toml` replaces `name.json`.
pub fn project(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("config/sys");
    std::fs::create_dir_all(&sys).unwrap();
    for (name, text) in [
        ("master.json", MASTER_JSON),
        ("servers.json", SERVERS_JSON),
        ("route.json", ROUTE_JSON),
    ] {
        let base = name.trim_end_matches(".json");
        if !files
            .iter()
            .any(|(n, _)| n.starts_with(&format!("{base}.")))
        {
            std::fs::write(sys.join(name), text).unwrap();
        }
    }
    for (name, text) in files {
        std::fs::write(sys.join(name), text).unwrap();
    }
    dir
}

/// A project whose development servers are exactly `servers` (a JSON object of groups).
pub fn with_servers(servers: &str) -> TempDir {
    project(&[("servers.json", &format!(r#"{{"development": {servers}}}"#))])
}

/// A project whose development frontend entry carries `extra`.
pub fn frontend_with(extra: serde_json::Value) -> tempfile::TempDir {
    let mut entry = serde_json::json!({"id": "connector-server-1", "port": 4021, "frontend": true, "clientPort": 4001});
    entry
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    with_servers(
        &serde_json::json!({"connector": [entry], "chat": [{"id": "chat-server-1", "port": 4101}]})
            .to_string(),
    )
}

pub fn load(dir: &Path) -> Result<Project, ConfigError> {
    Project::load(dir, "development")
}

/// Loads `development`, expects an error, and checks its message contains every needle.
pub fn load_err(dir: &Path, needles: &[&str]) -> ConfigError {
    let err = load(dir).expect_err("the project should not load");
    let msg = err.to_string();
    for needle in needles {
        assert!(msg.contains(needle), "{needle:?} not in message: {msg}");
    }
    err
}

pub fn ids(p: &Project) -> Vec<&str> {
    p.servers.iter().map(|s| s.info.id.as_str()).collect()
}
