//! Fuzz target: what a frontend does with a connection's first bytes: the pre-handshake frame
//! limit (one frame, at most 50 bytes of body), then the handshake JSON
//! (`HandshakeRequest`); and the client side's parse of a handshake reply.
//!
//! Oracles: no panic; a handshake body that parses re-serializes to JSON that parses to the
//! same md5; a pre-handshake frame is never longer than the limit.
#![no_main]

use bytes::BytesMut;
use kennel_proto::client::{
    ClientCodec, Frame, HandshakeReply, HandshakeRequest, PRE_HANDSHAKE_MAX_BODY,
};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The frame layer with the pre-handshake limit.
    let mut codec = ClientCodec::new(1 + PRE_HANDSHAKE_MAX_BODY);
    let mut buf = BytesMut::from(data);
    if let Ok(Some(Frame::Handshake(body))) = codec.decode(&mut buf) {
        assert!(body.len() <= PRE_HANDSHAKE_MAX_BODY);
        check_request(&body);
    }
    // The raw bytes as a handshake body (for bodies the frame layer would have allowed).
    check_request(data);
    if let Ok(reply) = serde_json::from_slice::<HandshakeReply>(data) {
        let text = serde_json::to_vec(&reply).expect("a reply serializes");
        let back: HandshakeReply = serde_json::from_slice(&text).expect("and parses back");
        assert_eq!(back.md5, reply.md5);
        assert_eq!(back.route, reply.route);
        assert_eq!(back.heartbeat, reply.heartbeat);
    }
});

fn check_request(body: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<HandshakeRequest>(body) {
        let text = serde_json::to_vec(&req).expect("a request serializes");
        let back: HandshakeRequest = serde_json::from_slice(&text).expect("and parses back");
        assert_eq!(back.md5, req.md5);
    }
}
