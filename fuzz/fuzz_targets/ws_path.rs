//! Fuzz target: the WebSocket path of a frontend: bytes -> tungstenite server handshake and
//! frame parser (with the connector's message/frame limits) -> the binary messages' bytes
//! -> the client frame decoder, as `worker/src/connector.rs` `WsRead` does.
//!
//! Input: `[mode u8][bytes...]`. Mode even: the bytes follow a valid HTTP upgrade request (so
//! the fuzzer works on WebSocket frames); mode odd: the bytes are the whole stream, HTTP
//! request included. Oracle: no panic, no hang, bounded memory.
#![no_main]

use std::io::{self, Cursor, Read, Write};

use bytes::BytesMut;
use kennel_proto::client::{ClientCodec, PRE_HANDSHAKE_MAX_BODY};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// The connector's `maxLen` for this target: small, so the limits are reachable.
const MAX_LEN: usize = 4096;

/// A socket whose reads come from the input and whose writes are discarded.
struct Io(Cursor<Vec<u8>>);

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let mut stream = Vec::new();
    if mode % 2 == 0 {
        stream.extend_from_slice(UPGRADE);
    }
    stream.extend_from_slice(rest);
    // The connector's settings (worker/src/connector.rs).
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_LEN + 4))
        .max_frame_size(Some(MAX_LEN + 4));
    let Ok(mut ws) = tungstenite::accept_with_config(Io(Cursor::new(stream)), Some(cfg)) else {
        return;
    };
    let mut codec = ClientCodec::new(1 + PRE_HANDSHAKE_MAX_BODY);
    let mut buf = BytesMut::new();
    let mut first = true;
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => {
                assert!(
                    b.len() <= MAX_LEN + 4,
                    "message over the limit: {}",
                    b.len()
                );
                buf.extend_from_slice(&b);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(_)) => {
                            if first {
                                codec.set_max_len(MAX_LEN);
                                first = false;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
            Ok(Message::Text(_)) => return, // the connector closes on text messages
            Ok(Message::Close(_)) => return,
            Ok(_) => {}
            Err(_) => return,
        }
    }
});
