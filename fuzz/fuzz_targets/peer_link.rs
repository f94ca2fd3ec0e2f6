//! Fuzz target: the peer (server-to-server RPC) link's decoder, `PeerMsg` through the
//! length-delimited frame codec, plus the JSON of a forwarded session's settings.
//!
//! Input: `[limit u8][frames...]`: the limit picks a small maximum (to hit the oversize path)
//! or the default. Oracles: no panic; canonical re-encoding.
#![no_main]

use kennel_fuzz::proto_link;
use kennel_proto::frame::DEFAULT_MAX_FRAME;
use kennel_proto::msg::{PeerMsg, peer_msg};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let [limit, rest @ ..] = data else {
        return;
    };
    let max = if limit % 2 == 0 {
        DEFAULT_MAX_FRAME
    } else {
        1 + usize::from(*limit)
    };
    proto_link::<PeerMsg>(rest, max);
    if let Ok(PeerMsg {
        msg: Some(peer_msg::Msg::Client(c)),
    }) = PeerMsg::decode(rest)
    {
        let settings = c.session.unwrap_or_default().settings;
        let _ = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&settings);
    }
});
