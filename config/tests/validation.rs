//! Every way a project can fail to load, and that each message names the file, the
//! environment and the entry.

mod common;

use common::*;
use kennel_config::{ConfigError, Problem, Project};

const SERVERS: &str = "config/sys/servers.json";
const DEV: &str = "environment \"development\"";

#[test]
fn missing_file_names_it_and_the_dir() {
    let dir = project(&[]);
    std::fs::remove_file(dir.path().join("config/sys/route.json")).unwrap();
    let err = load_err(dir.path(), &["route.json or route.toml"]);
    let ConfigError::MissingFile {
        name,
        dir: looked_in,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*name, "route");
    assert_eq!(looked_in, &dir.path().join("config/sys"));
    assert!(err.to_string().contains(&looked_in.display().to_string()));
}

#[test]
fn json_and_toml_of_one_file_is_ambiguous() {
    let dir = project(&[("master.toml", "[development]\nid = \"m\"\nport = 3005\n")]);
    std::fs::write(dir.path().join("config/sys/master.json"), MASTER_JSON).unwrap();
    let err = load_err(dir.path(), &["master.json", "master.toml"]);
    assert!(matches!(err, ConfigError::AmbiguousFile { .. }), "{err:?}");
}

#[test]
fn malformed_json_includes_parser_message() {
    let dir = project(&[("servers.json", "{\"development\": {\"chat\": [}}")]);
    let err = load_err(
        dir.path(),
        &[SERVERS, DEV, "malformed JSON", "line 1 column"],
    );
    assert!(matches!(err, ConfigError::Malformed { .. }));
}

#[test]
fn malformed_toml_includes_parser_message() {
    let dir = project(&[("master.toml", "[development\nport = 3005\n")]);
    load_err(
        dir.path(),
        &["config/sys/master.toml", DEV, "malformed TOML", "line 1"],
    );
}

#[test]
fn unknown_environment_lists_the_known_ones() {
    let dir = project(&[]);
    let err = Project::load(dir.path(), "staging").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("config/sys/master.json"), "{msg}");
    assert!(msg.contains("unknown environment \"staging\""), "{msg}");
    assert!(msg.contains("\"development\", \"production\""), "{msg}");

    // master has it but servers does not: the servers file is named.
    let dir = project(&[(
        "master.json",
        r#"{"development": {"id": "m", "port": 3005}, "staging": {"id": "m", "port": 3005}}"#,
    )]);
    let err = Project::load(dir.path(), "staging").unwrap_err();
    let ConfigError::UnknownEnv {
        file, available, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(file.ends_with(SERVERS));
    assert_eq!(available, &["development", "production"]);
}

#[test]
fn duplicate_id_names_both_entries() {
    let dir = with_servers(
        r#"{"connector": [{"id": "connector-server-1", "port": 4021, "frontend": true, "clientPort": 4001}],
            "chat": [{"id": "chat-server-", "idStart": 1, "port": [4101, 4102]},
                     {"id": "chat-server-2", "port": 4103}]}"#,
    );
    let err = load_err(
        dir.path(),
        &[
            SERVERS,
            DEV,
            "entry chat[1] (\"chat-server-2\")",
            "duplicate server id \"chat-server-2\"",
            "chat[0] (\"chat-server-\")",
        ],
    );
    assert!(
        matches!(err.problem(), Some(Problem::DuplicateId { id, .. }) if id == "chat-server-2"),
        "{err:?}"
    );
}

#[test]
fn server_id_equal_to_master_id_is_a_duplicate() {
    let dir = with_servers(
        r#"{"connector": [{"id": "master-server-1", "port": 4021, "frontend": true, "clientPort": 4001}],
            "chat": [{"id": "c", "port": 4101}]}"#,
    );
    load_err(
        dir.path(),
        &[
            SERVERS,
            DEV,
            "connector[0]",
            "the master \"master-server-1\"",
        ],
    );
}

#[test]
fn two_servers_on_one_host_port() {
    let dir = with_servers(
        r#"{"connector": [{"id": "connector-server-", "port": [4021, 4022], "frontend": true, "clientPort": 4001}],
            "chat": [{"id": "chat-server-1", "port": 4022}]}"#,
    );
    let err = load_err(
        dir.path(),
        &[
            SERVERS,
            DEV,
            "entry chat[0] (\"chat-server-1\")",
            "RPC port 127.0.0.1:4022",
            "connector-server-1",
            "connector[0]",
        ],
    );
    let Some(Problem::AddressInUse { port, .. }) = err.problem() else {
        panic!("{err:?}")
    };
    assert_eq!(*port, 4022);
}

#[test]
fn client_port_colliding_with_an_rpc_port() {
    let dir = with_servers(
        r#"{"chat": [{"id": "chat-server-1", "port": 4101}],
            "connector": [{"id": "connector-server-1", "port": 4021, "frontend": true, "clientPort": 4101}]}"#,
    );
    load_err(
        dir.path(),
        &[
            SERVERS,
            DEV,
            "entry connector[0]",
            "client port 127.0.0.1:4101",
            "chat-server-1",
        ],
    );
}

#[test]
fn client_ports_of_two_frontends_collide() {
    let dir = with_servers(
        r#"{"connector": [{"id": "a", "port": 4021, "frontend": true, "clientPort": [4001, 4001]},
                          {"id": "b", "port": 4022, "frontend": true, "clientPort": 4001}],
            "chat": [{"id": "c", "port": 4101}]}"#,
    );
    load_err(
        dir.path(),
        &[
            SERVERS,
            DEV,
            "entry connector[1] (\"b\")",
            "client port 127.0.0.1:4001",
        ],
    );
}

#[test]
fn master_port_colliding_with_a_server() {
    let dir = with_servers(
        r#"{"connector": [{"id": "c", "port": 4021, "frontend": true, "clientPort": 3005}],
            "chat": [{"id": "h", "port": 4101}]}"#,
    );
    load_err(
        dir.path(),
        &[
            SERVERS,
            DEV,
            "entry connector[0] (\"c\")",
            "127.0.0.1:3005",
            "the master \"master-server-1\"",
        ],
    );
}

#[test]
fn reversed_range() {
    let dir = with_servers(
        r#"{"connector": [{"id": "c", "port": 4021, "frontend": true, "clientPort": 4001}],
            "chat": [{"id": "chat-server-", "idStart": 1, "port": [4103, 4101]}]}"#,
    );
    let err = load_err(dir.path(), &[]);
    assert!(err.to_string().ends_with(
        "config/sys/servers.json, environment \"development\", entry chat[0] (\"chat-server-\"): port range [4103, 4101] is reversed"
    ), "{err}");
}

#[test]
fn reversed_client_port_range() {
    let dir = with_servers(
        r#"{"connector": [{"id": "c-", "port": [4021, 4022], "frontend": true, "clientPort": [4002, 4001]}],
            "chat": [{"id": "h", "port": 4101}]}"#,
    );
    load_err(
        dir.path(),
        &[
            SERVERS,
            DEV,
            "connector[0] (\"c-\")",
            "clientPort range [4002, 4001] is reversed",
        ],
    );
}

#[test]
fn frontend_without_client_port() {
    let dir = with_servers(
        r#"{"connector": [{"id": "connector-server-1", "port": 4021, "frontend": true}],
            "chat": [{"id": "h", "port": 4101}]}"#,
    );
    load_err(
        dir.path(),
        &[
            SERVERS,
            DEV,
            "entry connector[0] (\"connector-server-1\")",
            "without `clientPort`",
        ],
    );
}

#[test]
fn client_port_range_length_mismatch() {
    let dir = with_servers(
        r#"{"connector": [{"id": "c-", "port": [4021, 4023], "frontend": true, "clientPort": [4001, 4002]}],
            "chat": [{"id": "h", "port": 4101}]}"#,
    );
    load_err(
        dir.path(),
        &[
            SERVERS,
            DEV,
            "connector[0] (\"c-\")",
            "has 2 ports but the `port` range has 3",
        ],
    );
}

#[test]
fn port_out_of_range_or_wrong_type() {
    for (port, needle) in [
        ("70000", "`port` 70000 is out of range"),
        ("-5", "`port` -5 is out of range"),
        ("0", "`port` 0 is out of range"),
        ("[4100, 65536]", "`port` 65536 is out of range"),
        (
            "\"4101\"",
            "`port` must be a port number or a [first, last] range, found \"4101\"",
        ),
        ("4101.5", "`port` must be a port number, found 4101.5"),
        ("[4101]", "found [4101]"),
    ] {
        let dir = with_servers(&format!(
            r#"{{"connector": [{{"id": "c", "port": 4021, "frontend": true, "clientPort": 4001}}],
                "chat": [{{"id": "h", "port": {port}}}]}}"#
        ));
        load_err(dir.path(), &[SERVERS, DEV, "entry chat[0] (\"h\")", needle]);
    }
}

#[test]
fn master_port_out_of_range_and_missing_keys() {
    let dir = project(&[(
        "master.json",
        r#"{"development": {"id": "m", "port": 99999}}"#,
    )]);
    load_err(
        dir.path(),
        &[
            "config/sys/master.json",
            DEV,
            "entry master (\"m\")",
            "`port` 99999 is out of range",
        ],
    );
    let dir = project(&[("master.json", r#"{"development": {"port": 3005}}"#)]);
    load_err(
        dir.path(),
        &[
            "config/sys/master.json",
            DEV,
            "entry master",
            "`id` is missing",
        ],
    );
    let dir = project(&[("master.json", r#"{"development": {"id": "m"}}"#)]);
    load_err(
        dir.path(),
        &["config/sys/master.json", DEV, "`port` is missing"],
    );
}

#[test]
fn wrong_shapes() {
    let dir = with_servers(r#"{"chat": {"id": "h", "port": 4101}}"#);
    load_err(
        dir.path(),
        &[
            SERVERS,
            DEV,
            "entry chat",
            "must be a list of server entries",
        ],
    );
    let dir = with_servers(r#"{"chat": ["h"]}"#);
    load_err(
        dir.path(),
        &[SERVERS, DEV, "entry chat[0]", "must be a table"],
    );
    let dir = with_servers(r#"{"chat": [{"id": "h", "port": 4101, "frontend": "yes"}]}"#);
    load_err(
        dir.path(),
        &[SERVERS, DEV, "`frontend` must be true or false"],
    );
    let dir = with_servers(r#"{"chat": [{"id": "h-", "port": [1, 2], "idStart": -1}]}"#);
    load_err(
        dir.path(),
        &[SERVERS, DEV, "`idStart` must be a non-negative integer"],
    );
    let dir = project(&[("servers.json", r#"{"development": []}"#)]);
    load_err(
        dir.path(),
        &[SERVERS, DEV, "environment \"development\" must be a table"],
    );
    let dir = project(&[("route.json", r#"{"route": []}"#)]);
    load_err(
        dir.path(),
        &["config/sys/route.json", "must be a list of route strings"],
    );
    let dir = project(&[("route.toml", "routes = []\n")]);
    load_err(dir.path(), &["config/sys/route.toml", "`route` is missing"]);
    let dir = project(&[("route.json", r#"["onChat", 7]"#)]);
    load_err(
        dir.path(),
        &[
            "config/sys/route.json",
            DEV,
            "entry route[1]",
            "must be a string or {\"route\": string, \"note\": string}, found 7",
        ],
    );
    let dir = project(&[("route.json", r#"["onChat", {"route": "x", "nope": 1}]"#)]);
    load_err(dir.path(), &["entry route[1]", "found an object"]);
}

#[test]
fn route_notes_are_kept() {
    let dir = project(&[(
        "route.json",
        r#"["connector.main.login", {"route": "onChat", "note": "a chat message"}, {"route": "chat.main.send"}]"#,
    )]);
    let p = kennel_config::Project::load(dir.path(), "development").unwrap();
    assert_eq!(
        p.routes,
        ["connector.main.login", "onChat", "chat.main.send"]
    );
    assert_eq!(
        p.route_notes,
        [None, Some("a chat message".to_string()), None]
    );
}

#[test]
fn route_whose_type_has_no_servers() {
    let dir = project(&[(
        "route.json",
        r#"["connector.main.login", "gate.main.entry", "onChat"]"#,
    )]);
    let err = load_err(
        dir.path(),
        &[
            "config/sys/route.json",
            DEV,
            "entry route[1] (\"gate.main.entry\")",
            "\"gate\" has no servers",
        ],
    );
    assert_eq!(
        err.problem(),
        Some(&Problem::RouteWithoutServers {
            server_type: "gate".to_owned()
        })
    );
    // The same route list is fine where gate exists (routes are checked per environment).
    let dir = with_servers(
        r#"{"connector": [{"id": "c", "port": 4021, "frontend": true, "clientPort": 4001}],
            "gate": [{"id": "g", "port": 4010}]}"#,
    );
    std::fs::write(
        dir.path().join("config/sys/route.json"),
        r#"["connector.main.login", "gate.main.entry", "onChat"]"#,
    )
    .unwrap();
    assert_eq!(load(dir.path()).unwrap().routes.len(), 3);
}

#[test]
fn empty_duplicate_and_malformed_routes() {
    let route_file = "config/sys/route.json";
    for (routes, needles) in [
        (
            r#"["onChat", ""]"#,
            vec!["entry route[1] (\"\")", "empty route"],
        ),
        (
            r#"["chat.main.join", "onChat", "chat.main.join"]"#,
            vec![
                "entry route[2] (\"chat.main.join\")",
                "duplicate route (first listed at route[0])",
            ],
        ),
        (
            r#"["chat.join"]"#,
            vec!["entry route[0] (\"chat.join\")", "three non-empty parts"],
        ),
        (
            r#"["chat.main.join.now"]"#,
            vec!["route[0]", "three non-empty parts"],
        ),
        (
            r#"["chat..join"]"#,
            vec!["route[0]", "three non-empty parts"],
        ),
        (
            r#"[".main.join"]"#,
            vec!["route[0]", "three non-empty parts"],
        ),
    ] {
        let dir = project(&[("route.json", routes)]);
        let mut all = vec![route_file, DEV];
        all.extend(needles);
        load_err(dir.path(), &all);
    }
}

#[test]
fn invalid_entries_in_toml_name_the_toml_file() {
    let dir = project(&[(
        "servers.toml",
        r#"
[[development.connector]]
id = "connector-server-1"
port = 4021
frontend = true
clientPort = 4001

[[development.chat]]
id = "chat-server-"
port = [4102, 4101]
"#,
    )]);
    load_err(
        dir.path(),
        &[
            "config/sys/servers.toml",
            DEV,
            "entry chat[0] (\"chat-server-\")",
            "reversed",
        ],
    );
}
