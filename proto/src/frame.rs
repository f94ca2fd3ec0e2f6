//! Length-delimited protobuf framing for the internal links (master, peer and CLI links):
//! `[u32 big-endian length][protobuf message]`.
//!
//! [`ProtoCodec`] wraps tokio-util's `LengthDelimitedCodec` with an explicit maximum and rejects
//! zero-length frames itself. Before authentication a link uses [`AUTH_MAX_FRAME`], so an
//! unauthenticated dialer cannot make the acceptor reserve more than that.

use std::marker::PhantomData;

use bytes::BytesMut;
use prost::Message;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Largest frame accepted during authentication.
pub const AUTH_MAX_FRAME: usize = 4 * 1024;
/// Default largest frame on an authenticated internal link (`maxLen`): 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Why an internal link's bytes were rejected.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Socket error, or a frame over the maximum (tokio-util reports both as io errors).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A zero-length frame.
    #[error("zero-length frame")]
    ZeroLength,
    /// Bytes that are not the expected protobuf message.
    #[error("malformed message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// A length-delimited codec with the given maximum frame length.
pub fn length_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

/// Codec decoding `In` and encoding `Out` protobuf messages in length-delimited frames.
#[derive(Debug)]
pub struct ProtoCodec<In, Out> {
    inner: LengthDelimitedCodec,
    _marker: PhantomData<fn(Out) -> In>,
}

impl<In, Out> ProtoCodec<In, Out> {
    /// A codec accepting frames up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        ProtoCodec {
            inner: length_codec(max_frame),
            _marker: PhantomData,
        }
    }
}

impl<In: Message + Default, Out> Decoder for ProtoCodec<In, Out> {
    type Item = In;
    type Error = LinkError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, LinkError> {
        match self.inner.decode(src)? {
            None => Ok(None),
            Some(b) if b.is_empty() => Err(LinkError::ZeroLength),
            Some(b) => Ok(Some(In::decode(b.freeze())?)),
        }
    }
}

impl<In, Out: Message> Encoder<Out> for ProtoCodec<In, Out> {
    type Error = LinkError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), LinkError> {
        let len = item.encoded_len();
        dst.reserve(4 + len);
        dst.extend_from_slice(&(len as u32).to_be_bytes());
        item.encode(dst)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{PeerMsg, Ping, peer_msg};
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut codec = ProtoCodec::<PeerMsg, PeerMsg>::new(1024);
        let mut buf = BytesMut::new();
        let m = PeerMsg {
            msg: Some(peer_msg::Msg::Ping(Ping { seq: 42 })),
        };
        codec.encode(m.clone(), &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(m));
    }

    #[test]
    fn rejects_zero_and_oversize() {
        let mut codec = ProtoCodec::<PeerMsg, PeerMsg>::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(codec.decode(&mut buf), Err(LinkError::ZeroLength)));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 17][..]);
        assert!(codec.decode(&mut buf).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut codec = ProtoCodec::<PeerMsg, PeerMsg>::new(1024);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
