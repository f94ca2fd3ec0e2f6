//! Encrypted internal links (`encryptLinks` in master.json): a Noise handshake right after the
//! HMAC handshake of [`crate::auth`], then every byte of the link in authenticated records.
//!
//! ```text
//! dialer   -> acceptor : [u32 len] Noise message 1   (psk, e)
//! acceptor -> dialer   : [u32 len] Noise message 2   (e, ee)
//! then, both ways      : [u16 len][ChaChaPoly(record) + 16-byte tag] ...
//! ```
//!
//! The pattern is [`PATTERN`] (snow): no static keys and no PKI, both sides proven by the
//! pre-shared key, which HKDF-SHA256 derives from the secret the link already uses, with a label
//! per role ([`psk`]): a master link's key is not a peer link's nor the CLI's. The ephemeral
//! Diffie-Hellman gives forward secrecy (a secret leaked later does not open recorded
//! traffic). The prologue binds the HMAC handshake (role, both ids, both nonces), so the Noise
//! session belongs to the link that just authenticated.
//!
//! Records carry the link's plain byte stream (its length-delimited frames) in pieces of at
//! most [`MAX_PLAIN`] bytes, since a Noise message is at most 65535 bytes. A writer seals a
//! whole batch of frames at once ([`Sealer::seal`]) and writes it once; a reader opens every
//! complete record it has ([`Opener::open`]). Nonces count records in each direction, so a
//! record dropped, replayed, reordered or changed fails to decrypt: the link is closed (the
//! error says so) and dialed again like any dropped link.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hkdf::Hkdf;
use sha2::Sha256;
use snow::{HandshakeState, StatelessTransportState};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::either::Either;

use crate::auth::AuthError;
use crate::msg::Role;

/// The Noise protocol of every encrypted link.
pub const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Largest record (ciphertext and tag): Noise's message limit.
pub const MAX_RECORD: usize = 65535;
/// Authentication tag of a record.
pub const TAG_LEN: usize = 16;
/// Largest plain piece of a record.
pub const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;
/// Bytes of a record's length prefix.
pub const HEADER_LEN: usize = 2;
/// Bytes [`LinkIo`] seals per write call at most (then it writes them before taking more).
const WRITE_CHUNK: usize = 256 * 1024;

/// The pre-shared key of a link of `role` in a cluster whose secret for that role is
/// `secret`: HKDF-SHA256 with a fixed salt and the role's label.
pub fn psk(secret: &[u8], role: Role) -> [u8; 32] {
    let label: &[u8] = match role {
        Role::Server => b"kennel master link",
        Role::Peer => b"kennel peer link",
        Role::Cli => b"kennel cli link",
        Role::Unspecified => b"kennel unspecified link",
    };
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"kennel-noise-psk-v1"), secret)
        .expand(label, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

fn noise_err(what: &str, e: snow::Error) -> AuthError {
    AuthError::Noise(format!("{what}: {e}"))
}

fn builder_state(
    psk: &[u8; 32],
    prologue: &[u8],
    initiator: bool,
) -> Result<HandshakeState, AuthError> {
    let params = PATTERN.parse().map_err(|e| noise_err("pattern", e))?;
    let b = snow::Builder::new(params)
        .psk(0, psk)
        .and_then(|b| b.prologue(prologue))
        .map_err(|e| noise_err("setup", e))?;
    if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
    .map_err(|e| noise_err("setup", e))
}

/// The Noise handshake on the authenticated link (bounded by the caller's authentication
/// timeout): the initiator (the dialer) writes the first message and reads the second.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Framed<S, LengthDelimitedCodec>,
    psk: &[u8; 32],
    prologue: &[u8],
    initiator: bool,
) -> Result<Transport, AuthError> {
    let mut hs = builder_state(psk, prologue, initiator)?;
    let mut buf = vec![0u8; 256];
    for writes in [initiator, !initiator] {
        if writes {
            let n = hs
                .write_message(&[], &mut buf)
                .map_err(|e| noise_err("writing a handshake message", e))?;
            link.send(Bytes::copy_from_slice(&buf[..n])).await?;
        } else {
            let m = link.next().await.ok_or(AuthError::Closed)??;
            hs.read_message(&m, &mut buf)
                .map_err(|e| noise_err("the other side's handshake message does not verify", e))?;
        }
    }
    Transport::new(hs)
}

/// The keys of an encrypted link, both directions: split into a [`Sealer`] for its writer and
/// an [`Opener`] for its reader.
pub struct Transport {
    state: Arc<StatelessTransportState>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport(..)")
    }
}

impl Transport {
    fn new(hs: HandshakeState) -> Result<Transport, AuthError> {
        let state = hs
            .into_stateless_transport_mode()
            .map_err(|e| noise_err("transport", e))?;
        Ok(Transport {
            state: Arc::new(state),
        })
    }

    /// The sealing (outgoing) and opening (incoming) halves.
    pub fn split(self) -> (Sealer, Opener) {
        (
            Sealer {
                state: self.state.clone(),
                nonce: 0,
            },
            Opener {
                state: self.state,
                nonce: 0,
            },
        )
    }
}

/// The outgoing half of an encrypted link.
pub struct Sealer {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Sealer {
    /// Appends `plain` to `out` as records of at most [`MAX_PLAIN`] plain bytes each.
    pub fn seal(&mut self, plain: &[u8], out: &mut BytesMut) -> io::Result<()> {
        let records = plain.len().div_ceil(MAX_PLAIN);
        out.reserve(plain.len() + records * (HEADER_LEN + TAG_LEN));
        for piece in plain.chunks(MAX_PLAIN) {
            let len = piece.len() + TAG_LEN;
            out.put_u16(len as u16);
            let start = out.len();
            out.resize(start + len, 0);
            let written = self
                .state
                .write_message(self.nonce, piece, &mut out[start..])
                .map_err(|e| io::Error::other(format!("sealing record {}: {e}", self.nonce)))?;
            debug_assert_eq!(written, len);
            self.nonce += 1;
        }
        Ok(())
    }
}

/// The incoming half of an encrypted link.
pub struct Opener {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Opener {
    /// Decrypts every complete record at the front of `raw` (consumed) onto `plain`; an
    /// incomplete one stays in `raw`. A record that does not decrypt (tampered with, replayed,
    /// out of order, or not from the peer the link authenticated) is an `InvalidData` error:
    /// the link must be closed.
    pub fn open(&mut self, raw: &mut BytesMut, plain: &mut BytesMut) -> io::Result<()> {
        while raw.len() >= HEADER_LEN {
            let len = usize::from(u16::from_be_bytes([raw[0], raw[1]]));
            if len <= TAG_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "encrypted record {} is malformed ({len} bytes, less than a tag)",
                        self.nonce
                    ),
                ));
            }
            if raw.len() < HEADER_LEN + len {
                // Room for the rest of the record (at most 64 KiB).
                raw.reserve(HEADER_LEN + len - raw.len());
                break;
            }
            let start = plain.len();
            plain.resize(start + len - TAG_LEN, 0);
            let record = &raw[HEADER_LEN..HEADER_LEN + len];
            if let Err(e) = self
                .state
                .read_message(self.nonce, record, &mut plain[start..])
            {
                plain.truncate(start);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "encrypted record {} failed to decrypt ({e}): tampered with, or not from the authenticated peer",
                        self.nonce
                    ),
                ));
            }
            self.nonce += 1;
            raw.advance(HEADER_LEN + len);
        }
        Ok(())
    }
}

/// An encrypted byte stream over `S`: what the master and CLI links run their framed codecs
/// on. The peer mesh seals and opens its batches itself (no extra copy per frame).
pub struct NoiseStream<S> {
    io: S,
    sealer: Sealer,
    opener: Opener,
    /// Ciphertext read, not yet opened.
    raw: BytesMut,
    /// Plaintext opened, not yet read.
    plain: BytesMut,
    /// Ciphertext sealed, not yet written.
    out: BytesMut,
}

impl<S: std::fmt::Debug> std::fmt::Debug for NoiseStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseStream")
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

impl<S> NoiseStream<S> {
    /// Wraps `io`; `read_ahead` is ciphertext already read from it (after the handshake).
    pub fn new(io: S, transport: Transport, read_ahead: BytesMut) -> NoiseStream<S> {
        let (sealer, opener) = transport.split();
        NoiseStream {
            io,
            sealer,
            opener,
            raw: read_ahead,
            plain: BytesMut::new(),
            out: BytesMut::new(),
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: AsyncWrite + Unpin> NoiseStream<S> {
    /// Writes what was sealed.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NoiseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            this.opener.open(&mut this.raw, &mut this.plain)?;
            if !this.plain.is_empty() {
                continue;
            }
            this.raw.reserve(8 * 1024);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.raw
            ))?;
            if n == 0 {
                if this.raw.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "link closed in the middle of an encrypted record",
                )));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoiseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let n = buf.len().min(WRITE_CHUNK);
        this.sealer.seal(&buf[..n], &mut this.out)?;
        // Start writing now; what is left goes out on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// A master or CLI link's byte stream after authentication: plain (`Left`), or Noise records
/// (`Right`).
pub type LinkIo<S> = Either<S, Box<NoiseStream<S>>>;

/// Whether `io` is encrypted.
pub fn is_encrypted<S>(io: &LinkIo<S>) -> bool {
    matches!(io, Either::Right(_))
}

/// The authenticated link `framed` with `codec` for what follows, encrypted when `transport`
/// is set (bytes the handshake read ahead are kept either way).
pub fn framed_link<S, C>(
    framed: Framed<S, LengthDelimitedCodec>,
    transport: Option<Transport>,
    codec: C,
) -> Framed<LinkIo<S>, C> {
    let old = framed.into_parts();
    let (io, read_buf) = match transport {
        None => (Either::Left(old.io), old.read_buf),
        Some(t) => (
            Either::Right(Box::new(NoiseStream::new(old.io, t, old.read_buf))),
            BytesMut::new(),
        ),
    };
    let mut parts = Framed::new(io, codec).into_parts();
    parts.read_buf = read_buf;
    parts.write_buf = old.write_buf;
    Framed::from_parts(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{accept_with, dial_with};
    use crate::frame::{AUTH_MAX_FRAME, length_codec};
    use crate::msg::{Challenge, Cipher};
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    type Auth = Framed<DuplexStream, LengthDelimitedCodec>;

    fn pair() -> (Auth, Auth) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        (
            Framed::new(a, length_codec(AUTH_MAX_FRAME)),
            Framed::new(b, length_codec(AUTH_MAX_FRAME)),
        )
    }

    /// Dials with `want` and accepts with `mine` over one duplex pair.
    async fn handshake(
        want: Cipher,
        mine: Cipher,
    ) -> (
        Result<(String, Option<Transport>), AuthError>,
        Result<Option<Transport>, AuthError>,
        Auth,
        Auth,
    ) {
        let (mut d, mut a) = pair();
        let (rd, ra) = tokio::join!(
            dial_with(&mut d, b"s3cret", Role::Peer, "chat-1", "chat-2", want),
            accept_with(&mut a, "chat-2", mine, |_| Ok(b"s3cret".to_vec()))
        );
        (rd, ra.map(|(_, t)| t), d, a)
    }

    /// Both ends of an encrypted link as streams.
    async fn encrypted() -> (LinkIo<DuplexStream>, LinkIo<DuplexStream>) {
        let (rd, ra, d, a) = handshake(Cipher::Noise, Cipher::Noise).await;
        let (_, td) = rd.unwrap();
        let (td, ta) = (
            td.expect("dialer keys"),
            ra.unwrap().expect("acceptor keys"),
        );
        let d = framed_link(d, Some(td), LengthDelimitedCodec::new())
            .into_parts()
            .io;
        let a = framed_link(a, Some(ta), LengthDelimitedCodec::new())
            .into_parts()
            .io;
        (d, a)
    }

    #[tokio::test]
    async fn an_encrypted_link_carries_large_writes_both_ways_in_bounded_records() {
        let (mut d, mut a) = encrypted().await;
        assert!(is_encrypted(&d) && is_encrypted(&a));
        // 300 KiB: several records, and more than one write chunk.
        let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
        let (w, r) = tokio::join!(
            async {
                d.write_all(&big).await.unwrap();
                d.flush().await.unwrap();
            },
            async {
                let mut got = vec![0u8; big.len()];
                a.read_exact(&mut got).await.unwrap();
                got
            }
        );
        let () = w;
        assert_eq!(r, big);
        a.write_all(b"pong").await.unwrap();
        a.flush().await.unwrap();
        let mut back = [0u8; 4];
        d.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
    }

    #[test]
    fn records_hold_at_most_a_noise_message_and_open_across_any_split() {
        let (mut s, mut o) = transports();
        let plain: Vec<u8> = (0..3 * MAX_PLAIN + 5).map(|i| (i % 7) as u8).collect();
        let mut wire = BytesMut::new();
        s.seal(&plain, &mut wire).unwrap();
        // Walk the records: each at most MAX_RECORD, four of them.
        let (mut at, mut records) = (0, 0);
        while at < wire.len() {
            let len = usize::from(u16::from_be_bytes([wire[at], wire[at + 1]]));
            assert!(len <= MAX_RECORD && len > TAG_LEN);
            at += HEADER_LEN + len;
            records += 1;
        }
        assert_eq!(records, 4);
        // Fed in uneven pieces, the plaintext comes back whole and in order.
        let mut raw = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in wire.chunks(10_007) {
            raw.extend_from_slice(piece);
            o.open(&mut raw, &mut out).unwrap();
        }
        assert!(raw.is_empty());
        assert_eq!(&out[..], &plain[..]);
    }

    /// A sealer and the opener of the other end of one link.
    fn transports() -> (Sealer, Opener) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (rd, ra, _, _) = handshake(Cipher::Noise, Cipher::Noise).await;
            let (sealer, _) = rd.unwrap().1.unwrap().split();
            let (_, opener) = ra.unwrap().unwrap().split();
            (sealer, opener)
        })
    }

    #[test]
    fn a_flipped_bit_a_replay_or_a_short_record_fails_to_open() {
        let (mut s, mut o) = transports();
        let mut wire = BytesMut::new();
        s.seal(b"chat.main.send hello room", &mut wire).unwrap();
        let good = wire.clone();
        // One bit of the ciphertext flipped.
        wire[HEADER_LEN + 3] ^= 0x10;
        let e = o.open(&mut wire, &mut BytesMut::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("failed to decrypt"), "{e}");
        // The genuine record opens once; the same record again (a replay) does not.
        let (mut s, mut o) = transports();
        let mut wire = BytesMut::new();
        s.seal(b"once", &mut wire).unwrap();
        let replay = wire.clone();
        let mut out = BytesMut::new();
        o.open(&mut wire, &mut out).unwrap();
        assert_eq!(&out[..], b"once");
        assert!(o.open(&mut replay.clone(), &mut out).is_err());
        // A record from another link's keys.
        let (_, mut other) = transports();
        assert!(other.open(&mut good.clone(), &mut out).is_err());
        // A length shorter than a tag.
        let mut short = BytesMut::from(&[0u8, 3, 1, 2, 3][..]);
        assert!(o.open(&mut short, &mut out).is_err());
    }

    #[tokio::test]
    async fn a_plain_dialer_and_an_encrypting_acceptor_refuse_each_other_naming_the_setting() {
        for (want, mine) in [
            (Cipher::Plain, Cipher::Noise),
            (Cipher::Noise, Cipher::Plain),
        ] {
            let (rd, ra, _, _) = handshake(want, mine).await;
            match rd {
                Err(AuthError::Refused(r)) => assert!(r.contains("encryptLinks"), "{r}"),
                other => panic!("{want:?} dialing {mine:?}: {other:?}"),
            }
            assert!(matches!(ra, Err(AuthError::Refused(_))), "{ra:?}");
        }
        // A dialer that follows the acceptor gets what the acceptor uses.
        for mine in [Cipher::Plain, Cipher::Noise] {
            let (rd, ra, _, _) = handshake(Cipher::Any, mine).await;
            assert_eq!(rd.unwrap().1.is_some(), mine == Cipher::Noise);
            assert_eq!(ra.unwrap().is_some(), mine == Cipher::Noise);
        }
    }

    #[tokio::test]
    async fn a_man_in_the_middle_cannot_turn_encryption_off() {
        // Between a following dialer (the CLI) and an encrypting acceptor, the Challenge is
        // rewritten to say "plain": the dialer's MAC check fails.
        let (mut d, mut md) = pair();
        let (mut ma, mut a) = pair();
        let mitm = async {
            let hello = md.next().await.unwrap().unwrap();
            ma.send(hello.freeze()).await.unwrap();
            let ch = ma.next().await.unwrap().unwrap();
            let mut ch = Challenge::decode(ch.freeze()).unwrap();
            ch.cipher = Cipher::Plain as i32;
            md.send(Bytes::from(ch.encode_to_vec())).await.unwrap();
            // Keep both ends open until the dialer has decided.
            (md, ma)
        };
        let acceptor = tokio::spawn(async move {
            accept_with(&mut a, "master", Cipher::Noise, |_| Ok(b"k".to_vec())).await
        });
        let dial = dial_with(&mut d, b"k", Role::Cli, "cli", "", Cipher::Any);
        let dial = tokio::time::timeout(std::time::Duration::from_secs(10), dial);
        let (rd, _ends) = tokio::join!(dial, mitm);
        let rd = rd.expect("the dialer decides at once: the MAC binds the cipher");
        assert!(matches!(rd, Err(AuthError::BadMac)), "{rd:?}");
        drop(d);
        drop(_ends);
        assert!(acceptor.await.unwrap().is_err());
    }

    #[test]
    fn each_role_has_its_own_key() {
        let keys = [Role::Server, Role::Peer, Role::Cli].map(|r| psk(b"same secret", r));
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
        assert_ne!(keys[0], keys[2]);
        assert_ne!(psk(b"other secret", Role::Peer), keys[1]);
    }
}
