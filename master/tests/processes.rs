//! The `kennel` binary against stand-in servers (shell scripts that never register): spawning,
//! log files and their echo, restart after `kill -9`, graceful stop leaving no process, stop by
//! SIGTERM in frontend-then-backend order, servers surviving a master crash, clear failures.

mod common;

use common::*;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

const SERVER_SECRET: &str = "test-server-secret";
const CLI_SECRET: &str = "test-cli-secret";

fn secrets() -> [(&'static str, &'static str); 2] {
    [
        ("KENNEL_SERVER_SECRET", SERVER_SECRET),
        ("KENNEL_CLI_SECRET", CLI_SECRET),
    ]
}

#[test]
fn spawn_echo_restart_list_and_stop() {
    let port = free_port();
    let mut cluster = Cluster::start(project(port, &three_servers()), port, &secrets());
    let pids = cluster.wait_all_running();
    let ids: Vec<&str> = pids.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["connector-server-1", "chat-server-1", "chat-server-2"]
    );

    // Each server's stdout and stderr land in logs/<id>.log; it got the server secret, not
    // the CLI secret, and the port the master really listens on.
    for id in &ids {
        let log = wait_until("the log file", || {
            let log = cluster.log(id);
            log.contains("oops on stderr").then_some(log)
        });
        assert!(
            log.contains(&format!(
                "hello from {id} args: --id {id} --env development"
            )),
            "{log}"
        );
        assert!(
            log.contains(&format!("cli=none server=set master_port={port}")),
            "{log}"
        );
    }
    // ... and are echoed on the master's stdout with the id as prefix.
    cluster.wait_line("echoed output", |l| {
        l == "[chat-server-2] hello from chat-server-2 args: --id chat-server-2 --env development"
    });
    cluster.wait_line("echoed stderr", |l| {
        l == "[connector-server-1] oops on stderr"
    });

    // The table.
    let out = output(&mut cluster.cli("list"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let header = table.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "ID", "TYPE", "STATE", "PID", "RSS", "CPU%", "UPTIME", "RESTARTS", "CLIENTS"
        ]
    );
    assert!(table.contains("chat-server-1"), "{table}");
    assert!(table.contains("starting"), "{table}");

    // A crashed server is restarted (0.5 s backoff) with a new pid.
    let old = pids[1].1;
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    let row = wait_until("chat-server-1 to be restarted", || {
        let rows = cluster.list();
        let row = rows.into_iter().find(|r| r["id"] == "chat-server-1")?;
        (row["restarts"] == 1 && row["pid"].as_u64().is_some_and(|p| p as u32 != old))
            .then_some(row)
    });
    assert_eq!(row["state"], "starting");
    // The crashed server's background `sleep` was swept with its process group.
    wait_until("the old group to be gone", || {
        killpg(Pid::from_raw(old as i32), None)
            .is_err()
            .then_some(())
    });

    // Graceful stop through the CLI leaves nothing behind.
    let all = cluster.wait_all_running();
    let out = output(cluster.cli("stop").arg("-y"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("kennel: cluster stopped"), "{said}");
    assert!(cluster.wait_exit().success());
    cluster.wait_line("the stopped line", |l| l == "kennel: cluster stopped");
    for (id, pid) in &all {
        assert!(!alive(*pid), "{id} (pid {pid}) is still alive");
        assert!(
            killpg(Pid::from_raw(*pid as i32), None).is_err(),
            "{id}'s group is still alive"
        );
    }
    for (id, _) in &all {
        assert!(cluster.log(id).contains("TERM at"), "{id} got no SIGTERM");
    }
}

fn stamp(log: &str, what: &str) -> u128 {
    log.lines()
        .find_map(|l| l.strip_prefix(what))
        .unwrap_or_else(|| panic!("no {what:?} in {log}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn sigterm_stops_frontends_before_backends() {
    let port = free_port();
    let (c, cp, b) = (free_port(), free_port(), free_port());
    let servers = format!(
        r#"{{"connector": [{{"id": "connector-server-1", "host": "127.0.0.1", "port": {c}, "frontend": true, "clientPort": {cp}, "args": ["--linger", "0.3"]}}],
            "chat": [{{"id": "chat-server-1", "host": "127.0.0.1", "port": {b}}}]}}"#
    );
    let mut cluster = Cluster::start(project(port, &servers), port, &secrets());
    let pids = cluster.wait_all_running();
    for (id, _) in &pids {
        wait_until("the server to be up", || {
            cluster.log(id).contains("hello from").then_some(())
        });
    }
    kill(Pid::from_raw(cluster.child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(cluster.wait_exit().success());
    for (id, pid) in &pids {
        assert!(!alive(*pid), "{id} (pid {pid}) is still alive");
    }
    let front = cluster.log("connector-server-1");
    let back = cluster.log("chat-server-1");
    assert!(
        stamp(&back, "TERM at ") >= stamp(&front, "exit at "),
        "the backend was told to stop before the frontend exited:\n{front}\n{back}"
    );
    assert!(
        cluster
            .lines()
            .iter()
            .any(|l| l == "kennel: cluster stopped")
    );
}

#[test]
fn servers_survive_a_master_crash() {
    let port = free_port();
    let mut cluster = Cluster::start(project(port, &three_servers()), port, &secrets());
    let pids = cluster.wait_all_running();
    cluster.child.kill().unwrap();
    cluster.child.wait().unwrap();
    for (id, pid) in &pids {
        assert!(alive(*pid), "{id} died with the master");
    }
    // Dropping `cluster` sweeps their groups.
}

#[test]
fn missing_binary_is_one_clear_error() {
    let port = free_port();
    let dir = project(port, &three_servers());
    std::fs::remove_file(dir.path().join("bin/server.sh")).unwrap();
    let out = output(kennel().arg("start").arg("--dir").arg(dir.path()));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("kennel: ")
            && last.contains("server connector-server-1")
            && last.contains("bin/server.sh not found"),
        "{err}"
    );
}

#[test]
fn daemon_reports_why_the_master_did_not_start() {
    let port = free_port();
    let dir = project(port, &three_servers());
    std::fs::remove_file(dir.path().join("bin/server.sh")).unwrap();
    let out = output(
        kennel()
            .args(["start", "--daemon", "--dir"])
            .arg(dir.path())
            .envs(secrets()),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("starting in the background (pid "));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kennel: the master exited during startup (exit status: 1): ")
            && err.contains("bin/server.sh not found"),
        "{err}"
    );
    // Its own log holds the same line.
    let log = std::fs::read_to_string(dir.path().join("logs/master.log")).unwrap();
    assert!(log.contains("bin/server.sh not found"), "{log}");
}

#[test]
fn bad_config_is_one_clear_line() {
    let port = free_port();
    let dir = project(port, &three_servers());
    std::fs::write(dir.path().join("config/sys/servers.json"), "{ nope").unwrap();
    let out = output(kennel().arg("start").arg("--dir").arg(dir.path()));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kennel: ") && err.contains("servers.json"),
        "{err}"
    );
}

#[test]
fn cli_without_a_master_or_with_a_wrong_secret() {
    let port = free_port();
    let dir = project(port, &three_servers());
    let out = output(
        kennel()
            .args(["list", "--token", "x", "--dir"])
            .arg(dir.path()),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "kennel: no master answering at 127.0.0.1:{port}: "
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let mut cluster = Cluster::start(dir, port, &secrets());
    cluster.wait_all_running();
    let out = output(cluster.cli("list").args(["--token", "wrong"]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("does not accept this CLI secret"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = output(cluster.cli("stop").arg("-y"));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// In process, through `run`: a server that ignores SIGTERM is SIGKILLed once the stop
/// timeout passes, and `run` returns only after it is gone.
#[tokio::test]
async fn stubborn_server_is_killed_after_the_timeout() {
    use kennel_config::{Project, Secrets};
    use kennel_master::{StartOptions, run};
    use std::time::{Duration, Instant};

    let dir = project(free_port(), &three_servers());
    write_script(
        &dir.path().join("bin/stubborn.sh"),
        "#!/bin/sh\necho up\ntrap '' TERM\nwhile :; do sleep 0.1; done\n",
    );
    let project = Project::load(dir.path(), "development").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut opts = StartOptions::new(
        project,
        Secrets {
            server: "s".into(),
            cli: "c".into(),
        },
    );
    opts.bin = Some(dir.path().join("bin/stubborn.sh"));
    opts.echo_logs = false;
    opts.frontend_stop_timeout = Duration::from_millis(300);
    opts.stop_timeout = Duration::from_millis(800);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let master = tokio::spawn(run(opts, listener, shutdown.clone()));

    let logs = dir.path().join("logs");
    tokio::task::spawn_blocking(move || {
        wait_until("every stubborn server to be up", || {
            ["connector-server-1", "chat-server-1", "chat-server-2"]
                .iter()
                .map(|id| {
                    let log = std::fs::read_to_string(logs.join(format!("{id}.log"))).ok()?;
                    log.contains("up").then_some(())
                })
                .collect::<Option<Vec<()>>>()
        });
    })
    .await
    .unwrap();
    let mut cli = kennel_master::MasterClient::connect(&addr.to_string(), "c")
        .await
        .unwrap();
    let pids: Vec<u32> = cli
        .list()
        .await
        .unwrap()
        .servers
        .iter()
        .map(|s| s.pid)
        .filter(|&p| p != 0)
        .collect();
    drop(cli);
    assert_eq!(pids.len(), 3, "{pids:?}");

    let t0 = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(TIMEOUT, master)
        .await
        .expect("run did not return")
        .unwrap()
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t0.elapsed()
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived the stop");
    }
}
