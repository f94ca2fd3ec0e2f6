//! The client edge's pluggable codecs, both set per app and used by frontends only.
//!
//! - [`ProtocolCodec`]: how frames are cut from a client's byte stream and written to it.
//!   The default, [`MydogProtocol`], is PROTOCOL.md (mydog's `len | type | body`), so mydog
//!   clients work unchanged.
//! - [`MessageCodec`]: how a message body is encoded on the wire. Inside the cluster messages
//!   are JSON (handlers, remotes, pushes and filters see JSON); a codec translates between the
//!   wire form and JSON at the frontend, once per incoming message and once per outgoing push
//!   (not per recipient). The default, [`Json`], passes bodies through untouched.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kennel_proto::client::{self, ClientCodec, Frame};
use tokio_util::codec::Decoder;

/// Translates message bodies between the wire and the cluster's JSON.
pub trait MessageCodec: Send + Sync + 'static {
    /// A client's message body (of route `cmd`) to JSON. An error drops the message (logged).
    fn decode(&self, cmd: u16, wire: Bytes) -> Result<Bytes, String>;
    /// A JSON reply or push body (of route `cmd`) to its wire form.
    fn encode(&self, cmd: u16, json: Bytes) -> Result<Bytes, String>;
}

/// The default message codec: JSON on the wire, bodies pass through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl MessageCodec for Json {
    fn decode(&self, _cmd: u16, wire: Bytes) -> Result<Bytes, String> {
        Ok(wire)
    }

    fn encode(&self, _cmd: u16, json: Bytes) -> Result<Bytes, String> {
        Ok(json)
    }
}

/// A frame to write to a client.
#[derive(Debug, Clone, Copy)]
pub enum OutFrame<'a> {
    /// The handshake reply (JSON body).
    Handshake(&'a [u8]),
    /// A heartbeat answer.
    Heartbeat,
    /// A reply or push.
    Message {
        /// Route index.
        cmd: u16,
        /// Encoded body.
        body: &'a [u8],
    },
}

/// Cuts frames from a client's byte stream and encodes frames to it.
pub trait ProtocolCodec: Send + Sync + 'static {
    /// Decodes one frame from the front of `buf` (`None`: need more bytes). Frames longer than
    /// `max_len` must be refused before they are buffered. An error closes the connection.
    fn decode(&self, buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, String>;
    /// Appends one encoded frame to `out`.
    fn encode(&self, frame: OutFrame<'_>, out: &mut BytesMut);
}

/// PROTOCOL.md framing (mydog's), the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct MydogProtocol;

impl ProtocolCodec for MydogProtocol {
    fn decode(&self, buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, String> {
        ClientCodec::new(max_len)
            .decode(buf)
            .map_err(|e| e.to_string())
    }

    fn encode(&self, frame: OutFrame<'_>, out: &mut BytesMut) {
        match frame {
            OutFrame::Handshake(body) => client::put_frame(out, client::TYPE_HANDSHAKE, body),
            OutFrame::Heartbeat => client::put_frame(out, client::TYPE_HEARTBEAT, &[]),
            OutFrame::Message { cmd, body } => client::put_message(out, cmd, body),
        }
    }
}

/// Both codecs of an app.
#[derive(Clone)]
pub(crate) struct Codecs {
    pub(crate) message: Arc<dyn MessageCodec>,
    pub(crate) protocol: Arc<dyn ProtocolCodec>,
}

impl Default for Codecs {
    fn default() -> Self {
        Codecs {
            message: Arc::new(Json),
            protocol: Arc::new(MydogProtocol),
        }
    }
}

impl Codecs {
    /// One encoded frame.
    pub(crate) fn frame(&self, f: OutFrame<'_>) -> Bytes {
        // Room for PROTOCOL.md's header (4 + 1 + 2 bytes) and the body: one allocation.
        let body = match f {
            OutFrame::Handshake(b) | OutFrame::Message { body: b, .. } => b.len(),
            OutFrame::Heartbeat => 0,
        };
        let mut b = BytesMut::with_capacity(8 + body);
        self.protocol.encode(f, &mut b);
        b.freeze()
    }

    /// A reply or push frame from a JSON body.
    pub(crate) fn message(&self, cmd: u16, json: Bytes) -> Result<Bytes, String> {
        let body = self.message.encode(cmd, json)?;
        Ok(self.frame(OutFrame::Message { cmd, body: &body }))
    }
}

/// A tokio-util decoder over a [`ProtocolCodec`], for framed reads.
pub(crate) struct FrameDecoder {
    pub(crate) protocol: Arc<dyn ProtocolCodec>,
    pub(crate) max_len: usize,
}

/// Why a client's bytes could not be read as frames.
#[derive(Debug)]
pub(crate) struct DecodeError(pub(crate) String);

impl From<std::io::Error> for DecodeError {
    fn from(e: std::io::Error) -> Self {
        DecodeError(e.to_string())
    }
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        self.protocol.decode(src, self.max_len).map_err(DecodeError)
    }
}
