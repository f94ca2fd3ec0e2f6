//! `maxInFlight`, in one process (an in-process master and one frontend on the `kennel`
//! library, a TCP game client): a connection with that many handlers still running is not
//! read until one finishes, so a client cannot pile up unbounded work; its other messages
//! wait in the socket, in order, and are served once a handler is done.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use integration_tests::TIMEOUT;
use integration_tests::client::Client;
use integration_tests::cluster::free_port;
use kennel::{App, Args, Session};
use kennel_config::{Project, Secrets};
use kennel_proto::client::put_message;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const ROUTES: &[&str] = &["gate.main.wait", "gate.main.echo"];
const MAX_IN_FLIGHT: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_at_max_in_flight_is_not_read_until_a_handler_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("config/sys");
    std::fs::create_dir_all(&sys).unwrap();
    // The master's listener is bound first (port 0), so its port cannot be taken meanwhile.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let master_port = listener.local_addr().unwrap().port();
    let client_port = free_port();
    std::fs::write(
        sys.join("master.json"),
        json!({"test": {"id": "master-server-1", "host": "127.0.0.1", "port": master_port}})
            .to_string(),
    )
    .unwrap();
    std::fs::write(
        sys.join("servers.json"),
        json!({"test": {"gate": [{"id": "gate-1", "host": "127.0.0.1", "port": free_port(),
            "frontend": true, "clientPort": client_port, "maxInFlight": MAX_IN_FLIGHT}]}})
        .to_string(),
    )
    .unwrap();
    std::fs::write(sys.join("route.json"), json!(ROUTES).to_string()).unwrap();
    let project = Project::load(dir.path(), "test").unwrap();
    let secrets = Secrets::resolve(&project, true).unwrap();
    let mut opts = kennel_master::StartOptions::new(project, secrets);
    opts.spawn = false;
    opts.echo_logs = false;
    let master = CancellationToken::new();
    tokio::spawn(kennel_master::run(opts, listener, master.clone()));

    // `wait` holds until the test hands out a permit; `echo` answers at once.
    let permits = Arc::new(Semaphore::new(0));
    let app = App::new(Args {
        id: "gate-1".into(),
        env: "test".into(),
        dir: dir.path().to_path_buf(),
        rest: vec![],
    })
    .unwrap();
    let p = permits.clone();
    app.handler("gate.main.wait", move |_: App, _: Session, v: Value| {
        let p = p.clone();
        async move {
            p.acquire().await.unwrap().forget();
            Some(v)
        }
    });
    app.handler(
        "gate.main.echo",
        |_: App, _: Session, v: Value| async move { Some(v) },
    );
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    app.on_start_all(move |_| {
        let _ = started_tx.send(());
    });
    let a = app.clone();
    tokio::spawn(async move { a.run().await });
    tokio::time::timeout(TIMEOUT, started.recv())
        .await
        .expect("the gate starts");

    let mut c = Client::connect(&format!("127.0.0.1:{client_port}"))
        .await
        .unwrap();
    // MAX_IN_FLIGHT + 2 waits, then an echo, in one write.
    let (wait, echo) = (
        c.cmd("gate.main.wait").unwrap(),
        c.cmd("gate.main.echo").unwrap(),
    );
    let mut burst = BytesMut::new();
    for n in 0..MAX_IN_FLIGHT + 2 {
        put_message(&mut burst, wait, json!(n).to_string().as_bytes());
    }
    put_message(&mut burst, echo, b"\"echo\"");
    c.send_raw(&burst).await.unwrap();

    // At the cap, the rest is not read: the echo is not answered.
    let early = tokio::time::timeout(Duration::from_millis(500), c.next_message()).await;
    assert!(
        early.is_err(),
        "answered while {MAX_IN_FLIGHT} handlers were in flight: {early:?}"
    );
    // One finishes: one more wait starts (the connection is at the cap again).
    permits.add_permits(1);
    let (cmd, _) = c.next_message().await.unwrap();
    assert_eq!(cmd, wait);
    let early = tokio::time::timeout(Duration::from_millis(300), c.next_message()).await;
    assert!(early.is_err(), "the echo overtook the waits: {early:?}");
    // Two more finish: the last wait starts and the echo, below the cap again, is answered.
    permits.add_permits(2);
    let mut got = Vec::new();
    while !got.contains(&echo) {
        got.push(c.next_message().await.unwrap().0);
    }
    assert_eq!(
        got,
        [wait, wait, echo],
        "in order, the echo once below the cap"
    );
    permits.add_permits(MAX_IN_FLIGHT);
    for _ in 0..MAX_IN_FLIGHT - 1 {
        assert_eq!(c.next_message().await.unwrap().0, wait);
    }
    println!(
        "maxInFlight {MAX_IN_FLIGHT}: {} waits and an echo sent at once; nothing read past the \
         cap until a handler finished; all answered in order",
        MAX_IN_FLIGHT + 2
    );
    app.shutdown();
    master.cancel();
}
