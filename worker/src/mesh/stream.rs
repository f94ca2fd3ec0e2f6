//! The bytes of a peer link: its reader ([`LinkReader`]: frames decoded from reads of an
//! adaptive size) and its writer task ([`write_loop`]: every frame queued so far written at
//! once). On an encrypted link (`encryptLinks`) the writer seals each batch into Noise records
//! before its one write, and the reader opens the records it has into the buffer frames are
//! decoded from ([`kennel_proto::noise`]); a record that fails to decrypt is a read error, which
//! closes the link. A plain link pays nothing for it: no copy, no branch per frame.

use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use kennel_proto::frame::{LinkError, ProtoCodec};
use kennel_proto::msg::{PeerMsg, Ping, peer_msg};
use kennel_proto::noise::{Opener, Sealer, Transport};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::Decoder;
use tracing::warn;

use crate::mesh::link::{Link, encode_frame, msg};
use crate::net::AdaptiveRead;

/// A write buffer grown past this is not kept for the next batch.
const KEEP_BUFFER: usize = 1 << 20;

/// The reading side of a link: frames decoded from a buffer filled by reads of an adaptive
/// size (an idle link holds a few dozen bytes, a busy one reads up to 64 KiB at once); on an
/// encrypted link, by the records opened from what was read.
pub(crate) struct LinkReader {
    io: OwnedReadHalf,
    buf: BytesMut,
    read: AdaptiveRead,
    codec: ProtoCodec<PeerMsg, PeerMsg>,
    /// Encrypted links: the records' keys and the ciphertext read, not yet opened.
    opener: Option<Box<Open>>,
}

/// The incoming half of an encrypted link.
struct Open {
    opener: Opener,
    raw: BytesMut,
}

/// The outgoing half of an encrypted link: the keys, and the buffer a batch is sealed into.
pub(crate) struct Seal {
    sealer: Sealer,
    out: BytesMut,
}

impl LinkReader {
    /// The reader of a link's read half, with what authentication read ahead (`read_ahead`),
    /// frames up to `max_len`; encrypted when `transport` is set (then `read_ahead` is
    /// ciphertext). Also returns the writer's sealing half on an encrypted link.
    pub(crate) fn new(
        io: OwnedReadHalf,
        read_ahead: &[u8],
        max_len: usize,
        transport: Option<Transport>,
    ) -> (LinkReader, Option<Box<Seal>>) {
        let (buf, opener, seal) = match transport.map(Transport::split) {
            None => (BytesMut::from(read_ahead), None, None),
            Some((sealer, opener)) => {
                let open = Box::new(Open {
                    opener,
                    raw: BytesMut::from(read_ahead),
                });
                let seal = Box::new(Seal {
                    sealer,
                    out: BytesMut::new(),
                });
                (BytesMut::new(), Some(open), Some(seal))
            }
        };
        let reader = LinkReader {
            io,
            buf,
            read: AdaptiveRead::new(),
            codec: ProtoCodec::new(max_len),
            opener,
        };
        (reader, seal)
    }

    /// Whether the link is encrypted.
    pub(crate) fn is_encrypted(&self) -> bool {
        self.opener.is_some()
    }

    /// The next message; `None` when the peer closed the link between messages. Cancel-safe:
    /// bytes read stay in the buffer. Before it waits for the socket it calls `before_wait`.
    pub(crate) async fn next(
        &mut self,
        before_wait: impl Fn(),
    ) -> Option<Result<PeerMsg, LinkError>> {
        std::future::poll_fn(|cx| {
            let r = self.poll_next(cx);
            if r.is_pending() {
                before_wait();
            }
            r
        })
        .await
    }

    fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<PeerMsg, LinkError>>> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(m)) => return Poll::Ready(Some(Ok(m))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            // Encrypted: the next bytes come from the records read so far, else from a
            // read of more ciphertext.
            let (into, between_records) = match &mut self.opener {
                None => (&mut self.buf, true),
                Some(open) => {
                    let before = self.buf.len();
                    if let Err(e) = open.opener.open(&mut open.raw, &mut self.buf) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    if self.buf.len() > before {
                        continue;
                    }
                    let between = open.raw.is_empty();
                    (&mut open.raw, between)
                }
            };
            match ready!(self.read.poll_read(&mut self.io, cx, into)) {
                Ok(0) if self.buf.is_empty() && between_records => return Poll::Ready(None),
                Ok(0) => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "link closed in the middle of a message",
                    );
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}

/// Writes a link's outbox to its socket: each wake-up takes every frame queued so far and
/// writes them at once (sealed into records first on an encrypted link); with an `interval`,
/// frames are held up to that long to batch more. Sends a ping when the link has been idle
/// for `heartbeat`.
pub(crate) async fn write_loop(
    mut io: OwnedWriteHalf,
    link: Arc<Link>,
    mut seal: Option<Box<Seal>>,
    interval: Duration,
    heartbeat: Duration,
) {
    let out = &link.out;
    let closed = &link.closed;
    // One ticker for the heartbeat (not a timer per message): a tick after a period with
    // nothing sent sends a ping.
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(if heartbeat.is_zero() {
        Duration::from_secs(3600)
    } else {
        heartbeat
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    let mut sent = false;
    // The buffer being written; swapped with the outbox's so neither is reallocated.
    let mut batch = BytesMut::new();
    // Bytes queued before the writer started (from authentication) go out first.
    out.ready.notify_one();
    loop {
        tokio::select! {
            biased;
            _ = closed.cancelled() => break,
            _ = out.ready.notified() => sent = true,
            _ = tick.tick(), if !heartbeat.is_zero() => {
                if std::mem::take(&mut sent) {
                    continue;
                }
                seq += 1;
                let ping = msg(peer_msg::Msg::Ping(Ping { seq }));
                encode_frame(&ping, &mut out.state.lock().unwrap().buf);
            }
        }
        if !interval.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = closed.cancelled() => {}
            }
        }
        {
            let mut st = out.state.lock().unwrap();
            if st.buf.is_empty() {
                continue;
            }
            std::mem::swap(&mut st.buf, &mut batch);
            st.full_since = None;
        }
        out.room.notify_waiters();
        // Raced with the close: a link declared dead while its peer reads nothing ends now,
        // failing whoever waits on it, instead of when the peer reads again.
        let bytes = match &mut seal {
            None => &batch,
            Some(seal) => {
                seal.out.clear();
                if let Err(e) = seal.sealer.seal(&batch, &mut seal.out) {
                    warn!(peer = %link.peer(), cause = %e, "cannot encrypt on peer link: closing it");
                    break;
                }
                &seal.out
            }
        };
        let written = tokio::select! {
            r = io.write_all(bytes) => r.is_ok(),
            _ = closed.cancelled() => false,
        };
        if !written {
            break;
        }
        batch.clear();
        if batch.capacity() > KEEP_BUFFER {
            batch = BytesMut::new();
        }
        if let Some(seal) = &mut seal
            && seal.out.capacity() > KEEP_BUFFER
        {
            seal.out = BytesMut::new();
        }
    }
    out.close();
    closed.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    /// A link reader on one end of a loopback TCP pair, and the other end's writer.
    async fn reader() -> (LinkReader, TcpStream) {
        let (a, b) = crate::net::tcp_pair().await;
        let (rd, _wr) = b.into_split();
        let (r, _) = LinkReader::new(rd, &[], 1 << 20, None);
        (r, a)
    }

    fn ping(seq: u64) -> PeerMsg {
        msg(peer_msg::Msg::Ping(Ping { seq }))
    }

    #[tokio::test]
    async fn reads_every_message_of_a_burst_in_order_then_the_end() {
        let (mut r, mut w) = reader().await;
        let mut bytes = BytesMut::new();
        for seq in 0..20_000 {
            encode_frame(&ping(seq), &mut bytes);
        }
        // Written in uneven pieces, so frames straddle reads.
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(777) {
                w.write_all(chunk).await.unwrap();
            }
        });
        for seq in 0..20_000 {
            let m = tokio::time::timeout(Duration::from_secs(10), r.next(|| {}))
                .await
                .unwrap();
            assert_eq!(m.unwrap().unwrap(), ping(seq));
        }
        writer.await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), r.next(|| {})).await;
        assert!(
            end.unwrap().is_none(),
            "a close between messages ends the link"
        );
    }

    #[tokio::test]
    async fn a_close_in_the_middle_of_a_message_is_an_error() {
        let (mut r, mut w) = reader().await;
        let mut bytes = BytesMut::new();
        encode_frame(&ping(1), &mut bytes);
        w.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        drop(w);
        let m = tokio::time::timeout(Duration::from_secs(10), r.next(|| {})).await;
        assert!(matches!(m.unwrap(), Some(Err(LinkError::Io(_)))));
    }

    #[tokio::test]
    async fn an_oversized_frame_is_an_error() {
        let (mut r, mut w) = reader().await;
        w.write_all(&(2u32 << 20).to_be_bytes()).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), r.next(|| {})).await;
        assert!(matches!(m.unwrap(), Some(Err(_))));
    }
}
