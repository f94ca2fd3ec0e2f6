//! The physical limit: a minimal tokio echo server speaking the same framing (PROTOCOL.md). It
//! answers the handshake with the chat route list, echoes every message frame with its cmd and
//! answers heartbeats; nothing else. The bench runs it as a subprocess of its own binary
//! (`bench raw-echo <port>`, or `bench raw-echo <port> 1` on one thread) so its CPU time is
//! measured apart from the load generator's.

use bytes::BytesMut;
use kennel_proto::client::{
    ClientCodec, Frame, HandshakeReply, TYPE_HANDSHAKE, put_frame, put_message, route_md5,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;

use crate::cluster::ROUTES;

/// Serves on `127.0.0.1:port` until killed; prints `raw-echo listening on <addr>` when ready.
/// `single_thread`: a current-thread runtime (the epoll floor of one core, the way kennel's
/// servers run by default); otherwise tokio's multi-threaded default.
pub fn main(port: u16, single_thread: bool) -> anyhow::Result<()> {
    let rt = if single_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Runtime::new()?
    };
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        println!("raw-echo listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream));
        }
    })
}

/// The handshake reply the raw servers send: the chat route list and its md5, no heartbeat.
pub(crate) fn handshake_reply() -> Vec<u8> {
    let routes: Vec<String> = ROUTES.iter().map(|s| s.to_string()).collect();
    serde_json::to_vec(&HandshakeReply {
        md5: route_md5(&routes),
        route: Some(routes),
        heartbeat: 0,
    })
    .expect("handshake reply serializes")
}

/// Answers every whole frame in `inbuf` into `out` (echo, handshake reply, heartbeat); `Err` on
/// a frame that does not decode.
pub(crate) fn answer(
    codec: &mut ClientCodec,
    inbuf: &mut BytesMut,
    out: &mut BytesMut,
    reply: &[u8],
) -> Result<(), ()> {
    loop {
        match codec.decode(inbuf) {
            Ok(Some(Frame::Message { cmd, payload })) => put_message(out, cmd, &payload),
            Ok(Some(Frame::Handshake(_))) => put_frame(out, TYPE_HANDSHAKE, reply),
            Ok(Some(Frame::Heartbeat)) => put_frame(out, kennel_proto::client::TYPE_HEARTBEAT, &[]),
            Ok(None) => return Ok(()),
            Err(_) => return Err(()),
        }
    }
}

async fn serve(mut stream: TcpStream) {
    let reply = handshake_reply();
    let mut codec = ClientCodec::default();
    let mut inbuf = BytesMut::with_capacity(8192);
    let mut out = BytesMut::with_capacity(8192);
    loop {
        match stream.read_buf(&mut inbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if answer(&mut codec, &mut inbuf, &mut out, &reply).is_err() {
            return;
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}
