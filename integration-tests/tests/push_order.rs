//! Pushes keep their order and lose nothing when the frontend writes them straight to an idle
//! client's socket (`worker/src/edge/direct.rs`): pushes for a client on another frontend are
//! written by that frontend's link reader, a few at a time; a client that stops reading lets
//! them pile up in the kernel and its queue, and everything arrives in order once it reads
//! again, while the other players are served. (What a full socket leaves for the connection's
//! task is tested in `edge::clients`, with socket buffers small enough to fill.)

use integration_tests::client::Client;
use integration_tests::cluster::Cluster;
use serde_json::json;

/// Messages sent while the reader does not read (~0.4 MB in all: within `sendQueueBytes`,
/// 4 MiB, should the kernel's buffers be small).
const MESSAGES: usize = 100;
const PAD: usize = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_client_that_stops_reading_arrive_in_order() {
    let mut cluster = Cluster::start(2, 2).expect("cluster boots");
    cluster.wait_line("kennel: cluster ready").unwrap();
    let room = 5;
    // The reader on one frontend, the sender on the other: pushes cross a peer link and are
    // written by the link's reader, not by the client's own task.
    let mut reader = Client::connect(cluster.client_addr(0)).await.unwrap();
    let mut sender = Client::connect(cluster.client_addr(1)).await.unwrap();
    integration_tests::load::login_join(&mut reader, 1, room)
        .await
        .unwrap();
    integration_tests::load::login_join(&mut sender, 2, room)
        .await
        .unwrap();

    let pad = "x".repeat(PAD);
    for seq in 0..MESSAGES {
        sender
            .send("chat.main.send", &json!({"seq": seq, "pad": pad}))
            .await
            .unwrap();
        // The sender is in the room too: it reads its copy, so only the reader falls behind.
        let got = sender.expect_push("chat.main.onChat").await.unwrap();
        assert_eq!(got["seq"], json!(seq));
    }
    // The reader's frontend still serves others while that client's queue is full of pushes.
    let echo = sender
        .request("connector.main.echo", &json!({"still": "served"}))
        .await
        .unwrap();
    assert_eq!(echo, json!({"still": "served"}));

    for seq in 0..MESSAGES {
        let got = reader.expect_push("chat.main.onChat").await.unwrap();
        assert_eq!(
            got,
            json!({"seq": seq, "pad": pad, "u": 2}),
            "push {seq} out of order or changed"
        );
    }
    reader
        .expect_none("chat.main.onChat", std::time::Duration::from_millis(300))
        .await
        .unwrap();
}
