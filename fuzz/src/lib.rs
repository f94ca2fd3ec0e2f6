//! Helpers shared by the fuzz targets in `fuzz_targets/`: the client-frame decoding oracle, the
//! protobuf link oracle, and throwaway config project directories.
//!
//! Every helper panics only when an invariant of the code under test is broken (that is what
//! libFuzzer reports as a crash); malformed input must come back as an error.

use std::fmt::Debug;
use std::path::Path;

use bytes::BytesMut;
use kennel_proto::client::{ClientCodec, Frame};
use kennel_proto::frame::ProtoCodec;
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

/// What decoding a client byte stream produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Frames decoded, in order.
    pub frames: Vec<Frame>,
    /// The error that stopped decoding, as text (error types are not `PartialEq`).
    pub error: Option<String>,
}

/// Feeds `chunks` one after the other to a fresh [`ClientCodec`] with `max_len`, decoding
/// every frame that becomes complete, until the first error.
pub fn decode_client(max_len: usize, chunks: &[&[u8]]) -> Decoded {
    let mut codec = ClientCodec::new(max_len);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    return Decoded {
                        frames,
                        error: Some(e.to_string()),
                    };
                }
            }
            // A declared length is not an allocation: whatever a frame header claims, the
            // codec holds at most a small constant more than the bytes that really arrived.
            assert!(
                buf.capacity() <= 2 * buf.len() + 256 * 1024,
                "reserved {} bytes for {} buffered (max_len {max_len})",
                buf.capacity(),
                buf.len()
            );
        }
    }
    Decoded {
        frames,
        error: None,
    }
}

/// Re-encodes client frames with the codec's encoder.
pub fn encode_client(frames: &[Frame]) -> BytesMut {
    let mut codec = ClientCodec::default();
    let mut out = BytesMut::new();
    for f in frames {
        codec
            .encode(f.clone(), &mut out)
            .expect("encoding never fails");
    }
    out
}

/// Decodes `data` as a stream of length-delimited `M` messages with a `max_frame` limit, as an
/// internal link does, and checks every decoded message re-encodes canonically:
/// `encode(decode(encode(m))) == encode(m)`.
pub fn proto_link<M>(data: &[u8], max_frame: usize) -> usize
where
    M: Message + Default + Debug,
{
    let mut codec = ProtoCodec::<M, M>::new(max_frame);
    let mut buf = BytesMut::from(data);
    let mut n = 0;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(m)) => {
                n += 1;
                let once = m.encode_to_vec();
                let back = M::decode(&once[..]).expect("a re-encoded message decodes");
                assert_eq!(
                    back.encode_to_vec(),
                    once,
                    "re-encoding is not stable: {m:?}"
                );
                // Through the frame codec too (a generous limit: re-encoding may differ in size).
                let mut big = ProtoCodec::<M, M>::new(once.len() + 16);
                let mut framed = BytesMut::new();
                big.encode(m, &mut framed).expect("encoding never fails");
                let again = big.decode(&mut framed);
                if once.is_empty() {
                    // A message with every field at its default encodes to zero bytes, which
                    // the link codec refuses as a zero-length frame.
                    assert!(again.is_err());
                } else {
                    let again = again.expect("decodes").expect("one whole frame");
                    assert_eq!(again.encode_to_vec(), once);
                }
            }
            Ok(None) | Err(_) => return n,
        }
    }
}

/// Writes `files` (`("master.json", text)`, ...) into a fresh `<tmp>/config/sys/` and returns
/// the project dir. Uses `/dev/shm` when present to keep the fuzzer off the disk.
pub fn project_dir(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("kennel-fuzz")
            .tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let sys = dir.path().join("config/sys");
    std::fs::create_dir_all(&sys).expect("config/sys");
    for (name, text) in files {
        std::fs::write(sys.join(name), text).expect("write config file");
    }
    dir
}
