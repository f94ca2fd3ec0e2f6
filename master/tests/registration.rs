//! Registration over a real socket: fake servers authenticate with `kennel_proto::auth::dial`
//! and send `Register`; the master answers `List`, tells the others `Add` / `Remove`, refuses
//! duplicates, unknown ids and wrong secrets. In-process through [`run`]
//! (servers not spawned), and against the `kennel` binary for the readiness lines.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use kennel_config::{Project, Secrets};
use kennel_master::{ClientError, MasterClient, StartOptions, run};
use kennel_proto::auth::{self, AuthError};
use kennel_proto::frame::{AUTH_MAX_FRAME, DEFAULT_MAX_FRAME, ProtoCodec, length_codec};
use kennel_proto::msg::{FromMaster, Register, Role, ServerInfo, ToMaster, from_master, to_master};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

type Link = Framed<TcpStream, ProtoCodec<FromMaster, ToMaster>>;

const STEP: Duration = Duration::from_secs(10);

async fn dial(addr: SocketAddr, secret: &str, id: &str) -> Result<Link, AuthError> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, length_codec(AUTH_MAX_FRAME));
    timeout(
        STEP,
        auth::dial(&mut framed, secret.as_bytes(), Role::Server, id, ""),
    )
    .await
    .expect("authentication timed out")?;
    Ok(framed.map_codec(|_| ProtoCodec::new(DEFAULT_MAX_FRAME)))
}

fn info(project: &Project, id: &str) -> ServerInfo {
    let s = project.server(id).unwrap();
    ServerInfo {
        id: id.to_owned(),
        server_type: s.info.server_type.clone(),
        host: s.info.host.clone(),
        port: u32::from(s.info.port),
        frontend: s.info.frontend,
        client_port: s.info.client_port.map(u32::from).unwrap_or(0),
        pid: std::process::id(),
        extra_json: "{}".to_owned(),
    }
}

/// The next message from the master (`None`: the link closed).
async fn next(link: &mut Link) -> Option<from_master::Msg> {
    match timeout(STEP, link.next())
        .await
        .expect("no message in time")
    {
        Some(Ok(m)) => Some(m.msg.expect("empty FromMaster")),
        Some(Err(e)) => panic!("bad frame: {e}"),
        None => None,
    }
}

async fn register(addr: SocketAddr, secret: &str, info: ServerInfo) -> (Link, from_master::Msg) {
    let mut link = dial(addr, secret, &info.id.clone()).await.unwrap();
    link.send(ToMaster {
        msg: Some(to_master::Msg::Register(Register { info: Some(info) })),
    })
    .await
    .unwrap();
    let reply = next(&mut link).await.expect("closed instead of answering");
    (link, reply)
}

fn ids(msg: &from_master::Msg) -> Vec<String> {
    match msg {
        from_master::Msg::List(l) => l.servers.iter().map(|s| s.id.clone()).collect(),
        other => panic!("expected List, got {other:?}"),
    }
}

fn secrets() -> Secrets {
    Secrets {
        server: "server-secret".to_owned(),
        cli: "cli-secret".to_owned(),
    }
}

/// An in-process master (spawning nothing) on a three-server project, listening on port 0.
async fn in_process_master() -> (
    tempfile::TempDir,
    Project,
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), kennel_master::MasterError>>,
) {
    let dir = project(free_port(), &three_servers());
    let project = Project::load(dir.path(), "development").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut opts = StartOptions::new(project.clone(), secrets());
    opts.spawn = false;
    let shutdown = CancellationToken::new();
    let master = tokio::spawn(run(opts, listener, shutdown.clone()));
    (dir, project, addr, shutdown, master)
}

#[tokio::test]
async fn register_list_add_remove_refusals_and_cli() {
    let (_dir, project, addr, shutdown, master) = in_process_master().await;

    // First server: the list holds itself.
    let (mut chat1, reply) = register(addr, "server-secret", info(&project, "chat-server-1")).await;
    assert_eq!(ids(&reply), ["chat-server-1"]);

    // The same id again: refused with an error, then closed.
    let (mut dup, reply) = register(addr, "server-secret", info(&project, "chat-server-1")).await;
    match reply {
        from_master::Msg::Error(e) => assert!(e.error.contains("already registered"), "{e:?}"),
        other => panic!("expected Error, got {other:?}"),
    }
    assert_eq!(next(&mut dup).await, None);

    // An id not in the config: refused.
    let mut stranger = info(&project, "chat-server-2");
    stranger.id = "chat-server-9".to_owned();
    let (_, reply) = register(addr, "server-secret", stranger).await;
    assert!(
        matches!(&reply, from_master::Msg::Error(e) if e.error.contains("unknown server id")),
        "{reply:?}"
    );

    // A wrong secret (or the CLI secret) does not get past authentication.
    assert!(matches!(
        dial(addr, "wrong", "chat-server-2").await,
        Err(AuthError::BadMac)
    ));
    assert!(matches!(
        dial(addr, "cli-secret", "chat-server-2").await,
        Err(AuthError::BadMac)
    ));

    // A second server: it gets both (config order), the first one hears Add.
    let (mut connector, reply) =
        register(addr, "server-secret", info(&project, "connector-server-1")).await;
    assert_eq!(ids(&reply), ["connector-server-1", "chat-server-1"]);
    match next(&mut chat1).await {
        Some(from_master::Msg::Add(a)) => assert_eq!(a.info.unwrap().id, "connector-server-1"),
        other => panic!("expected Add, got {other:?}"),
    }

    // The CLI sees them as external servers; a wrong CLI secret is refused.
    let mut cli = MasterClient::connect(&addr.to_string(), "cli-secret")
        .await
        .unwrap();
    let list = cli.list().await.unwrap();
    let states: Vec<(String, String)> = list
        .servers
        .iter()
        .map(|s| {
            let state = kennel_master::ServerState::from_wire(s.state);
            (s.info.clone().unwrap().id, state.to_string())
        })
        .collect();
    assert_eq!(
        states,
        [
            ("connector-server-1".to_owned(), "external".to_owned()),
            ("chat-server-1".to_owned(), "external".to_owned()),
            ("chat-server-2".to_owned(), "down".to_owned()),
        ]
    );
    assert_eq!(list.servers[1].pid, std::process::id());
    assert!(matches!(
        MasterClient::connect(&addr.to_string(), "server-secret").await,
        Err(ClientError::WrongSecret { .. })
    ));

    // A dropped link: the others hear Remove, and the id may register again.
    drop(connector.close().await);
    drop(connector);
    match next(&mut chat1).await {
        Some(from_master::Msg::Remove(r)) => assert_eq!(r.id, "connector-server-1"),
        other => panic!("expected Remove, got {other:?}"),
    }
    let (_connector, reply) =
        register(addr, "server-secret", info(&project, "connector-server-1")).await;
    assert_eq!(ids(&reply), ["connector-server-1", "chat-server-1"]);
    assert!(matches!(
        next(&mut chat1).await,
        Some(from_master::Msg::Add(_))
    ));

    // `stop` from the CLI ends `run`, closes the links and the CLI link.
    cli.stop().await.unwrap();
    timeout(STEP, master)
        .await
        .expect("the master did not stop")
        .unwrap()
        .unwrap();
    cli.closed(STEP).await.unwrap();
    assert_eq!(next(&mut chat1).await, None);
    assert!(
        !shutdown.is_cancelled(),
        "a CLI stop is not the caller's shutdown"
    );
}

#[tokio::test]
async fn shutdown_token_ends_run() {
    let (_dir, project, addr, shutdown, master) = in_process_master().await;
    let (mut link, _) = register(addr, "server-secret", info(&project, "chat-server-2")).await;
    shutdown.cancel();
    timeout(STEP, master)
        .await
        .expect("the master did not stop")
        .unwrap()
        .unwrap();
    assert_eq!(next(&mut link).await, None);
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

/// Against the binary, with generated secrets: once every configured server has registered,
/// the readiness lines appear; the CLI finds its secret in `.kennel/secrets.json`.
#[tokio::test]
async fn readiness_lines_once_every_server_registered() {
    let port = free_port();
    let dir = project(port, &three_servers());
    let project = Project::load(dir.path(), "development").unwrap();
    let mut cluster = Cluster::start(dir, port, &[]);
    let pids = cluster.wait_all_running();
    let stored: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.path().join(".kennel/secrets.json")).unwrap(),
    )
    .unwrap();
    let secret = stored["server"].as_str().unwrap().to_owned();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut links = Vec::new();
    for s in &project.servers {
        assert!(
            !cluster.lines().iter().any(|l| l.contains("cluster ready")),
            "ready too early"
        );
        // A server the master started registers from the process it started.
        let mut me = info(&project, &s.info.id);
        me.pid = pids.iter().find(|(id, _)| *id == s.info.id).unwrap().1;
        let (link, reply) = register(addr, &secret, me).await;
        assert!(matches!(reply, from_master::Msg::List(_)), "{reply:?}");
        links.push(link);
    }
    let ready = cluster.wait_line("the ready line", |l| l.contains("cluster ready"));
    let ms = ready
        .strip_prefix("kennel: cluster ready: 3 servers registered in ")
        .and_then(|rest| rest.strip_suffix(" ms"))
        .unwrap_or_else(|| panic!("unexpected ready line {ready:?}"));
    ms.parse::<u64>().unwrap();
    let cp = project
        .server("connector-server-1")
        .unwrap()
        .info
        .client_port
        .unwrap();
    // The next line may still be on its way through the pipe: wait for it, then check order.
    cluster.wait_line("the connect line", |l| l.contains("clients connect to"));
    let lines = cluster.lines();
    let at = lines.iter().position(|l| *l == ready).unwrap();
    assert_eq!(
        lines[at + 1],
        format!("kennel: clients connect to connector-server-1 at 127.0.0.1:{cp}")
    );
    let listening = &lines[0];
    assert_eq!(
        listening,
        &format!(
            "kennel: master master-server-1 listening on 127.0.0.1:{port} (env development, project {})",
            std::fs::canonicalize(cluster.path()).unwrap().display()
        )
    );

    let rows = cluster.list();
    assert!(rows.iter().all(|r| r["state"] == "running"), "{rows:?}");

    // A copy of chat-server-1 started by hand (same `--id`, another process) is refused, with
    // the way to run it by hand; the master's own process may register again.
    let chat1 = project
        .servers
        .iter()
        .position(|s| s.info.id == "chat-server-1")
        .unwrap();
    drop(links.remove(chat1));
    wait_until("chat-server-1's link to close", || {
        (cluster
            .list()
            .iter()
            .any(|r| r["id"] == "chat-server-1" && r["state"] == "unlinked"))
        .then_some(())
    });
    let mut copy = std::process::Command::new("sh")
        .args(["-c", "sleep 100", "--id", "chat-server-1"])
        .current_dir(cluster.path())
        .spawn()
        .unwrap();
    // `spawn` may return while the child is still inside `execve`, its command line empty:
    // the master would see no `--id` and take it for a wrapper.
    wait_until("the copy's command line", || {
        std::fs::read(format!("/proc/{}/cmdline", copy.id()))
            .is_ok_and(|c| c.windows(4).any(|w| w == b"--id"))
            .then_some(())
    });
    let mut me = info(&project, "chat-server-1");
    me.pid = copy.id();
    let (_, reply) = register(addr, &secret, me.clone()).await;
    let _ = copy.kill();
    let _ = copy.wait();
    match reply {
        from_master::Msg::Error(e) => assert!(
            e.error
                .contains("chat-server-1 is started by this master (pid ")
                && e.error.contains("\"external\": true"),
            "{e:?}"
        ),
        other => panic!("the copy was not refused: {other:?}"),
    }
    me.pid = pids.iter().find(|(id, _)| id == "chat-server-1").unwrap().1;
    let (_link, reply) = register(addr, &secret, me).await;
    assert!(matches!(reply, from_master::Msg::List(_)), "{reply:?}");

    let out = output(cluster.cli("stop").arg("-y"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(cluster.wait_exit().success());
}
