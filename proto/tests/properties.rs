//! Property tests (proptest) for every kennel wire, run in the normal test suite beside the
//! long cargo-fuzz runs of `fuzz/`: the client frame codec and the internal protobuf framing
//! round-trip whatever TCP does to the byte stream, reject what they must on the header alone,
//! and never panic on garbage; authentication succeeds exactly when both sides share the
//! secret, and a recorded answer cannot be replayed.

use bytes::{Bytes, BytesMut};
use kennel_proto::auth::{self, AuthError};
use kennel_proto::client::{
    ClientCodec, DEFAULT_MAX_LEN, Frame, FrameError, MAX_RESERVE_AHEAD, TYPE_HANDSHAKE, put_frame,
};
use kennel_proto::frame::{AUTH_MAX_FRAME, LinkError, ProtoCodec, length_codec};
use kennel_proto::msg::{
    self, CliRequest, CliResponse, FromMaster, PeerMsg, Role, ToMaster, cli_request, cli_response,
    from_master, peer_msg, to_master,
};
use proptest::prelude::*;
use prost::Message;
use tokio_util::codec::{Decoder, Encoder, Framed};

// ------------------------------------------------------------------ strategies

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), bytes(300)).prop_map(|(cmd, payload)| Frame::Message { cmd, payload }),
        bytes(60).prop_map(Frame::Handshake),
        Just(Frame::Heartbeat),
    ]
}

/// Cut points splitting a stream of `len` bytes into chunks (as TCP may deliver it).
fn cuts(stream: &[u8], seeds: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = seeds.iter().map(|s| s % (stream.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points.into_iter().chain([stream.len()]) {
        out.push(stream[at..p].to_vec());
        at = p;
    }
    out
}

fn info() -> impl Strategy<Value = msg::ServerInfo> {
    (
        "[a-z-]{0,12}[0-9]{0,3}",
        "[a-z]{0,8}",
        any::<u32>(),
        any::<bool>(),
        any::<u32>(),
        ".{0,40}",
    )
        .prop_map(|(id, ty, port, frontend, pid, extra)| msg::ServerInfo {
            id,
            server_type: ty,
            host: "127.0.0.1".into(),
            port,
            frontend,
            client_port: port / 2,
            pid,
            extra_json: extra,
        })
}

fn to_master() -> impl Strategy<Value = ToMaster> {
    prop_oneof![
        info().prop_map(|i| to_master::Msg::Register(msg::Register { info: Some(i) })),
        (any::<u64>(), ".{0,20}", ".{0,20}").prop_map(|(seq, reply, error)| {
            to_master::Msg::CommandReply(msg::CommandReply { seq, reply, error })
        }),
    ]
    .prop_map(|m| ToMaster { msg: Some(m) })
}

fn from_master() -> impl Strategy<Value = FromMaster> {
    prop_oneof![
        proptest::collection::vec(info(), 0..5)
            .prop_map(|servers| from_master::Msg::List(msg::ServerList { servers })),
        info().prop_map(|i| from_master::Msg::Add(msg::AddServer { info: Some(i) })),
        ".{0,20}".prop_map(|id| from_master::Msg::Remove(msg::RemoveServer { id })),
        (any::<u64>(), proptest::collection::vec(".{0,10}", 0..4))
            .prop_map(|(seq, args)| from_master::Msg::Command(msg::Command { seq, args })),
        ".{0,40}".prop_map(|error| from_master::Msg::Error(msg::RegisterError { error })),
    ]
    .prop_map(|m| FromMaster { msg: Some(m) })
}

fn peer() -> impl Strategy<Value = PeerMsg> {
    let session = (
        proptest::option::of(any::<u64>()),
        "[a-z-]{0,16}",
        any::<u64>(),
        bytes(64),
    )
        .prop_map(|(uid, frontend_id, conn_id, settings)| msg::Session {
            uid,
            frontend_id,
            conn_id,
            settings,
            ip: "10.0.0.1".into(),
        });
    prop_oneof![
        (any::<u64>(), "[a-z.]{0,24}", bytes(200))
            .prop_map(|(id, route, args)| peer_msg::Msg::Rpc(msg::RpcRequest { id, route, args })),
        (any::<u64>(), bytes(200), ".{0,20}").prop_map(|(id, result, error)| {
            peer_msg::Msg::RpcReply(msg::RpcResponse { id, result, error })
        }),
        (session, any::<u32>(), bytes(200)).prop_map(|(s, cmd, payload)| {
            peer_msg::Msg::Client(msg::ClientRequest {
                session: Some(s),
                cmd,
                payload,
            })
        }),
        (
            any::<u32>(),
            bytes(200),
            proptest::collection::vec(any::<u64>(), 0..20),
            proptest::collection::vec(any::<u64>(), 0..20)
        )
            .prop_map(|(cmd, payload, conn_ids, uids)| {
                peer_msg::Msg::Push(msg::ClientPush {
                    cmd,
                    payload,
                    conn_ids,
                    uids,
                })
            }),
        any::<u64>().prop_map(|seq| peer_msg::Msg::Ping(msg::Ping { seq })),
        (any::<u64>(), bytes(64)).prop_map(|(conn_id, settings)| {
            peer_msg::Msg::Apply(msg::SessionApply { conn_id, settings })
        }),
    ]
    .prop_map(|m| PeerMsg { msg: Some(m) })
}

fn cli_req() -> impl Strategy<Value = CliRequest> {
    let ids = proptest::collection::vec("[a-z-]{1,12}[0-9]{0,2}", 0..4);
    prop_oneof![
        Just(cli_request::Cmd::List(msg::ListRequest {})),
        Just(cli_request::Cmd::Stop(msg::StopRequest {})),
        "[a-z-]{1,16}".prop_map(|id| cli_request::Cmd::Restart(msg::RestartRequest { id })),
        (ids.clone(), ids.clone())
            .prop_map(|(ids, types)| cli_request::Cmd::Remove(msg::RemoveRequest { ids, types })),
        ids.prop_map(|ids| cli_request::Cmd::Start(msg::StartRequest { ids })),
    ]
    .prop_map(|c| CliRequest { cmd: Some(c) })
}

fn cli_resp() -> impl Strategy<Value = CliResponse> {
    let status = (
        info(),
        // Any value, known states and values a newer master might send alike.
        any::<i32>(),
        any::<u32>(),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(0.0f64..800.0),
    )
        .prop_map(|(i, state, pid, up, rss, cpu)| msg::ServerStatus {
            info: Some(i),
            state,
            pid,
            uptime_ms: up,
            restarts: pid % 7,
            adopted: pid % 2 == 0,
            rss_bytes: rss,
            cpu_percent: cpu,
            clients: rss.map(|r| (r % 1000) as u32),
            remote: pid % 3 == 0,
            external: pid % 5 == 0,
            status: [("rooms".to_owned(), (pid % 100).to_string())].into(),
            rpc: (pid % 4 == 0).then(|| msg::RpcStats {
                calls: up,
                notifies: u64::from(pid),
                errors: [("timeout".to_owned(), up % 9)].into(),
                latency_bounds: vec![0.001, 0.01, 0.1],
                latency_counts: vec![1, 2, 3],
                latency_count: 4,
                latency_sum: cpu.unwrap_or(0.5),
            }),
            panics: [("chat.main.send".to_owned(), up % 5)].into(),
            dropped: [("forward".to_owned(), up % 11)].into(),
        });
    prop_oneof![
        proptest::collection::vec(status, 0..4).prop_map(|servers| cli_response::Msg::List(
            msg::ListReply {
                ready: servers.len() % 2 == 0,
                servers,
            }
        )),
        ".{0,30}".prop_map(cli_response::Msg::Ok),
        ".{0,30}".prop_map(cli_response::Msg::Error),
    ]
    .prop_map(|m| CliResponse { msg: Some(m) })
}

/// Encodes `msgs` with `ProtoCodec`, splits the stream at `seeds`, decodes it chunk by chunk.
fn proto_round_trip<M>(msgs: &[M], seeds: &[usize]) -> Result<(), TestCaseError>
where
    M: Message + Default + Clone + PartialEq + std::fmt::Debug,
{
    let mut codec = ProtoCodec::<M, M>::new(1 << 20);
    let mut stream = BytesMut::new();
    for m in msgs {
        codec.encode(m.clone(), &mut stream).unwrap();
    }
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for chunk in cuts(&stream, seeds) {
        buf.extend_from_slice(&chunk);
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            got.push(m);
        }
    }
    prop_assert_eq!(&got, &msgs.to_vec());
    prop_assert!(buf.is_empty());
    Ok(())
}

// ------------------------------------------------------------------ client codec

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of frames, encoded and delivered in arbitrary pieces, decodes to itself.
    #[test]
    fn client_frames_round_trip_across_any_split(
        frames in proptest::collection::vec(frame(), 0..12),
        seeds in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut codec = ClientCodec::default();
        let mut stream = BytesMut::new();
        for f in &frames {
            codec.encode(f.clone(), &mut stream).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in cuts(&stream, &seeds) {
            buf.extend_from_slice(&chunk);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    /// Garbage decodes the same whole or in pieces (frames and error), and never panics.
    #[test]
    fn client_garbage_same_whole_or_split(
        stream in proptest::collection::vec(any::<u8>(), 0..400),
        max in 1usize..300,
        seeds in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let run = |chunks: Vec<Vec<u8>>| {
            let mut codec = ClientCodec::new(max);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for c in chunks {
                buf.extend_from_slice(&c);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(f)) => frames.push(f),
                        Ok(None) => break,
                        Err(e) => return (frames, Some(e.to_string())),
                    }
                }
            }
            (frames, None)
        };
        prop_assert_eq!(run(vec![stream.clone()]), run(cuts(&stream, &seeds)));
    }

    /// A header declaring more than the maximum is rejected on its 4 bytes alone; one declaring
    /// up to the maximum reserves at most `MAX_RESERVE_AHEAD` before the body arrives.
    #[test]
    fn client_declared_length_is_not_an_allocation(len in 1u32..=u32::MAX, kind in 1u8..=3) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&[kind]);
        let r = ClientCodec::new(DEFAULT_MAX_LEN).decode(&mut buf);
        if len as usize > DEFAULT_MAX_LEN {
            let too_long = matches!(r, Err(FrameError::TooLong { .. }));
            prop_assert!(too_long);
        } else {
            // Complete (len 1: a heartbeat, an empty handshake, or a message too short for a
            // cmd) or waiting for the body; never an allocation of the declared size.
            let ok = matches!(r, Ok(_) | Err(FrameError::ShortMessage));
            prop_assert!(ok, "{:?}", r);
            prop_assert!(buf.capacity() <= 2 * MAX_RESERVE_AHEAD + 64, "capacity {}", buf.capacity());
        }
    }

    /// Before the handshake (limit 1 + 50), a handshake body of at most 50 bytes passes and
    /// anything longer is refused before it is buffered.
    #[test]
    fn pre_handshake_limit(body in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut buf = BytesMut::new();
        put_frame(&mut buf, TYPE_HANDSHAKE, &body);
        buf.truncate(5); // the header and type only
        let mut codec = ClientCodec::new(51);
        let r = codec.decode(&mut buf);
        if body.len() <= 50 {
            prop_assert!(r.is_ok());
        } else {
            let too_long = matches!(r, Err(FrameError::TooLong { len, max: 51 }) if len == body.len() + 1);
            prop_assert!(too_long);
        }
    }
}

// ------------------------------------------------------------------ internal links

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn master_link_round_trips(
        up in proptest::collection::vec(to_master(), 1..6),
        down in proptest::collection::vec(from_master(), 1..6),
        seeds in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        proto_round_trip(&up, &seeds)?;
        proto_round_trip(&down, &seeds)?;
    }

    #[test]
    fn peer_link_round_trips(
        msgs in proptest::collection::vec(peer(), 1..8),
        seeds in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        proto_round_trip(&msgs, &seeds)?;
    }

    #[test]
    fn cli_link_round_trips(
        reqs in proptest::collection::vec(cli_req(), 1..6),
        resps in proptest::collection::vec(cli_resp(), 1..4),
        seeds in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        proto_round_trip(&reqs, &seeds)?;
        proto_round_trip(&resps, &seeds)?;
    }

    /// Garbage on any internal link is an error or a message, never a panic; a frame longer
    /// than the link's limit is refused on its header.
    #[test]
    fn internal_garbage_never_panics(stream in proptest::collection::vec(any::<u8>(), 0..600)) {
        fn drain<M: Message + Default>(stream: &[u8], max: usize) {
            let mut codec = ProtoCodec::<M, M>::new(max);
            let mut buf = BytesMut::from(stream);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
        drain::<ToMaster>(&stream, 256);
        drain::<FromMaster>(&stream, 256);
        drain::<PeerMsg>(&stream, 256);
        drain::<CliRequest>(&stream, 256);
        drain::<CliResponse>(&stream, 256);
        drain::<msg::Hello>(&stream, AUTH_MAX_FRAME);
        drain::<msg::Challenge>(&stream, AUTH_MAX_FRAME);
    }

    #[test]
    fn internal_oversize_rejected_on_header(len in (AUTH_MAX_FRAME as u32 + 1)..=u32::MAX) {
        let mut codec = ProtoCodec::<PeerMsg, PeerMsg>::new(AUTH_MAX_FRAME);
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let io = matches!(codec.decode(&mut buf), Err(LinkError::Io(_)));
        prop_assert!(io);
    }
}

// ------------------------------------------------------------------ authentication

type Link = Framed<tokio::io::DuplexStream, tokio_util::codec::LengthDelimitedCodec>;

fn pair() -> (Link, Link) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        Framed::new(a, length_codec(AUTH_MAX_FRAME)),
        Framed::new(b, length_codec(AUTH_MAX_FRAME)),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Authentication succeeds on both sides exactly when the secrets are equal.
    #[test]
    fn auth_succeeds_iff_same_secret(
        s1 in proptest::collection::vec(any::<u8>(), 1..40),
        s2 in proptest::collection::vec(any::<u8>(), 1..40),
        same in any::<bool>(),
        id in "[a-z-]{1,20}",
    ) {
        let s2 = if same { s1.clone() } else { s2 };
        let (rd, ra) = rt().block_on(async {
            let (mut d, mut a) = pair();
            let s1c = s1.clone();
            let dialer = tokio::spawn(async move {
                auth::dial(&mut d, &s1c, Role::Peer, &id, "").await
            });
            let ra = auth::accept(&mut a, "acceptor", |_| Ok(s2.clone())).await;
            drop(a);
            (dialer.await.unwrap(), ra)
        });
        prop_assert_eq!(rd.is_ok(), s1 == s2);
        prop_assert_eq!(ra.is_ok(), s1 == s2);
    }
}

/// A dialer that recorded a successful session's `Proof` cannot reuse it: the acceptor's fresh
/// nonce changes the expected MAC, so the replay fails with `BadMac`.
#[test]
fn replayed_proof_is_refused() {
    rt().block_on(async {
        use futures_util::{SinkExt, StreamExt};
        let secret = b"shared".to_vec();
        let hello = msg::Hello {
            role: Role::Server as i32,
            id: "chat-server-1".into(),
            nonce: Bytes::from_static(&[7; 16]),
            version: kennel_proto::VERSION.into(),
            target: String::new(),
            ..Default::default()
        };
        // Session 1: an honest dialer (it knows the secret); the proof is recorded.
        let (mut d, mut a) = pair();
        let acceptor = {
            let secret = secret.clone();
            tokio::spawn(async move { auth::accept(&mut a, "master", |_| Ok(secret)).await })
        };
        d.send(Bytes::from(hello.encode_to_vec())).await.unwrap();
        let ch = msg::Challenge::decode(d.next().await.unwrap().unwrap().freeze()).unwrap();
        let proof = msg::Proof {
            mac: auth::mac(
                &secret,
                b"dialer",
                Role::Server,
                &hello.id,
                &ch.id,
                &hello.nonce,
                &ch.nonce,
            )
            .into(),
        };
        d.send(Bytes::from(proof.encode_to_vec())).await.unwrap();
        assert!(acceptor.await.unwrap().is_ok(), "the honest session works");

        // Session 2: same Hello, the recorded proof replayed.
        let (mut d, mut a) = pair();
        let acceptor =
            tokio::spawn(async move { auth::accept(&mut a, "master", |_| Ok(secret)).await });
        d.send(Bytes::from(hello.encode_to_vec())).await.unwrap();
        let ch2 = msg::Challenge::decode(d.next().await.unwrap().unwrap().freeze()).unwrap();
        assert_ne!(ch2.nonce, ch.nonce, "the acceptor's nonce is fresh");
        d.send(Bytes::from(proof.encode_to_vec())).await.unwrap();
        let r = acceptor.await.unwrap();
        assert!(matches!(r, Err(AuthError::BadMac)), "{r:?}");
        let res = msg::AuthResult::decode(d.next().await.unwrap().unwrap().freeze()).unwrap();
        assert!(!res.ok);
    });
}

/// A dialer whose nonce is too short (it would weaken the transcript) is refused before any
/// MAC is computed.
#[test]
fn short_nonce_is_refused() {
    rt().block_on(async {
        use futures_util::SinkExt;
        let (mut d, mut a) = pair();
        let hello = msg::Hello {
            role: Role::Peer as i32,
            id: "x".into(),
            nonce: Bytes::from_static(&[1; 4]),
            ..Default::default()
        };
        d.send(Bytes::from(hello.encode_to_vec())).await.unwrap();
        let r = auth::accept(&mut a, "y", |_| Ok(b"k".to_vec())).await;
        assert!(matches!(r, Err(AuthError::Malformed(_))), "{r:?}");
    });
}
