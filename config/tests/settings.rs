//! kennel's own settings ([`kennel_config::settings`]): parsed and checked by `Project::load`,
//! a bad value of every key group refused with the file, the environment, the entry and the
//! key path, defaults equal to the documented ones, and "did you mean" warnings.

mod common;

use std::time::Duration;

use common::*;
use kennel_config::settings::{
    ConnectorConfig, CrashLoop, Io, LogRotation, MasterSettings, MetricsListen, RateLimit,
    RateLimitAction, RestartPolicy, RpcConfig, ServerSettings, Transport, WarningKind,
};
use kennel_config::{ConfigError, Problem, Project};
use serde_json::{Value, json};

const DEV: &str = "environment \"development\"";

/// A project whose development master entry carries `extra`.
fn master_with(extra: Value) -> tempfile::TempDir {
    let mut entry = json!({"id": "master-server-1", "port": 3005});
    entry
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    project(&[("master.json", &json!({"development": entry}).to_string())])
}

/// The load fails with a [`Problem::Setting`] for `key` whose message contains `what`, and
/// the rendered error names the file, the environment and the entry too.
fn refused(dir: &std::path::Path, file: &str, entry: &str, key: &str, what: &str) {
    let err = load_err(dir, &[file, DEV, entry, &format!("`{key}`"), what]);
    let ConfigError::Invalid { problem, .. } = &err else {
        panic!("{err:?}")
    };
    let Problem::Setting { key: k, message } = problem.as_ref() else {
        panic!("{err:?}")
    };
    assert_eq!(k, key, "{err}");
    assert!(message.contains(what), "{err}");
}

#[test]
fn a_bad_server_setting_names_file_env_entry_and_key() {
    let entry = "entry connector[0] (\"connector-server-1\")";
    for (extra, key, what) in [
        (
            json!({"connector": "udp"}),
            "connector",
            "unknown variant `udp`",
        ),
        (json!({"connector": 1}), "connector", "invalid type"),
        (json!({"heartbeat": -1}), "heartbeat", "invalid value"),
        (json!({"heartbeat": 1e12}), "heartbeat", "invalid type"),
        (json!({"heartbeat": 100000}), "heartbeat", "from 0 to 86400"),
        (
            json!({"maxConnectionNum": "many"}),
            "maxConnectionNum",
            "invalid type",
        ),
        (json!({"maxLen": 2}), "maxLen", "at least 3, found 2"),
        (json!({"maxLen": 1.5}), "maxLen", "invalid type"),
        (json!({"noDelay": "yes"}), "noDelay", "invalid type"),
        (json!({"interval": -5}), "interval", "invalid value"),
        (
            json!({"handshakeTimeout": 0}),
            "handshakeTimeout",
            "from 1 to 86400",
        ),
        (json!({"interval": 1.5}), "interval", "invalid type"),
        (
            json!({"handshakeTimeout": 1.5}),
            "handshakeTimeout",
            "invalid type",
        ),
        (
            json!({"sendQueueBytes": 100}),
            "sendQueueBytes",
            "at least 1024",
        ),
        (
            json!({"sendQueueBytes": "4M"}),
            "sendQueueBytes",
            "invalid type",
        ),
        (json!({"maxInFlight": -3}), "maxInFlight", "invalid value"),
        (json!({"rateLimit": 100}), "rateLimit", "false, or"),
        (
            json!({"rateLimit": {"burst": 1.5}}),
            "rateLimit.burst",
            "invalid type",
        ),
        (
            json!({"maxInFlight": 0}),
            "maxInFlight",
            "at least 1, found 0",
        ),
        (json!({"rateLimit": "fast"}), "rateLimit", "false, or"),
        (
            json!({"rateLimit": {"perSecond": 0}}),
            "rateLimit.perSecond",
            "at least 1",
        ),
        (
            json!({"rateLimit": {"burst": 0}}),
            "rateLimit.burst",
            "at least 1",
        ),
        (
            json!({"rateLimit": {"action": "kick"}}),
            "rateLimit.action",
            "`close` or `drop`",
        ),
        (
            json!({"rateLimit": {"brust": 5}}),
            "rateLimit.brust",
            "unknown field `brust`",
        ),
        (json!({"threads": 0}), "threads", "from 1 to 1024, found 0"),
        (json!({"threads": 2000}), "threads", "from 1 to 1024"),
        (
            json!({"restart": "sometimes"}),
            "restart",
            "unknown variant `sometimes`",
        ),
        (json!({"external": "yes"}), "external", "invalid type"),
    ] {
        let dir = frontend_with(extra.clone());
        refused(dir.path(), "config/sys/servers.json", entry, key, what);
    }
    // On a backend too: they are kennel's names wherever they are written.
    let dir =
        with_servers(r#"{"chat": [{"id": "chat-server-", "port": [4101, 4102], "maxLen": 1}]}"#);
    refused(
        dir.path(),
        "config/sys/servers.json",
        "entry chat[0] (\"chat-server-\")",
        "maxLen",
        "at least 3",
    );
}

#[test]
fn a_bad_master_setting_names_file_env_entry_and_key() {
    let entry = "entry master (\"master-server-1\")";
    for (extra, key, what) in [
        (json!({"rpc": 5}), "rpc", "invalid type"),
        (
            json!({"rpc": {"timeout": -1}}),
            "rpc.timeout",
            "from 0 to 86400",
        ),
        (json!({"rpc": {"timeout": 0}}), "rpc.timeout", "more than 0"),
        (
            json!({"rpc": {"timeout": 1e19}}),
            "rpc.timeout",
            "from 0 to 86400",
        ),
        (
            json!({"rpc": {"heartbeat": 1e19}}),
            "rpc.heartbeat",
            "from 0 to 86400",
        ),
        (
            json!({"rpc": {"timeout": "10"}}),
            "rpc.timeout",
            "invalid type",
        ),
        (
            json!({"rpc": {"heartbeat": 5, "heartbeatTimeout": 2}}),
            "rpc.heartbeatTimeout",
            "longer than rpc.heartbeat",
        ),
        (
            json!({"rpc": {"maxLen": 10}}),
            "rpc.maxLen",
            "at least 1024",
        ),
        (
            json!({"rpc": {"intervall": 10}}),
            "rpc.intervall",
            "unknown field `intervall`",
        ),
        (
            json!({"rpc": {"interval": "x"}}),
            "rpc.interval",
            "milliseconds",
        ),
        (
            json!({"rpc": {"interval": {"chat": -1}}}),
            "rpc.interval.chat",
            "milliseconds",
        ),
        (
            json!({"rpc": {"interval": {"chat": "x"}}}),
            "rpc.interval.chat",
            "invalid type",
        ),
        (
            json!({"rpc": {"noRpcMatrix": {"a": "b"}}}),
            "rpc.noRpcMatrix.a",
            "invalid type",
        ),
        (json!({"logs": 3}), "logs", "invalid type"),
        (json!({"logs": {"keep": 0}}), "logs.keep", "from 1 to 1000"),
        (
            json!({"logs": {"maxBytes": -1}}),
            "logs.maxBytes",
            "invalid value",
        ),
        (
            json!({"logs": {"size": 1}}),
            "logs.size",
            "unknown field `size`",
        ),
        (
            json!({"crashLoop": {"restarts": 0}}),
            "crashLoop.restarts",
            "at least 1",
        ),
        (
            json!({"crashLoop": {"windowSecs": 0}}),
            "crashLoop.windowSecs",
            "at least 1",
        ),
        (json!({"metrics": 9100}), "metrics", "invalid type"),
        (json!({"metrics": {}}), "metrics", "missing field `port`"),
        (
            json!({"metrics": {"port": 70000}}),
            "metrics.port",
            "invalid value",
        ),
        (
            json!({"metrics": {"port": 1, "host": ""}}),
            "metrics.host",
            "is empty",
        ),
        (
            json!({"metrics": {"port": 1, "hots": "a"}}),
            "metrics.hots",
            "unknown field `hots`",
        ),
        (json!({"launcher": []}), "launcher", "non-empty list"),
        (json!({"launcher": [""]}), "launcher", "non-empty list"),
        (json!({"launcher": [1]}), "launcher[0]", "invalid type"),
        (
            json!({"remoteSignal": "ssh"}),
            "remoteSignal",
            "invalid type",
        ),
        (
            json!({"encryptLinks": "yes"}),
            "encryptLinks",
            "expected a boolean",
        ),
    ] {
        let dir = master_with(extra.clone());
        refused(dir.path(), "config/sys/master.json", entry, key, what);
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let p = load(project(&[]).path()).unwrap();
    let s = &p.server("connector-server-1").unwrap().settings;
    assert_eq!(s, &ServerSettings::default());
    assert_eq!(s.threads, 1);
    assert_eq!(s.restart, RestartPolicy::Always);
    assert!(!s.external);
    assert_eq!(
        ConnectorConfig::from(&s.connector),
        ConnectorConfig {
            transport: Transport::Tcp,
            io: Io::Epoll,
            heartbeat: 60,
            max_len: 10 * 1024 * 1024,
            max_connections: 20_000,
            handshake_timeout: Duration::from_secs(10),
            no_delay: true,
            interval: Duration::ZERO,
            send_queue_bytes: 4 * 1024 * 1024,
            max_in_flight: 64,
            rate_limit: Some(RateLimit {
                per_second: 1000,
                burst: 2000,
                action: RateLimitAction::Close,
            }),
        }
    );
    let m = &p.master.settings;
    assert!(
        !m.encrypt_links,
        "links are plain unless encryptLinks is set"
    );
    assert_eq!(m, &MasterSettings::default());
    let rpc = &m.rpc;
    assert_eq!(rpc, &RpcConfig::default());
    assert_eq!(
        (
            rpc.timeout,
            rpc.msg_cache_count,
            rpc.heartbeat,
            rpc.heartbeat_timeout
        ),
        (
            Duration::from_secs(10),
            5000,
            Duration::from_secs(10),
            Duration::from_secs(30)
        )
    );
    assert_eq!(
        (
            rpc.reconnect_delay,
            rpc.interval.of("chat"),
            rpc.no_delay,
            rpc.max_len
        ),
        (
            Duration::from_millis(500),
            Duration::ZERO,
            true,
            64 * 1024 * 1024
        )
    );
    assert_eq!(rpc.reconcile_grace, Duration::from_secs(5));
    assert!(rpc.no_rpc_matrix.is_empty());
    assert_eq!(
        m.logs,
        LogRotation {
            max_bytes: 10 * 1024 * 1024,
            keep: 5
        }
    );
    assert_eq!(
        m.crash_loop,
        CrashLoop {
            restarts: 5,
            window: Duration::from_secs(60)
        }
    );
    assert_eq!(m.metrics, None);
    assert_eq!(m.launcher, ["ssh", "{host}", "cd {dir} && {cmd}"]);
    assert_eq!(m.remote_signal, ["ssh", "{host}", "kill -{signal} {pid}"]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn every_server_key_is_read() {
    let dir = frontend_with(json!({
        "connector": "ws", "heartbeat": 5, "maxConnectionNum": 7, "maxLen": 1000,
        "noDelay": false, "interval": 20, "handshakeTimeout": 3, "sendQueueBytes": 65536,
        "maxInFlight": 8, "rateLimit": {"perSecond": 10, "action": "drop"},
        "threads": 2, "restart": "on-failure", "external": true
    }));
    let p = load(dir.path()).unwrap();
    let s = &p.server("connector-server-1").unwrap().settings;
    let c = ConnectorConfig::from(&s.connector);
    assert_eq!(c.transport, Transport::WebSocket);
    assert_eq!(
        (c.heartbeat, c.max_connections, c.max_len, c.no_delay),
        (5, 7, 1000, false)
    );
    assert_eq!(c.interval, Duration::from_millis(20));
    assert_eq!(c.handshake_timeout, Duration::from_secs(3));
    assert_eq!((c.send_queue_bytes, c.max_in_flight), (65536, 8));
    // burst defaults to twice perSecond.
    assert_eq!(
        c.rate_limit,
        Some(RateLimit {
            per_second: 10,
            burst: 20,
            action: RateLimitAction::Drop
        })
    );
    assert_eq!(
        (s.threads, s.restart, s.external),
        (2, RestartPolicy::OnFailure, true)
    );
    // The keys stay in `extra`, as the game saw them before.
    let extra = &p.server("connector-server-1").unwrap().info.extra;
    assert_eq!(extra["maxLen"], json!(1000));
    assert_eq!(extra["connector"], json!("ws"));

    for (v, want) in [
        (json!(false), None),
        (Value::Null, None),
        (json!(true), Some(RateLimit::default())),
    ] {
        let p = load(frontend_with(json!({"rateLimit": v})).path()).unwrap();
        let s = &p.server("connector-server-1").unwrap().settings;
        assert_eq!(ConnectorConfig::from(&s.connector).rate_limit, want, "{v}");
    }
    let p = load(frontend_with(json!({"connector": "websocket"})).path()).unwrap();
    let s = &p.server("connector-server-1").unwrap().settings;
    assert_eq!(s.connector.transport, Some(Transport::WebSocket));
}

#[test]
fn entry_keys_override_a_base_set_in_code() {
    let p = load(frontend_with(json!({"maxLen": 1000})).path()).unwrap();
    let s = &p.server("connector-server-1").unwrap().settings;
    let mut base = ConnectorConfig {
        transport: Transport::WebSocket,
        max_len: 5,
        ..ConnectorConfig::default()
    };
    s.connector.apply_to(&mut base);
    assert_eq!((base.transport, base.max_len), (Transport::WebSocket, 1000));
}

#[test]
fn every_master_key_is_read() {
    let dir = master_with(json!({
        "rpc": {
            "timeout": 2, "rpcMsgCacheCount": 3, "heartbeat": 1, "reconnectDelay": 0.1,
            "interval": {"default": 5, "chat": 20}, "noDelay": false, "maxLen": 4096,
            "reconcileGrace": 0.5, "noRpcMatrix": {"connector": ["connector"]}
        },
        "logs": {"maxBytes": 100, "keep": 2},
        "crashLoop": {"restarts": 2},
        "metrics": {"port": 9100},
        "launcher": ["docker", "exec", "{host}", "{bin}"],
        "remoteSignal": ["docker", "kill", "-s", "{signal}", "{host}"],
        "encryptLinks": true
    }));
    let m = load(dir.path()).unwrap().master.settings;
    assert!(m.encrypt_links);
    let c = &m.rpc;
    assert_eq!(c.timeout, Duration::from_secs(2));
    assert_eq!(c.msg_cache_count, 3);
    assert_eq!(c.heartbeat_timeout, Duration::from_secs(3), "3x heartbeat");
    assert_eq!(c.reconnect_delay, Duration::from_millis(100));
    assert_eq!(c.interval.of("chat"), Duration::from_millis(20));
    assert_eq!(c.interval.of("connector"), Duration::from_millis(5));
    assert!(!c.no_delay);
    assert_eq!(c.max_len, 4096);
    assert_eq!(c.reconcile_grace, Duration::from_millis(500));
    assert!(!c.may_link("connector", "connector"));
    assert!(c.may_link("connector", "chat"));
    assert_eq!(
        m.logs,
        LogRotation {
            max_bytes: 100,
            keep: 2
        }
    );
    assert_eq!(
        m.crash_loop,
        CrashLoop {
            restarts: 2,
            window: Duration::from_secs(60)
        }
    );
    assert_eq!(
        m.metrics,
        Some(MetricsListen {
            host: "127.0.0.1".into(),
            port: 9100
        })
    );
    assert_eq!(m.launcher, ["docker", "exec", "{host}", "{bin}"]);
    assert_eq!(m.remote_signal[0], "docker");

    let m = load(master_with(json!({"rpc": {"interval": 7}})).path())
        .unwrap()
        .master
        .settings;
    assert_eq!(m.rpc.interval.of("any"), Duration::from_millis(7));
}

#[test]
fn settings_in_toml_files_are_read_too() {
    let dir = project(&[
        (
            "master.toml",
            "[development]\nid = \"m\"\nport = 3005\n[development.crashLoop]\nrestarts = 3\n",
        ),
        (
            "servers.toml",
            "[[development.connector]]\nid = \"connector-server-1\"\nport = 4021\nfrontend = true\nclientPort = 4001\nmaxLen = 2\n",
        ),
    ]);
    load_err(
        dir.path(),
        &["config/sys/servers.toml", "connector[0]", "`maxLen`"],
    );
}

#[test]
fn a_near_miss_key_gets_a_did_you_mean_warning() {
    let dir = frontend_with(
        json!({"maxlen": 1000, "heartBeat": 5, "conector": "ws", "rpc": {}, "web": 4080, "roomCap": 3}),
    );
    let p = load(dir.path()).unwrap();
    let got: Vec<(&str, &WarningKind)> = p
        .warnings
        .iter()
        .map(|w| (w.key.as_str(), &w.kind))
        .collect();
    assert_eq!(
        got,
        [
            ("conector", &WarningKind::DidYouMean("connector")),
            ("heartBeat", &WarningKind::DidYouMean("heartbeat")),
            ("maxlen", &WarningKind::DidYouMean("maxLen")),
            ("rpc", &WarningKind::OtherFile("master")),
        ]
    );
    let w = &p.warnings[2];
    assert!(w.file.ends_with("config/sys/servers.json"));
    assert_eq!(w.env, "development");
    assert_eq!(w.entry, "connector[0] (\"connector-server-1\")");
    assert_eq!(w.servers, ["connector-server-1"]);
    assert!(w.concerns("connector-server-1") && !w.concerns("chat-server-1"));
    let msg = w.to_string();
    for needle in [
        "config/sys/servers.json",
        DEV,
        "entry connector[0] (\"connector-server-1\")",
        "`maxlen`",
        "did you mean `maxLen`?",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    // The misspelt key does nothing: the default holds (and the game still sees the key).
    let s = &p.server("connector-server-1").unwrap();
    assert_eq!(s.settings.connector.max_len, None);
    assert_eq!(s.info.extra["maxlen"], json!(1000));

    let dir = master_with(json!({"crashloop": {"restarts": 1}, "threads": 2}));
    let p = load(dir.path()).unwrap();
    let msgs: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(msgs[0].contains("`crashloop`") && msgs[0].contains("did you mean `crashLoop`?"));
    assert!(
        msgs[0].contains("config/sys/master.json")
            && msgs[0].contains("entry master (\"master-server-1\")")
    );
    assert!(
        msgs[1].contains("`threads` is a kennel setting of servers"),
        "{}",
        msgs[1]
    );
    assert!(
        p.warnings
            .iter()
            .all(|w| w.servers.is_empty() && w.concerns("any"))
    );
}

#[test]
fn every_server_of_a_range_gets_the_entry_settings() {
    let dir = with_servers(
        r#"{"connector": [{"id": "connector-server-1", "port": 4021, "frontend": true, "clientPort": 4001}],
            "chat": [{"id": "chat-server-", "idStart": 1, "port": [4101, 4103], "threads": 3, "restart": "never"}]}"#,
    );
    let p = Project::load(dir.path(), "development").unwrap();
    assert_eq!(p.servers_of_type("chat").count(), 3);
    for s in p.servers_of_type("chat") {
        assert_eq!(
            (s.settings.threads, s.settings.restart),
            (3, RestartPolicy::Never)
        );
    }
}
