//! Mutual HMAC-SHA256 challenge/response that starts every internal link. The secret never
//! crosses the wire; both sides contribute a fresh nonce, so a recorded answer cannot be replayed.
//!
//! ```text
//! dialer   -> acceptor : Hello      {role, id_d, nonce_d, version, target, cipher_d}
//! acceptor -> dialer   : Challenge  {id_a, nonce_a, mac_a = HMAC(k, "acceptor" | transcript),
//!                                    cipher_a}
//! dialer   -> acceptor : Proof      {mac_d = HMAC(k, "dialer" | transcript)}
//! acceptor -> dialer   : AuthResult {ok, error}
//! transcript = role | id_d | id_a | nonce_d | nonce_a [| cipher_a unless plain]
//!              (each length-prefixed)
//! ```
//!
//! With `encryptLinks` ([`dial_with`] / [`accept_with`] and a [`Cipher`] other than plain),
//! `Hello` says what the dialer protects the link with, the acceptor refuses a dialer that does
//! not match it with a reason naming the setting, the `Challenge` carries the acceptor's
//! choice, both MACs bind it (a man in the middle cannot turn it off), and a Noise handshake
//! ([`crate::noise`]) follows `AuthResult`, bound to this transcript. Plain links keep the
//! MACs above byte for byte.
//!
//! MACs are compared in constant time. Both functions run on a `Framed` with the small
//! [`crate::frame::AUTH_MAX_FRAME`] limit; callers bound them with a timeout.
//!
//! Only what follows the acceptor's verified MAC comes from someone who knows the secret: a
//! `Challenge` with `refused` set carries no MAC, so anyone who can answer the port can send
//! one. The dialer reports it as [`AuthError::Refused`], which is never a verdict (retry); a
//! refusal of the proof by an acceptor whose MAC verified is [`AuthError::Rejected`].

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use prost::Message;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::msg::{AuthResult, Challenge, Cipher, Hello, Proof, Role};
use crate::noise::{self, Transport};

/// Nonce length in bytes.
pub const NONCE_LEN: usize = 16;

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Socket error or oversized frame.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The other side closed the link during authentication.
    #[error("link closed during authentication")]
    Closed,
    /// A message that is not the expected step.
    #[error("malformed authentication message: {0}")]
    Malformed(String),
    /// The other side's MAC is wrong: it does not know the secret (or replayed an old answer).
    #[error("authentication failed: wrong secret")]
    BadMac,
    /// Refused before the other side proved it knows the secret: the acceptor's `Challenge`
    /// said `refused` (or named another acceptor than the one dialed), or, on the acceptor
    /// side, `admit` refused the dialer. Anyone who can answer the port can send this, so a
    /// dialer treats it as a transient failure, never as a verdict.
    #[error("refused: {0}")]
    Refused(String),
    /// The acceptor proved it knows the secret (its MAC verified), then refused this dialer's
    /// proof, with its reason.
    #[error("rejected by the authenticated acceptor: {0}")]
    Rejected(String),
    /// The encrypted handshake after the HMAC one failed.
    #[error("encrypted handshake failed: {0}")]
    Noise(String),
}

type Link<S> = Framed<S, LengthDelimitedCodec>;

/// A new random nonce.
pub fn nonce() -> Vec<u8> {
    let mut n = vec![0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut n);
    n
}

/// The MAC one side sends on a plain link: `side` is `b"dialer"` or `b"acceptor"`.
pub fn mac(
    secret: &[u8],
    side: &[u8],
    role: Role,
    dialer: &str,
    acceptor: &str,
    nonce_d: &[u8],
    nonce_a: &[u8],
) -> Vec<u8> {
    let t = Transcript {
        role,
        dialer,
        acceptor,
        nonce_d,
        nonce_a,
        cipher: Cipher::Plain,
    };
    t.mac(secret, side)
}

/// What both MACs cover.
struct Transcript<'a> {
    role: Role,
    dialer: &'a str,
    acceptor: &'a str,
    nonce_d: &'a [u8],
    nonce_a: &'a [u8],
    /// The acceptor's choice: bound unless plain (plain MACs are those of kennel-auth-v1).
    cipher: Cipher,
}

impl Transcript<'_> {
    /// Feeds `out` the transcript after `label` and `side`, each part length-prefixed (the
    /// cipher only when it is not plain).
    fn feed(&self, label: &[u8], side: &[u8], mut out: impl FnMut(&[u8])) {
        out(label);
        let role = (self.role as i32).to_be_bytes();
        let cipher = (self.cipher as i32).to_be_bytes();
        let parts = [
            side,
            &role,
            self.dialer.as_bytes(),
            self.acceptor.as_bytes(),
            self.nonce_d,
            self.nonce_a,
            &cipher,
        ];
        let bound = if self.cipher == Cipher::Plain { 6 } else { 7 };
        for part in &parts[..bound] {
            out(&(part.len() as u32).to_be_bytes());
            out(part);
        }
    }

    fn mac(&self, secret: &[u8], side: &[u8]) -> Vec<u8> {
        let mut m =
            <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("hmac takes any key length");
        self.feed(b"kennel-auth-v1", side, |b| m.update(b));
        m.finalize().into_bytes().to_vec()
    }

    /// The Noise prologue of this handshake: the same transcript under its own label.
    fn prologue(&self) -> Vec<u8> {
        let mut p = Vec::new();
        self.feed(b"kennel-noise-v1", b"", |b| p.extend_from_slice(b));
        p
    }
}

fn verify(expected: &[u8], got: &[u8]) -> Result<(), AuthError> {
    if expected.len() == got.len() && bool::from(expected.ct_eq(got)) {
        Ok(())
    } else {
        Err(AuthError::BadMac)
    }
}

async fn recv<S: AsyncRead + AsyncWrite + Unpin, M: Message + Default>(
    link: &mut Link<S>,
) -> Result<M, AuthError> {
    let bytes = link.next().await.ok_or(AuthError::Closed)??;
    M::decode(bytes.freeze()).map_err(|e| AuthError::Malformed(e.to_string()))
}

async fn send<S: AsyncRead + AsyncWrite + Unpin, M: Message>(
    link: &mut Link<S>,
    m: &M,
) -> Result<(), AuthError> {
    link.send(Bytes::from(m.encode_to_vec())).await?;
    Ok(())
}

/// Dialer side of a plain link: proves `id` knows `secret` to the acceptor and checks the
/// acceptor does too. Returns the acceptor's id.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    secret: &[u8],
    role: Role,
    id: &str,
    target: &str,
) -> Result<String, AuthError> {
    let (acceptor, _) = dial_with(link, secret, role, id, target, Cipher::Plain).await?;
    Ok(acceptor)
}

/// Dialer side, protecting the link with `want` (`Cipher::Any`: whatever the acceptor's
/// authenticated `Challenge` says, as the CLI does). Returns the acceptor's id and, on an
/// encrypted link, its keys (the link's bytes from here on are [`noise`] records).
pub async fn dial_with<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    secret: &[u8],
    role: Role,
    id: &str,
    target: &str,
    want: Cipher,
) -> Result<(String, Option<Transport>), AuthError> {
    let nonce_d = nonce();
    let hello = Hello {
        role: role as i32,
        id: id.to_string(),
        nonce: nonce_d.clone().into(),
        version: crate::VERSION.to_string(),
        target: target.to_string(),
        cipher: want as i32,
    };
    send(link, &hello).await?;
    let ch: Challenge = recv(link).await?;
    if !ch.refused.is_empty() {
        return Err(AuthError::Refused(ch.refused));
    }
    if ch.nonce.len() < NONCE_LEN {
        return Err(AuthError::Malformed("short nonce".into()));
    }
    if !target.is_empty() && ch.id != target {
        return Err(AuthError::Refused(format!(
            "expected {target}, reached {}",
            ch.id
        )));
    }
    let cipher = match Cipher::try_from(ch.cipher) {
        Ok(c @ (Cipher::Plain | Cipher::Noise)) => c,
        _ => return Err(AuthError::Malformed("unknown cipher".into())),
    };
    let t = Transcript {
        role,
        dialer: id,
        acceptor: &ch.id,
        nonce_d: &nonce_d,
        nonce_a: &ch.nonce,
        cipher,
    };
    verify(&t.mac(secret, b"acceptor"), &ch.mac)?;
    // The acceptor proved the secret, so its choice is genuine; one we did not ask for is a
    // mismatch of the two sides' settings.
    if want != Cipher::Any && cipher != want {
        return Err(AuthError::Rejected(mismatch(want, cipher)));
    }
    let proof = Proof {
        mac: t.mac(secret, b"dialer").into(),
    };
    send(link, &proof).await?;
    let res: AuthResult = recv(link).await?;
    if !res.ok {
        return Err(AuthError::Rejected(res.error));
    }
    let transport = match cipher {
        Cipher::Noise => {
            Some(noise::handshake(link, &noise::psk(secret, role), &t.prologue(), true).await?)
        }
        _ => None,
    };
    Ok((ch.id, transport))
}

/// Why a link of `dialer`'s cipher cannot talk to an acceptor of `acceptor`'s.
fn mismatch(dialer: Cipher, acceptor: Cipher) -> String {
    let say = |c: Cipher| match c {
        Cipher::Noise => "encrypts its links",
        _ => "does not encrypt its links",
    };
    format!(
        "the dialer {} and the acceptor {}: `encryptLinks` in master.json differs between them (set it the same for every process of the cluster)",
        say(dialer),
        say(acceptor)
    )
}

/// Acceptor side of a plain link. `admit` sees the dialer's `Hello` and returns the secret
/// for its role, or the reason it is refused (unknown role, unknown id, ...). Returns the
/// verified `Hello`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    id: &str,
    admit: impl FnOnce(&Hello) -> Result<Vec<u8>, String>,
) -> Result<Hello, AuthError> {
    let (hello, _) = accept_with(link, id, Cipher::Plain, admit).await?;
    Ok(hello)
}

/// Acceptor side, protecting the link with `mine`: a dialer that asks for another cipher
/// (not `Any`) is refused with a reason naming the setting. Returns the verified `Hello` and,
/// on an encrypted link, its keys.
pub async fn accept_with<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    id: &str,
    mine: Cipher,
    admit: impl FnOnce(&Hello) -> Result<Vec<u8>, String>,
) -> Result<(Hello, Option<Transport>), AuthError> {
    let hello: Hello = recv(link).await?;
    if hello.nonce.len() < NONCE_LEN {
        return Err(AuthError::Malformed("short nonce".into()));
    }
    let role =
        Role::try_from(hello.role).map_err(|_| AuthError::Malformed("unknown role".into()))?;
    let refuse = |reason: String| Challenge {
        refused: reason,
        ..Default::default()
    };
    let admitted = match Cipher::try_from(hello.cipher) {
        Ok(Cipher::Any) => admit(&hello),
        Ok(c) if c == mine => admit(&hello),
        Ok(c) => Err(mismatch(c, mine)),
        Err(_) => Err(format!(
            "unknown cipher {} (is the dialer newer?)",
            hello.cipher
        )),
    };
    let secret = match admitted {
        Ok(s) => s,
        Err(reason) => {
            let _ = send(link, &refuse(reason.clone())).await;
            return Err(AuthError::Refused(reason));
        }
    };
    let nonce_a = nonce();
    let t = Transcript {
        role,
        dialer: &hello.id,
        acceptor: id,
        nonce_d: &hello.nonce,
        nonce_a: &nonce_a,
        cipher: mine,
    };
    let ch = Challenge {
        id: id.to_string(),
        nonce: nonce_a.clone().into(),
        mac: t.mac(&secret, b"acceptor").into(),
        version: crate::VERSION.to_string(),
        refused: String::new(),
        cipher: mine as i32,
    };
    send(link, &ch).await?;
    let proof: Proof = recv(link).await?;
    if let Err(e) = verify(&t.mac(&secret, b"dialer"), &proof.mac) {
        let _ = send(
            link,
            &AuthResult {
                ok: false,
                error: "authentication failed".into(),
            },
        )
        .await;
        return Err(e);
    }
    send(
        link,
        &AuthResult {
            ok: true,
            error: String::new(),
        },
    )
    .await?;
    let transport = match mine {
        Cipher::Noise => {
            Some(noise::handshake(link, &noise::psk(&secret, role), &t.prologue(), false).await?)
        }
        _ => None,
    };
    Ok((hello, transport))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{AUTH_MAX_FRAME, length_codec};

    fn pair() -> (Link<tokio::io::DuplexStream>, Link<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (
            Framed::new(a, length_codec(AUTH_MAX_FRAME)),
            Framed::new(b, length_codec(AUTH_MAX_FRAME)),
        )
    }

    #[tokio::test]
    async fn same_secret_succeeds_both_ways() {
        let (mut d, mut a) = pair();
        let (rd, ra) = tokio::join!(
            dial(&mut d, b"s3cret", Role::Server, "chat-1", ""),
            accept(&mut a, "master", |h| {
                assert_eq!(h.id, "chat-1");
                Ok(b"s3cret".to_vec())
            })
        );
        assert_eq!(rd.unwrap(), "master");
        assert_eq!(ra.unwrap().id, "chat-1");
    }

    #[tokio::test]
    async fn wrong_secret_fails_on_both_sides() {
        let (mut d, mut a) = pair();
        // The dialer owns its end and drops it when it gives up, as a real link does.
        let dialer =
            tokio::spawn(async move { dial(&mut d, b"wrong", Role::Server, "chat-1", "").await });
        let ra = accept(&mut a, "master", |_| Ok(b"right".to_vec())).await;
        let rd = dialer.await.unwrap();
        // The dialer detects the acceptor's MAC does not match its secret and stops.
        assert!(matches!(rd.unwrap_err(), AuthError::BadMac));
        assert!(ra.is_err());
    }

    #[tokio::test]
    async fn refusal_reason_reaches_the_dialer() {
        let (mut d, mut a) = pair();
        let (rd, _) = tokio::join!(
            dial(&mut d, b"k", Role::Peer, "x", ""),
            accept(&mut a, "master", |_| Err("unknown server id x".to_string()))
        );
        match rd.unwrap_err() {
            AuthError::Refused(r) => assert!(r.contains("unknown server id x")),
            e => panic!("unexpected {e:?}"),
        }
    }

    #[tokio::test]
    async fn only_a_refusal_after_the_acceptors_proof_is_rejected() {
        // A refusal in the challenge carries no MAC: `Refused`, whatever its reason says.
        let (mut d, mut a) = pair();
        let (rd, _) = tokio::join!(
            dial(&mut d, b"k", Role::Server, "chat-1", ""),
            accept(&mut a, "master", |_| Err("already registered".to_string()))
        );
        assert!(matches!(rd, Err(AuthError::Refused(_))), "{rd:?}");

        // An acceptor that proves the secret, then refuses the proof: `Rejected`.
        let (mut d, mut a) = pair();
        let acceptor = async {
            let hello: Hello = recv(&mut a).await.unwrap();
            let nonce_a = nonce();
            let ch = Challenge {
                id: "master".into(),
                nonce: nonce_a.clone().into(),
                mac: mac(
                    b"k",
                    b"acceptor",
                    Role::Server,
                    &hello.id,
                    "master",
                    &hello.nonce,
                    &nonce_a,
                )
                .into(),
                ..Default::default()
            };
            send(&mut a, &ch).await.unwrap();
            let _: Proof = recv(&mut a).await.unwrap();
            let no = AuthResult {
                ok: false,
                error: "no".into(),
            };
            send(&mut a, &no).await.unwrap();
        };
        let (rd, ()) = tokio::join!(dial(&mut d, b"k", Role::Server, "chat-1", ""), acceptor);
        assert!(matches!(rd, Err(AuthError::Rejected(_))), "{rd:?}");
    }

    #[test]
    fn mac_binds_every_field() {
        let base = mac(b"k", b"dialer", Role::Server, "a", "b", b"n1", b"n2");
        // One field changed at a time: side, role, dialer/acceptor split, a nonce, the key.
        for other in [
            mac(b"k", b"acceptor", Role::Server, "a", "b", b"n1", b"n2"),
            mac(b"k", b"dialer", Role::Cli, "a", "b", b"n1", b"n2"),
            mac(b"k", b"dialer", Role::Server, "ab", "", b"n1", b"n2"),
            mac(b"k", b"dialer", Role::Server, "a", "b", b"n1", b"n3"),
            mac(b"k2", b"dialer", Role::Server, "a", "b", b"n1", b"n2"),
        ] {
            assert_ne!(base, other);
        }
    }
}
