//! Fuzz target: the master link's decoders through the length-delimited frame codec
//! (`kennel_proto::frame::ProtoCodec`): `ToMaster` as the master reads it, `FromMaster` as a
//! server reads it, and the nested `ServerInfo.extra_json` as JSON.
//!
//! Input: `[direction u8][frames...]`. Oracles: no panic; decoded messages re-encode
//! canonically (see `kennel_fuzz::proto_link`).
#![no_main]

use kennel_fuzz::proto_link;
use kennel_proto::frame::DEFAULT_MAX_FRAME;
use kennel_proto::msg::{FromMaster, ToMaster, from_master, to_master};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let [dir, rest @ ..] = data else {
        return;
    };
    if dir % 2 == 0 {
        proto_link::<ToMaster>(rest, DEFAULT_MAX_FRAME);
        if let Ok(ToMaster {
            msg: Some(to_master::Msg::Register(r)),
        }) = ToMaster::decode(rest)
        {
            let _ =
                serde_json::from_str::<serde_json::Value>(&r.info.unwrap_or_default().extra_json);
        }
    } else {
        proto_link::<FromMaster>(rest, DEFAULT_MAX_FRAME);
        if let Ok(FromMaster {
            msg: Some(from_master::Msg::List(l)),
        }) = FromMaster::decode(rest)
        {
            for s in l.servers {
                let _ = serde_json::from_str::<serde_json::Value>(&s.extra_json);
            }
        }
    }
});
