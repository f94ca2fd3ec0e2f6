//! The client frame codec (PROTOCOL.md): `[u32 len][u8 type][len-1 bytes body]`, big-endian,
//! `len` counting the type byte. Used by frontends (server side) and by clients and tests.
//!
//! The decoder checks `len` against the configured maximum **before** buffering the body, so a
//! frame declaring 4 GiB is rejected on its first 4 bytes, and a frame declaring up to the
//! maximum reserves at most [`MAX_RESERVE_AHEAD`] before its bytes arrive. Malformed input is
//! an error, never a panic: zero length, oversize, unknown type, or a message frame too short
//! to hold a `cmd`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Frame type: a message (`[u16 cmd][payload]`).
pub const TYPE_MESSAGE: u8 = 1;
/// Frame type: handshake (JSON).
pub const TYPE_HANDSHAKE: u8 = 2;
/// Frame type: heartbeat (empty body).
pub const TYPE_HEARTBEAT: u8 = 3;
/// Default maximum frame length (`maxLen`): 10 MiB.
pub const DEFAULT_MAX_LEN: usize = 10 * 1024 * 1024;
/// Largest body a connection may send before its handshake.
pub const PRE_HANDSHAKE_MAX_BODY: usize = 50;
/// Most the decoder reserves ahead for a frame that has not fully arrived: a declared length
/// is a claim, not an allocation (the buffer still grows as the bytes really come).
pub const MAX_RESERVE_AHEAD: usize = 64 * 1024;

/// One client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Handshake: JSON text.
    Handshake(Bytes),
    /// A message: route index and encoded payload.
    Message {
        /// Index of the route in the route list.
        cmd: u16,
        /// Encoded message (JSON text by default).
        payload: Bytes,
    },
    /// Heartbeat (request or reply).
    Heartbeat,
}

/// Why a client byte stream was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame declared length 0.
    #[error("frame length 0")]
    ZeroLength,
    /// A frame declared more than the maximum.
    #[error("frame length {len} exceeds the maximum {max}")]
    TooLong {
        /// Declared length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Unknown frame type byte.
    #[error("unknown frame type {0}")]
    BadType(u8),
    /// A message frame without room for its 2-byte cmd.
    #[error("message frame too short for a cmd")]
    ShortMessage,
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// tokio-util codec for client frames. `max_len` bounds the declared `len` (type byte + body).
#[derive(Debug, Clone)]
pub struct ClientCodec {
    max_len: usize,
}

impl ClientCodec {
    /// A codec accepting frames with `len <= max_len`.
    pub fn new(max_len: usize) -> Self {
        ClientCodec { max_len }
    }

    /// Changes the maximum (e.g. from the pre-handshake limit to `maxLen`).
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// The current maximum.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

impl Default for ClientCodec {
    fn default() -> Self {
        ClientCodec::new(DEFAULT_MAX_LEN)
    }
}

impl Decoder for ClientCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 {
            return Err(FrameError::ZeroLength);
        }
        if len > self.max_len {
            return Err(FrameError::TooLong {
                len,
                max: self.max_len,
            });
        }
        if src.len() < 4 + len {
            src.reserve((4 + len - src.len()).min(MAX_RESERVE_AHEAD));
            return Ok(None);
        }
        src.advance(4);
        let mut body = src.split_to(len).freeze();
        let kind = body.get_u8();
        match kind {
            TYPE_MESSAGE => {
                if body.len() < 2 {
                    return Err(FrameError::ShortMessage);
                }
                let cmd = body.get_u16();
                Ok(Some(Frame::Message { cmd, payload: body }))
            }
            TYPE_HANDSHAKE => Ok(Some(Frame::Handshake(body))),
            TYPE_HEARTBEAT => Ok(Some(Frame::Heartbeat)),
            other => Err(FrameError::BadType(other)),
        }
    }
}

impl Encoder<Frame> for ClientCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::Handshake(body) => put_frame(dst, TYPE_HANDSHAKE, &body),
            Frame::Heartbeat => put_frame(dst, TYPE_HEARTBEAT, &[]),
            Frame::Message { cmd, payload } => put_message(dst, cmd, &payload),
        }
        Ok(())
    }
}

/// Appends one frame of `kind` with `body` to `dst`.
pub fn put_frame(dst: &mut BytesMut, kind: u8, body: &[u8]) {
    dst.reserve(5 + body.len());
    dst.put_u32(1 + body.len() as u32);
    dst.put_u8(kind);
    dst.put_slice(body);
}

/// Appends one message frame `(cmd, payload)` to `dst`.
pub fn put_message(dst: &mut BytesMut, cmd: u16, payload: &[u8]) {
    dst.reserve(7 + payload.len());
    dst.put_u32(3 + payload.len() as u32);
    dst.put_u8(TYPE_MESSAGE);
    dst.put_u16(cmd);
    dst.put_slice(payload);
}

/// One encoded message frame, ready to be written to any number of connections.
pub fn message_frame(cmd: u16, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(7 + payload.len());
    put_message(&mut b, cmd, payload);
    b.freeze()
}

/// One encoded heartbeat frame.
pub fn heartbeat_frame() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 1, TYPE_HEARTBEAT])
}

/// Lowercase hex md5 of the route list's compact JSON text, as the handshake announces it.
pub fn route_md5(routes: &[String]) -> String {
    use md5::Digest;
    let json = serde_json::to_string(routes).expect("a list of strings serializes");
    hex::encode(md5::Md5::digest(json.as_bytes()))
}

/// The client's handshake request body.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct HandshakeRequest {
    /// md5 of the route list the client cached, or empty.
    #[serde(default)]
    pub md5: String,
}

/// The server's handshake reply body (keys in mydog's order: md5, route, heartbeat).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct HandshakeReply {
    /// md5 of the server's route list.
    pub md5: String,
    /// The route list, present when the client's md5 differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Vec<String>>,
    /// Heartbeat interval in seconds, 0 = off.
    pub heartbeat: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut ClientCodec, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn decodes_each_type() {
        let mut b = BytesMut::new();
        put_frame(&mut b, TYPE_HANDSHAKE, br#"{"md5":""}"#);
        put_message(&mut b, 7, b"{}");
        put_frame(&mut b, TYPE_HEARTBEAT, &[]);
        let frames = decode_all(&mut ClientCodec::default(), &b).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Handshake(Bytes::from_static(br#"{"md5":""}"#)),
                Frame::Message {
                    cmd: 7,
                    payload: Bytes::from_static(b"{}")
                },
                Frame::Heartbeat,
            ]
        );
    }

    #[test]
    fn wire_bytes_match_protocol() {
        assert_eq!(
            &message_frame(0x0102, b"ab")[..],
            &[0, 0, 0, 5, 1, 1, 2, b'a', b'b']
        );
        assert_eq!(&heartbeat_frame()[..], &[0, 0, 0, 1, 3]);
    }

    #[test]
    fn rejects_zero_length() {
        let err = decode_all(&mut ClientCodec::default(), &[0, 0, 0, 0, 1]).unwrap_err();
        assert!(matches!(err, FrameError::ZeroLength));
    }

    #[test]
    fn rejects_oversize_before_body_arrives() {
        // 4 GiB - 1 declared, only the header present: rejected at once, nothing reserved.
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let err = ClientCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLong { .. }));
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn rejects_bad_type_and_short_message() {
        let mut b = BytesMut::new();
        put_frame(&mut b, 9, b"x");
        assert!(matches!(
            decode_all(&mut ClientCodec::default(), &b).unwrap_err(),
            FrameError::BadType(9)
        ));
        let mut b = BytesMut::new();
        put_frame(&mut b, TYPE_MESSAGE, b"x");
        assert!(matches!(
            decode_all(&mut ClientCodec::default(), &b).unwrap_err(),
            FrameError::ShortMessage
        ));
    }

    #[test]
    fn waits_for_split_frames() {
        let whole = message_frame(3, b"hello");
        let mut codec = ClientCodec::default();
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            buf.put_u8(*byte);
            let got = codec.decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == whole.len() - 1);
        }
    }

    #[test]
    fn route_md5_is_md5_of_compact_json() {
        // md5('["a.b.c","onChat"]')
        let routes = vec!["a.b.c".to_string(), "onChat".to_string()];
        use md5::Digest;
        let expect = hex::encode(md5::Md5::digest(br#"["a.b.c","onChat"]"#));
        assert_eq!(route_md5(&routes), expect);
        assert_eq!(route_md5(&routes).len(), 32);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), max in 1usize..300) {
            let mut codec = ClientCodec::new(max);
            let _ = decode_all(&mut codec, &bytes);
        }

        #[test]
        fn message_round_trip(cmd in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut codec = ClientCodec::default();
            let mut buf = BytesMut::new();
            codec.encode(Frame::Message { cmd, payload: Bytes::from(payload.clone()) }, &mut buf).unwrap();
            let got = codec.decode(&mut buf).unwrap();
            prop_assert_eq!(got, Some(Frame::Message { cmd, payload: Bytes::from(payload) }));
            prop_assert!(buf.is_empty());
        }
    }
}
