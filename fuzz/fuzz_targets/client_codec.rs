//! Fuzz target: the client frame decoder (`kennel_proto::client::ClientCodec`), as a frontend
//! runs it on a TCP stream.
//!
//! Input: `[max selector u8][chunk size u8][stream bytes...]`. Oracles: no panic; decoding the
//! stream whole and in chunks gives the same frames and the same error (TCP may split
//! anywhere); a pending frame never makes the buffer reserve its declared length; the decoded
//! frames re-encode to exactly the bytes they came from (heartbeat bodies aside).
#![no_main]

use kennel_fuzz::{decode_client, encode_client};
use kennel_proto::client::{DEFAULT_MAX_LEN, Frame, PRE_HANDSHAKE_MAX_BODY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [sel, chunk, stream @ ..] = data else {
        return;
    };
    // The limits a frontend really uses, and small ones to hit the boundary often.
    let max_len = match sel % 4 {
        0 => 1 + PRE_HANDSHAKE_MAX_BODY,
        1 => DEFAULT_MAX_LEN,
        2 => u32::MAX as usize,
        _ => 1 + usize::from(*sel / 4),
    };
    let whole = decode_client(max_len, &[stream]);
    let chunks: Vec<&[u8]> = stream.chunks(1 + usize::from(*chunk % 64)).collect();
    let split = decode_client(max_len, &chunks);
    assert_eq!(whole, split, "chunking changed the result");

    // Frames re-encode to the bytes they were decoded from.
    if whole.frames.iter().all(|f| !matches!(f, Frame::Heartbeat)) {
        let again = encode_client(&whole.frames);
        assert_eq!(&again[..], &stream[..again.len()]);
    }
});
