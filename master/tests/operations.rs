//! Operating a running cluster with real processes: restart policies and crash loops,
//! re-adoption of the servers after the master is SIGKILLed, log rotation under a server that
//! keeps writing (through a master crash), and the operator commands (`restart`, `remove`,
//! `start <id>`, `logs`, `config`, `list` resource columns).

mod common;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn secrets() -> [(&'static str, &'static str); 2] {
    [
        ("KENNEL_SERVER_SECRET", "test-server-secret"),
        ("KENNEL_CLI_SECRET", "test-cli-secret"),
    ]
}

fn row(rows: &[serde_json::Value], id: &str) -> serde_json::Value {
    rows.iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {rows:?}"))
        .clone()
}

#[test]
fn crash_loop_and_restart_policies() {
    let port = free_port();
    let (a, b, c) = (free_port(), free_port(), free_port());
    let servers = format!(
        r#"{{"crash": [{{"id": "crash-server-1", "host": "127.0.0.1", "port": {a}, "bin": "bin/crash.sh"}}],
            "once": [{{"id": "once-server-1", "host": "127.0.0.1", "port": {b}, "bin": "bin/ok.sh", "restart": "never"}}],
            "job": [{{"id": "job-server-1", "host": "127.0.0.1", "port": {c}, "bin": "bin/ok.sh", "restart": "on-failure"}}]}}"#
    );
    let dir = project_with(
        port,
        &servers,
        r#", "crashLoop": {"restarts": 2, "windowSecs": 60}"#,
    );
    write_script(
        &dir.path().join("bin/crash.sh"),
        "#!/bin/sh\necho \"dying $2 at $(date +%s%N)\"\nexit 3\n",
    );
    write_script(
        &dir.path().join("bin/ok.sh"),
        "#!/bin/sh\necho done\nexit 0\n",
    );
    let mut cluster = Cluster::start(dir, port, &secrets());

    let rows = wait_until("crash-server-1 to be in a crash loop", || {
        let rows = cluster.list();
        (row(&rows, "crash-server-1")["state"] == "crashloop").then_some(rows)
    });
    let crash = row(&rows, "crash-server-1");
    assert_eq!(crash["restarts"], 2, "{crash}");
    assert_eq!(crash["pid"], serde_json::Value::Null);
    // Started three times in all: the first start and two restarts.
    let log = cluster.log("crash-server-1");
    assert_eq!(log.matches("dying").count(), 3, "{log}");
    let why = cluster.errors().join("\n");
    assert!(
        why.contains("crash-looping (2 restarts within 60 s)")
            && why.contains("dying crash-server-1"),
        "{why}"
    );

    // Exit status 0: never and on-failure do not restart.
    for id in ["once-server-1", "job-server-1"] {
        let r = wait_until("the server to have exited", || {
            let r = row(&cluster.list(), id);
            (r["state"] == "exited").then_some(r)
        });
        assert_eq!(r["restarts"], 0, "{r}");
    }

    // `kennel start` gives a crash-looping server a fresh chance.
    let out = output(cluster.cli("start").arg("crash-server-1"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the crash loop to be detected again", || {
        let log = cluster.log("crash-server-1");
        (log.matches("dying").count() >= 4
            && row(&cluster.list(), "crash-server-1")["state"] == "crashloop")
            .then_some(())
    });
    assert_eq!(cluster.log("crash-server-1").matches("dying").count(), 6);

    let out = output(cluster.cli("stop").arg("-y"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(cluster.wait_exit().success());
}

#[test]
fn a_new_master_adopts_the_servers_of_a_killed_one() {
    let port = free_port();
    let mut cluster = Cluster::start(project(port, &three_servers()), port, &secrets());
    let pids = cluster.wait_all_running();
    for (id, pid) in &pids {
        let file = cluster.path().join(format!(".kennel/run/{id}.pid"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with(&format!("{pid} ")), "{text}");
        wait_until("the server to be up", || {
            cluster.log(id).contains("hello from").then_some(())
        });
    }

    cluster.restart_master();
    cluster.wait_line("the adoption line", |l| {
        l.starts_with("kennel: adopted 3 running servers left by an earlier master")
    });
    let rows = cluster.list();
    for (id, pid) in &pids {
        let r = row(&rows, id);
        assert_eq!(r["pid"], *pid, "{r}");
        assert_eq!(r["adopted"], true, "{r}");
        assert_eq!(
            processes_running_as(&cluster.path(), id),
            [*pid],
            "{id} has a duplicate"
        );
        assert_eq!(
            cluster.log(id).matches("hello from").count(),
            1,
            "{id} restarted"
        );
    }
    let out = output(&mut cluster.cli("list"));
    assert!(
        text(&out.stdout).contains("* adopted"),
        "{}",
        text(&out.stdout)
    );

    // An adopted server that dies is seen (pidfd) and restarted per its policy.
    let (id, old) = pids[1].clone();
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    let r = wait_until("the adopted server to be restarted", || {
        let r = row(&cluster.list(), &id);
        (r["restarts"] == 1 && r["pid"].as_u64().is_some_and(|p| p as u32 != old)).then_some(r)
    });
    assert_eq!(r["adopted"], false, "{r}");

    // A graceful stop stops adopted servers too and removes the pid files.
    let all = cluster.wait_all_running();
    let out = output(cluster.cli("stop").arg("-y"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(cluster.wait_exit().success());
    for (id, pid) in &all {
        wait_until("the server to be gone", || (!alive(*pid)).then_some(()));
        assert!(
            !cluster
                .path()
                .join(format!(".kennel/run/{id}.pid"))
                .exists(),
            "{id}'s pid file is left"
        );
    }
}

/// Lines `line <n> ...` of a log, as numbers.
fn numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("line ")?.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn logs_rotate_under_a_writing_server_and_it_outlives_the_master() {
    let port = free_port();
    let a = free_port();
    let servers = format!(
        r#"{{"spam": [{{"id": "spam-server-1", "host": "127.0.0.1", "port": {a}, "bin": "bin/spam.sh"}}]}}"#
    );
    let dir = project_with(port, &servers, r#", "logs": {"maxBytes": 8192, "keep": 2}"#);
    // ~100 lines of 60 bytes a second, numbered: never blocks, never stops.
    write_script(
        &dir.path().join("bin/spam.sh"),
        r#"#!/bin/sh
i=0
while :; do
  i=$((i+1))
  echo "line $i 00000000000000000000000000000000000000000000000000"
  sleep 0.01
done
"#,
    );
    let mut cluster = Cluster::start(dir, port, &secrets());
    let pid = cluster.wait_all_running()[0].1;
    let logs = cluster.path().join("logs");
    let file = |suffix: &str| logs.join(format!("spam-server-1.log{suffix}"));
    wait_until("two rotations", || file(".2").exists().then_some(()));
    assert!(!file(".3").exists(), "keep 2 kept a third copy");
    // Each copy is one full file (the cap is checked every second: a little more than 8 KiB),
    // and the three files read in order continue each other.
    let (old, newer) = (
        std::fs::read_to_string(file(".2")).unwrap(),
        std::fs::read_to_string(file(".1")).unwrap(),
    );
    for copy in [&old, &newer] {
        assert!(
            copy.len() >= 8192 && copy.len() < 64 * 1024,
            "{}",
            copy.len()
        );
        assert!(!copy.contains('\0'), "a hole in a rotated copy");
        let n = numbers(copy);
        assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "gap inside a copy");
    }
    assert!(numbers(&newer)[0] > *numbers(&old).last().unwrap());

    // With the master gone (SIGKILL), the server keeps writing to its file: nothing blocks on
    // a dead pipe, nothing rotates.
    cluster.child.kill().unwrap();
    cluster.child.wait().unwrap();
    let at = std::fs::metadata(file("")).unwrap().len();
    wait_until("the server to write on without a master", || {
        (std::fs::metadata(file("")).unwrap().len() > at + 16 * 1024).then_some(())
    });
    assert!(alive(pid));
    let current = std::fs::read_to_string(file("")).unwrap();
    assert!(!current.contains('\0'), "a hole in the live file");

    // A new master adopts it and rotates again at once.
    cluster.restart_master();
    cluster.wait_line("the adoption line", |l| {
        l.starts_with("kennel: adopted 1 running")
    });
    wait_until("the big file to be rotated by the new master", || {
        (std::fs::metadata(file("")).unwrap().len() < 16 * 1024).then_some(())
    });
    assert!(std::fs::metadata(file(".1")).unwrap().len() > 16 * 1024);
    // `kennel logs -n` continues into the rotated copy when the file is short.
    let lines = |suffix: &str| numbers(&std::fs::read_to_string(file(suffix)).unwrap()).len();
    let want = lines("") + lines(".1") / 2;
    let out = output(
        cluster
            .cli("logs")
            .args(["spam-server-1", "-n", &want.to_string()]),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let n = numbers(&text(&out.stdout));
    assert_eq!(n.len(), want);
    assert!(n.windows(2).all(|w| w[1] > w[0]), "not in order");
    let out = output(cluster.cli("stop").arg("-y"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(cluster.wait_exit().success());
    // Not our child since the first master died: reaped by init, not at once.
    wait_until("the adopted server to be gone", || {
        (!alive(pid)).then_some(())
    });
}

mod live {
    //! The operator commands against an in-process master whose servers are stand-in
    //! scripts; the test registers on their behalf (with their real pids), as a real server
    //! would once started.

    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::common::*;
    use futures_util::{SinkExt, StreamExt};
    use kennel_config::{Project, Secrets};
    use kennel_master::{MasterClient, StartOptions, run};
    use kennel_proto::auth;
    use kennel_proto::frame::{AUTH_MAX_FRAME, DEFAULT_MAX_FRAME, ProtoCodec, length_codec};
    use kennel_proto::msg::{FromMaster, Register, Role, ServerInfo, ToMaster, to_master};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;
    use tokio_util::codec::Framed;
    use tokio_util::sync::CancellationToken;

    type Link = Framed<TcpStream, ProtoCodec<FromMaster, ToMaster>>;

    async fn register(addr: SocketAddr, project: &Project, id: &str, pid: u32) -> Link {
        let s = project.server(id).unwrap();
        let info = ServerInfo {
            id: id.to_owned(),
            server_type: s.info.server_type.clone(),
            host: s.info.host.clone(),
            port: u32::from(s.info.port),
            frontend: s.info.frontend,
            client_port: s.info.client_port.map(u32::from).unwrap_or(0),
            pid,
            extra_json: "{}".to_owned(),
        };
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut framed = Framed::new(stream, length_codec(AUTH_MAX_FRAME));
        timeout(TIMEOUT, auth::dial(&mut framed, b"s", Role::Server, id, ""))
            .await
            .unwrap()
            .unwrap();
        let mut link = framed.map_codec(|_| ProtoCodec::new(DEFAULT_MAX_FRAME));
        link.send(ToMaster {
            msg: Some(to_master::Msg::Register(Register { info: Some(info) })),
        })
        .await
        .unwrap();
        timeout(TIMEOUT, link.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        link
    }

    /// `(id, pid, state)` of every server.
    async fn table(cli: &mut MasterClient) -> Vec<(String, Option<u32>, String)> {
        cli.list()
            .await
            .unwrap()
            .servers
            .into_iter()
            .map(|s| {
                let id = s.info.unwrap().id;
                let state = kennel_master::ServerState::from_wire(s.state).to_string();
                (id, (s.pid != 0).then_some(s.pid), state)
            })
            .collect()
    }

    /// Registers (once per pid) every running server that has not registered yet.
    async fn register_new(
        addr: SocketAddr,
        project: &Project,
        cli: &mut MasterClient,
        links: &mut HashMap<String, (u32, Link)>,
    ) {
        for (id, pid, state) in table(cli).await {
            let Some(pid) = pid else { continue };
            if state == "starting" && links.get(&id).is_none_or(|(p, _)| *p != pid) {
                let link = register(addr, project, &id, pid).await;
                links.insert(id, (pid, link));
            }
        }
    }

    fn kennel_at(addr: SocketAddr, dir: &std::path::Path, args: &[&str]) -> std::process::Command {
        let mut cmd = kennel();
        cmd.args(args).arg("--dir").arg(dir).args([
            "--host",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--token",
            "c",
        ]);
        cmd
    }

    async fn run_cli(cmd: std::process::Command) -> std::process::Output {
        let mut cmd = cmd;
        tokio::task::spawn_blocking(move || output(&mut cmd))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn restart_remove_start_logs_config_and_usage() {
        let dir = project(free_port(), &three_servers());
        let project = Project::load(dir.path(), "development").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut opts = StartOptions::new(
            project.clone(),
            Secrets {
                server: "s".into(),
                cli: "c".into(),
            },
        );
        opts.echo_logs = false;
        let shutdown = CancellationToken::new();
        let master = tokio::spawn(run(opts, listener, shutdown.clone()));
        let mut cli = MasterClient::connect(&addr.to_string(), "c").await.unwrap();
        let mut links = HashMap::new();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while links.len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "servers did not start"
            );
            register_new(addr, &project, &mut cli, &mut links).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before: HashMap<String, u32> = links
            .iter()
            .map(|(id, (pid, _))| (id.clone(), *pid))
            .collect();

        // restart: one at a time, each once it re-registered (we register it as it starts).
        let mut child = tokio::process::Command::from(kennel_at(
            addr,
            dir.path(),
            &["restart", "chat-server-1~2"],
        ));
        child
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = child.spawn().unwrap();
        let waiting = tokio::spawn(child.wait_with_output());
        while !waiting.is_finished() {
            assert!(
                tokio::time::Instant::now() < deadline + TIMEOUT,
                "restart hangs"
            );
            register_new(addr, &project, &mut cli, &mut links).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = waiting.await.unwrap().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let said: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        assert_eq!(said.len(), 4, "{said:?}");
        assert!(
            said[0].starts_with("kennel: restarting chat-server-1 (pid "),
            "{said:?}"
        );
        assert!(
            said[1].starts_with("kennel: chat-server-1 restarted and registered"),
            "{said:?}"
        );
        assert!(
            said[2].starts_with("kennel: restarting chat-server-2 (pid "),
            "{said:?}"
        );
        assert!(
            said[3].starts_with("kennel: chat-server-2 restarted and registered"),
            "{said:?}"
        );
        let now = table(&mut cli).await;
        for (id, pid, state) in &now {
            assert_eq!(state, "running", "{now:?}");
            assert_eq!(*pid != Some(before[id]), id.starts_with("chat"), "{now:?}");
        }

        // Unknown ids and types: one line, exit 1.
        for args in [
            &["restart", "chat-server-9"][..],
            &["remove", "--type", "nope"],
            &["start", "chat-server-9"],
        ] {
            let out = run_cli(kennel_at(addr, dir.path(), args)).await;
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let err = text(&out.stderr);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains("unknown server"), "{err}");
        }

        // remove --type: stopped, not restarted.
        let chat_pids: Vec<u32> = table(&mut cli)
            .await
            .into_iter()
            .filter(|(id, _, _)| id.starts_with("chat"))
            .filter_map(|(_, pid, _)| pid)
            .collect();
        let out = run_cli(kennel_at(addr, dir.path(), &["remove", "--type", "chat"])).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        for (id, pid, state) in table(&mut cli).await {
            if id.starts_with("chat") {
                assert_eq!((pid, state.as_str()), (None, "removed"));
            }
        }
        for pid in chat_pids {
            assert!(!alive(pid), "removed server {pid} still runs");
        }

        // start: a removed server, and one new in the config file.
        let servers = std::fs::read_to_string(dir.path().join("config/sys/servers.json")).unwrap();
        let port = project.server("chat-server-2").unwrap().info.port;
        let widened = servers.replace(&format!("{port}]"), &format!("{}]", port + 1));
        assert_ne!(widened, servers);
        std::fs::write(dir.path().join("config/sys/servers.json"), widened).unwrap();
        let out = run_cli(kennel_at(
            addr,
            dir.path(),
            &["start", "chat-server-1", "chat-server-3"],
        ))
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let now = table(&mut cli).await;
        let ids: Vec<&str> = now.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "connector-server-1",
                "chat-server-1",
                "chat-server-2",
                "chat-server-3"
            ]
        );
        assert!(now[1].1.is_some() && now[3].1.is_some(), "{now:?}");
        assert_eq!(now[2].2, "removed");

        // logs
        let out = run_cli({
            let mut c = kennel();
            c.args(["logs", "connector-server-1", "-n", "1", "--dir"])
                .arg(dir.path());
            c
        })
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "oops on stderr\n");
        let out = run_cli({
            let mut c = kennel();
            c.args(["logs", "nope-server-1", "--dir"]).arg(dir.path());
            c
        })
        .await;
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("unknown server id"),
            "{}",
            text(&out.stderr)
        );

        // config --json: the expanded cluster as the master would run it.
        let out = run_cli({
            let mut c = kennel();
            c.args(["config", "--json", "--dir"]).arg(dir.path());
            c
        })
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[3]["id"], "chat-server-3");
        assert_eq!(rows[3]["restart"], "always");
        assert!(rows[0]["bin"].as_str().unwrap().ends_with("bin/server.sh"));

        // list: rss and cpu% once sampled (two samples a second apart).
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let list = cli.list().await.unwrap();
            let s = &list.servers[0];
            if s.rss_bytes.is_some_and(|r| r > 0) && s.cpu_percent.is_some() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never sampled: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let out = run_cli(kennel_at(addr, dir.path(), &["list", "--json"])).await;
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(rows[0]["rssBytes"].as_u64().is_some(), "{rows:?}");

        shutdown.cancel();
        timeout(TIMEOUT, master).await.unwrap().unwrap().unwrap();
        drop(links);
    }
}
