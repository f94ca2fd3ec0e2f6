//! Fuzz target: the CLI link's decoders through the length-delimited frame codec:
//! `CliRequest` as the master reads it (64 KiB limit, as `master/src/listener.rs`) and
//! `CliResponse` as the CLI reads it.
//!
//! Input: `[direction u8][frames...]`. Oracles: no panic; canonical re-encoding.
#![no_main]

use kennel_fuzz::proto_link;
use kennel_proto::frame::DEFAULT_MAX_FRAME;
use kennel_proto::msg::{CliRequest, CliResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [dir, rest @ ..] = data else {
        return;
    };
    if dir % 2 == 0 {
        proto_link::<CliRequest>(rest, 64 * 1024);
    } else {
        proto_link::<CliResponse>(rest, DEFAULT_MAX_FRAME);
    }
});
