//! Loading, expansion, both formats and the Project helpers.

mod common;

use common::*;
use kennel_config::{Project, ServerConfig};
use serde_json::json;

#[test]
fn loads_the_example_project() {
    let dir = project(&[]);
    let p = load(dir.path()).unwrap();
    assert_eq!(p.dir, dir.path());
    assert_eq!(p.env, "development");
    assert_eq!(p.master.id, "master-server-1");
    assert_eq!((p.master.host.as_str(), p.master.port), ("127.0.0.1", 3005));
    assert_eq!(p.master.bin.as_deref(), Some("bin/game"));
    assert_eq!(
        ids(&p),
        [
            "connector-server-1",
            "connector-server-2",
            "chat-server-1",
            "chat-server-2"
        ]
    );
    let c2 = &p.servers[1];
    assert_eq!(c2.info.server_type, "connector");
    assert_eq!(
        (c2.info.port, c2.info.client_port, c2.info.frontend),
        (4022, Some(4002), true)
    );
    let chat = &p.servers[3];
    assert_eq!(
        (chat.info.port, chat.info.client_port, chat.info.frontend),
        (4102, None, false)
    );
    assert_eq!(
        p.routes,
        [
            "connector.main.login",
            "chat.main.join",
            "chat.main.send",
            "onChat"
        ]
    );

    let prod = Project::load(dir.path(), "production").unwrap();
    assert_eq!(ids(&prod), ["connector-server-1", "chat-server-1"]);
    assert_eq!(prod.master.host, "10.0.0.1");
}

#[test]
fn file_order_is_kept_not_sorted() {
    let dir = with_servers(
        r#"{"zeta": [{"id": "z-b", "port": 5002}, {"id": "z-a", "port": 5001}],
            "alpha": [{"id": "a-", "port": [5101, 5103], "idStart": 8}],
            "mid": [{"id": "m", "port": 5200}]}"#,
    );
    let dir_routes = dir.path().join("config/sys/route.json");
    std::fs::write(dir_routes, "[]").unwrap();
    let p = load(dir.path()).unwrap();
    assert_eq!(ids(&p), ["z-b", "z-a", "a-8", "a-9", "a-10", "m"]);
    assert_eq!(p.server_types(), ["zeta", "alpha", "mid"]);
}

#[test]
fn expansion_rules() {
    let dir = with_servers(
        r#"{"connector": [
              {"id": "conn-", "port": [4021, 4023], "frontend": true, "clientPort": [4001, 4003]},
              {"id": "ws-", "idStart": 1, "port": [4031, 4032], "frontend": true, "clientPort": 4011,
               "args": ["--ws", "--verbose"], "bin": "bin/ws", "zone": {"name": "eu"}, "maxConn": 100}
            ],
            "chat": [{"id": "chat-server-", "idStart": 1, "port": [4101, 4102]},
                     {"id": "chat-solo", "idStart": 9, "port": 4199, "args": "--a  --b"}]}"#,
    );
    let p = load(dir.path()).unwrap();
    assert_eq!(
        ids(&p),
        [
            "conn-0",
            "conn-1",
            "conn-2",
            "ws-1",
            "ws-2",
            "chat-server-1",
            "chat-server-2",
            "chat-solo"
        ]
    );
    let ports: Vec<(u16, Option<u16>)> = p
        .servers
        .iter()
        .map(|s| (s.info.port, s.info.client_port))
        .collect();
    assert_eq!(
        ports,
        [
            (4021, Some(4001)),
            (4022, Some(4002)),
            (4023, Some(4003)),
            (4031, Some(4011)),
            (4032, Some(4012)),
            (4101, None),
            (4102, None),
            (4199, None)
        ]
    );
    for ws in p
        .servers_of_type("connector")
        .filter(|s| s.info.id.starts_with("ws-"))
    {
        assert_eq!(ws.args, ["--ws", "--verbose"]);
        assert_eq!(ws.bin.as_deref(), Some("bin/ws"));
        let keys: Vec<&str> = ws.info.extra.keys().map(String::as_str).collect();
        assert_eq!(keys, ["maxConn", "zone"], "only unknown keys (sorted)");
        assert_eq!(ws.info.extra["zone"], json!({"name": "eu"}));
        assert_eq!(ws.info.extra["maxConn"], json!(100));
    }
    assert!(p.server("conn-0").unwrap().info.extra.is_empty());
    assert!(p.server("conn-0").unwrap().args.is_empty());
    assert_eq!(p.server("chat-solo").unwrap().args, ["--a", "--b"]);
}

#[test]
fn toml_and_json_load_the_same_project() {
    let toml_dir = project(&[
        (
            "master.toml",
            r#"
[development]
id = "master-server-1"
host = "127.0.0.1"
port = 3005
bin = "bin/game"

[production]
id = "master-server-1"
host = "10.0.0.1"
port = 3005
"#,
        ),
        (
            "servers.toml",
            r#"
[[development.connector]]
id = "connector-server-"
idStart = 1
host = "127.0.0.1"
port = [4021, 4022]
frontend = true
clientPort = 4001

[[development.chat]]
id = "chat-server-"
idStart = 1
host = "127.0.0.1"
port = [4101, 4102]
"#,
        ),
        (
            "route.toml",
            r#"route = ["connector.main.login", "chat.main.join", "chat.main.send", "onChat"]"#,
        ),
    ]);
    let json_dir = project(&[]);
    let from_toml = load(toml_dir.path()).unwrap();
    let mut from_json = load(json_dir.path()).unwrap();
    from_json.dir = from_toml.dir.clone();
    assert_eq!(from_toml, from_json);
    assert_eq!(
        Project::environments(toml_dir.path()).unwrap(),
        ["development", "production"]
    );
}

#[test]
fn toml_keeps_type_order_and_extra_keys() {
    let dir = project(&[(
        "servers.toml",
        r#"
[[development.zeta]]
id = "z"
port = 5000
weight = 3

[[development.alpha]]
id = "a"
port = 5001
"#,
    )]);
    std::fs::write(dir.path().join("config/sys/route.json"), r#"["zeta.x.y"]"#).unwrap();
    let p = load(dir.path()).unwrap();
    assert_eq!(ids(&p), ["z", "a"]);
    assert_eq!(p.servers[0].info.extra["weight"], json!(3));
}

#[test]
fn master_defaults_and_extra() {
    let dir = project(&[(
        "master.json",
        r#"{"development": {"id": "m1", "port": 3005, "serverSecret": "s", "cliSecret": "c", "logLevel": "debug"}}"#,
    )]);
    let p = load(dir.path()).unwrap();
    assert_eq!(p.master.host, "127.0.0.1");
    assert_eq!(p.master.bin, None);
    assert_eq!(p.master.server_secret.as_deref(), Some("s"));
    assert_eq!(p.master.cli_secret.as_deref(), Some("c"));
    assert_eq!(p.master.extra.len(), 1);
    assert_eq!(p.master.extra["logLevel"], json!("debug"));
}

#[test]
fn helpers() {
    let dir = project(&[]);
    let p = load(dir.path()).unwrap();
    assert_eq!(p.server("chat-server-2").map(|s| s.info.port), Some(4102));
    assert!(p.server("chat-server-3").is_none());
    let chat: Vec<&ServerConfig> = p.servers_of_type("chat").collect();
    assert_eq!(chat.len(), 2);
    assert!(chat.iter().all(|s| s.info.server_type == "chat"));
    assert_eq!(p.servers_of_type("nope").count(), 0);
    assert_eq!(p.route_index("chat.main.join"), Some(1));
    assert_eq!(p.route_index("onChat"), Some(3));
    assert_eq!(p.route_index("chat.main.leave"), None);
    assert_eq!(
        p.server_bin(&p.servers[0]),
        Some(dir.path().join("bin/game")),
        "falls back to the master's bin, relative to the project"
    );
    let mut own = p.servers[0].clone();
    own.bin = Some("/opt/game/gate".into());
    assert_eq!(p.server_bin(&own), Some("/opt/game/gate".into()));
    assert_eq!(
        Project::environments(dir.path()).unwrap(),
        ["development", "production"]
    );
}

#[test]
fn same_port_on_different_hosts_is_fine() {
    let dir = with_servers(
        r#"{"chat": [{"id": "a", "host": "10.0.0.1", "port": 4101},
                     {"id": "b", "host": "10.0.0.2", "port": 4101}]}"#,
    );
    std::fs::write(dir.path().join("config/sys/route.json"), "[]").unwrap();
    assert_eq!(ids(&load(dir.path()).unwrap()), ["a", "b"]);
}

#[test]
fn non_frontend_client_port_is_kept_and_not_a_listener() {
    // chat's clientPort equals the connector's RPC port: not a conflict, chat does not listen.
    let dir = with_servers(
        r#"{"connector": [{"id": "c", "port": 4021, "frontend": true, "clientPort": 4001}],
            "chat": [{"id": "h", "port": 4101, "clientPort": 4021}]}"#,
    );
    let p = load(dir.path()).unwrap();
    assert_eq!(p.server("h").unwrap().info.client_port, Some(4021));
    assert!(!p.server("h").unwrap().info.frontend);
}
