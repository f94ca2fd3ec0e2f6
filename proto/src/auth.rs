//! Mutual HMAC-SHA256 challenge/response that starts every internal link. The secret never
//! crosses the wire; both sides contribute a fresh nonce, so a recorded answer cannot be replayed.
//!
//! ```text
//! dialer   -> acceptor : Hello      {role, id_d, nonce_d, version, target}
//! acceptor -> dialer   : Challenge  {id_a, nonce_a, mac_a = HMAC(k, "acceptor" | transcript)}
//! dialer   -> acceptor : Proof      {mac_d = HMAC(k, "dialer" | transcript)}
//! acceptor -> dialer   : AuthResult {ok, error}
//! transcript = role | id_d | id_a | nonce_d | nonce_a   (each length-prefixed)
//! ```
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

use crate::msg::{AuthResult, Challenge, Hello, Proof, Role};

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
}

type Link<S> = Framed<S, LengthDelimitedCodec>;

/// A new random nonce.
pub fn nonce() -> Vec<u8> {
    let mut n = vec![0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut n);
    n
}

/// The MAC one side sends: `side` is `b"dialer"` or `b"acceptor"`.
pub fn mac(
    secret: &[u8],
    side: &[u8],
    role: Role,
    dialer: &str,
    acceptor: &str,
    nonce_d: &[u8],
    nonce_a: &[u8],
) -> Vec<u8> {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("hmac takes any key length");
    m.update(b"kennel-auth-v1");
    for part in [
        side,
        &(role as i32).to_be_bytes(),
        dialer.as_bytes(),
        acceptor.as_bytes(),
        nonce_d,
        nonce_a,
    ] {
        m.update(&(part.len() as u32).to_be_bytes());
        m.update(part);
    }
    m.finalize().into_bytes().to_vec()
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

/// Dialer side: proves `id` knows `secret` to the acceptor and checks the acceptor does too.
/// Returns the acceptor's id.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    secret: &[u8],
    role: Role,
    id: &str,
    target: &str,
) -> Result<String, AuthError> {
    let nonce_d = nonce();
    let hello = Hello {
        role: role as i32,
        id: id.to_string(),
        nonce: nonce_d.clone().into(),
        version: crate::VERSION.to_string(),
        target: target.to_string(),
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
    let expect = mac(secret, b"acceptor", role, id, &ch.id, &nonce_d, &ch.nonce);
    verify(&expect, &ch.mac)?;
    let proof = Proof {
        mac: mac(secret, b"dialer", role, id, &ch.id, &nonce_d, &ch.nonce).into(),
    };
    send(link, &proof).await?;
    let res: AuthResult = recv(link).await?;
    if res.ok {
        Ok(ch.id)
    } else {
        Err(AuthError::Rejected(res.error))
    }
}

/// Acceptor side. `admit` sees the dialer's `Hello` and returns the secret for its role, or
/// the reason it is refused (unknown role, unknown id, ...). Returns the verified `Hello`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    id: &str,
    admit: impl FnOnce(&Hello) -> Result<Vec<u8>, String>,
) -> Result<Hello, AuthError> {
    let hello: Hello = recv(link).await?;
    if hello.nonce.len() < NONCE_LEN {
        return Err(AuthError::Malformed("short nonce".into()));
    }
    let role =
        Role::try_from(hello.role).map_err(|_| AuthError::Malformed("unknown role".into()))?;
    let secret = match admit(&hello) {
        Ok(s) => s,
        Err(reason) => {
            let _ = send(
                link,
                &Challenge {
                    refused: reason.clone(),
                    ..Default::default()
                },
            )
            .await;
            return Err(AuthError::Refused(reason));
        }
    };
    let nonce_a = nonce();
    let ch = Challenge {
        id: id.to_string(),
        nonce: nonce_a.clone().into(),
        mac: mac(
            &secret,
            b"acceptor",
            role,
            &hello.id,
            id,
            &hello.nonce,
            &nonce_a,
        )
        .into(),
        version: crate::VERSION.to_string(),
        refused: String::new(),
    };
    send(link, &ch).await?;
    let proof: Proof = recv(link).await?;
    let expect = mac(
        &secret,
        b"dialer",
        role,
        &hello.id,
        id,
        &hello.nonce,
        &nonce_a,
    );
    if let Err(e) = verify(&expect, &proof.mac) {
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
    Ok(hello)
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
