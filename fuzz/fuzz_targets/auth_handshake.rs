//! Fuzz target: the mutual HMAC authentication every internal link starts with
//! (`kennel_proto::auth::{accept, dial}`), run for real over an in-memory duplex stream whose
//! other end plays back the fuzz input, with the `AUTH_MAX_FRAME` limit links use.
//!
//! Input: `[mode u8][bytes...]`. Mode 0: raw bytes to an acceptor; mode 1: a structured
//! `Hello` (fields from the input) then a `Proof`, then raw bytes, to an acceptor; mode 2: raw
//! bytes to a dialer. Oracles: no panic, no hang, and never a successful authentication (the
//! input cannot know the secret, and every run uses fresh nonces).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use kennel_proto::auth;
use kennel_proto::frame::{AUTH_MAX_FRAME, length_codec};
use kennel_proto::msg::{Hello, Proof, Role};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;
use tokio_util::codec::Framed;

#[derive(Arbitrary, Debug)]
struct Script {
    role: i32,
    id: String,
    nonce: Vec<u8>,
    version: String,
    target: String,
    mac: Vec<u8>,
    refuse: bool,
}

fn frame(out: &mut Vec<u8>, m: &impl Message) {
    let b = m.encode_to_vec();
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(&b);
}

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let mode = mode % 3;
    let mut input = Vec::new();
    let mut refuse = false;
    if mode == 1 {
        let mut u = Unstructured::new(rest);
        let Ok(s) = Script::arbitrary(&mut u) else {
            return;
        };
        refuse = s.refuse;
        frame(
            &mut input,
            &Hello {
                role: s.role,
                id: s.id,
                nonce: s.nonce.into(),
                version: s.version,
                target: s.target,
                ..Default::default()
            },
        );
        frame(&mut input, &Proof { mac: s.mac.into() });
        input.extend_from_slice(u.take_rest());
    } else {
        input.extend_from_slice(rest);
    }
    runtime().block_on(async move {
        let (mine, mut theirs) = tokio::io::duplex(1 << 20);
        theirs.write_all(&input).await.expect("buffered");
        theirs.shutdown().await.expect("shutdown");
        let mut link = Framed::new(mine, length_codec(AUTH_MAX_FRAME));
        let secret = b"fuzz-secret".to_vec();
        let outcome = if mode == 2 {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                auth::dial(&mut link, &secret, Role::Peer, "chat-server-1", ""),
            )
            .await
            .expect("dial hung on a finite input");
            r.map(|_| ())
        } else {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                auth::accept(&mut link, "master-server-1", |h| {
                    if refuse || h.role == Role::Cli as i32 {
                        Err(format!("refused {}", h.id))
                    } else {
                        Ok(secret.clone())
                    }
                }),
            )
            .await
            .expect("accept hung on a finite input");
            r.map(|_| ())
        };
        assert!(outcome.is_err(), "authenticated without the secret");
        drop(theirs);
    });
});
