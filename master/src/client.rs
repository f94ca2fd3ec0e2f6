//! The operator CLI's side of the CLI link: dial the master, authenticate as `Role::Cli` with
//! the CLI secret, then exchange `CliRequest` / `CliResponse` (one response per request).
//! The link is encrypted when the master's authenticated answer says so (`encryptLinks` in
//! its master.json): the CLI needs no setting of its own, and nobody without the CLI secret
//! can make it talk in clear to an encrypting master.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kennel_master::ClientError> {
//! let mut master = kennel_master::MasterClient::connect("127.0.0.1:3005", "cli-secret").await?;
//! for s in master.list().await?.servers {
//!     let state = kennel_master::ServerState::from_wire(s.state);
//!     println!("{} {state}", s.info.unwrap_or_default().id);
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kennel_proto::auth::{self, AuthError};
use kennel_proto::frame::{AUTH_MAX_FRAME, DEFAULT_MAX_FRAME, ProtoCodec, length_codec};
use kennel_proto::msg::{
    Cipher, CliRequest, CliResponse, ListReply, ListRequest, RemoveRequest, RestartRequest, Role,
    SendReply, SendRequest, StartRequest, StopRequest, cli_request, cli_response,
};
use kennel_proto::noise::{LinkIo, framed_link};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

use crate::ClientError;

/// Bound on the TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on authentication and on each request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The id the CLI announces.
pub const CLI_ID: &str = "cli";

/// An authenticated CLI link to a master.
#[derive(Debug)]
pub struct MasterClient {
    addr: String,
    link: Framed<LinkIo<TcpStream>, ProtoCodec<CliResponse, CliRequest>>,
}

impl MasterClient {
    /// Connects to the master at `addr` (`host:port`) and authenticates with `secret`.
    pub async fn connect(addr: &str, secret: &str) -> Result<MasterClient, ClientError> {
        let stream = Self::dial(addr).await?;
        Self::authenticate(stream, addr, secret).await
    }

    /// Opens the TCP connection only (so a caller can tell "no master" from "no secret").
    pub async fn dial(addr: &str) -> Result<TcpStream, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            addr: addr.to_owned(),
            source,
        };
        match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(unreachable(e)),
            Err(_) => Err(unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection timed out",
            ))),
        }
    }

    /// Authenticates an open connection to the master at `addr` with the CLI `secret`.
    pub async fn authenticate(
        stream: TcpStream,
        addr: &str,
        secret: &str,
    ) -> Result<MasterClient, ClientError> {
        let mut framed = Framed::new(stream, length_codec(AUTH_MAX_FRAME));
        let dialed = timeout(
            REQUEST_TIMEOUT,
            auth::dial_with(
                &mut framed,
                secret.as_bytes(),
                Role::Cli,
                CLI_ID,
                "",
                Cipher::Any,
            ),
        )
        .await;
        match dialed {
            Err(_) => Err(ClientError::Timeout {
                addr: addr.to_owned(),
                secs: REQUEST_TIMEOUT.as_secs(),
            }),
            Ok(Err(AuthError::BadMac)) => Err(ClientError::WrongSecret {
                addr: addr.to_owned(),
            }),
            Ok(Err(source)) => Err(ClientError::Auth {
                addr: addr.to_owned(),
                source,
            }),
            Ok(Ok((_master_id, transport))) => Ok(MasterClient {
                addr: addr.to_owned(),
                link: framed_link(framed, transport, ProtoCodec::new(DEFAULT_MAX_FRAME)),
            }),
        }
    }

    /// Whether the link is encrypted (the master has `encryptLinks` on).
    pub fn is_encrypted(&self) -> bool {
        kennel_proto::noise::is_encrypted(self.link.get_ref())
    }

    /// The address this client dialed.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request and returns the master's answer (an `error` answer is an `Err`),
    /// waiting at most [`REQUEST_TIMEOUT`].
    pub async fn request(
        &mut self,
        cmd: cli_request::Cmd,
    ) -> Result<cli_response::Msg, ClientError> {
        self.request_within(cmd, REQUEST_TIMEOUT).await
    }

    /// Like [`MasterClient::request`], waiting at most `within`.
    pub async fn request_within(
        &mut self,
        cmd: cli_request::Cmd,
        within: Duration,
    ) -> Result<cli_response::Msg, ClientError> {
        let addr = self.addr.clone();
        let link_err = |source| ClientError::Link {
            addr: addr.clone(),
            source,
        };
        let exchange = async {
            self.link
                .send(CliRequest { cmd: Some(cmd) })
                .await
                .map_err(link_err)?;
            match self.link.next().await {
                None => Err(ClientError::Closed { addr: addr.clone() }),
                Some(Err(e)) => Err(link_err(e)),
                Some(Ok(CliResponse { msg: None })) => Err(ClientError::Master {
                    addr: addr.clone(),
                    message: "an empty answer".to_owned(),
                }),
                Some(Ok(CliResponse {
                    msg: Some(cli_response::Msg::Error(message)),
                })) => Err(ClientError::Master {
                    addr: addr.clone(),
                    message,
                }),
                Some(Ok(CliResponse { msg: Some(m) })) => Ok(m),
            }
        };
        match timeout(within, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr: self.addr.clone(),
                secs: within.as_secs(),
            }),
        }
    }

    /// `kennel send`: the master forwards `args` to servers `ids` and every server of
    /// `types` (neither: every server) and returns each one's answer, error or timeout
    /// (`wait`, at most 120 s).
    pub async fn send(
        &mut self,
        ids: &[String],
        types: &[String],
        args: &[String],
        wait: Duration,
    ) -> Result<SendReply, ClientError> {
        let timeout_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let cmd = cli_request::Cmd::Send(SendRequest {
            ids: ids.to_vec(),
            types: types.to_vec(),
            args: args.to_vec(),
            timeout_ms,
        });
        match self.request_within(cmd, wait + REQUEST_TIMEOUT).await? {
            cli_response::Msg::Send(r) => Ok(r),
            other => Err(self.unexpected(other)),
        }
    }

    /// Every configured server with its state.
    pub async fn list(&mut self) -> Result<ListReply, ClientError> {
        match self.request(cli_request::Cmd::List(ListRequest {})).await? {
            cli_response::Msg::List(l) => Ok(l),
            other => Err(self.unexpected(other)),
        }
    }

    /// Asks the master to stop the cluster; returns its acknowledgement. The master closes
    /// the link once every server is stopped: see [`MasterClient::closed`].
    pub async fn stop(&mut self) -> Result<String, ClientError> {
        match self.request(cli_request::Cmd::Stop(StopRequest {})).await? {
            cli_response::Msg::Ok(text) => Ok(text),
            other => Err(self.unexpected(other)),
        }
    }

    /// Asks the master to restart server `id` (SIGTERM, then started again at once); returns
    /// its acknowledgement. The server has not re-registered yet when this returns.
    pub async fn restart(&mut self, id: &str) -> Result<String, ClientError> {
        let cmd = cli_request::Cmd::Restart(RestartRequest { id: id.to_owned() });
        self.ok(cmd).await
    }

    /// Asks the master to stop servers `ids` and every server of `types`, and not restart
    /// them; returns its acknowledgement.
    pub async fn remove(
        &mut self,
        ids: &[String],
        types: &[String],
    ) -> Result<String, ClientError> {
        let cmd = cli_request::Cmd::Remove(RemoveRequest {
            ids: ids.to_vec(),
            types: types.to_vec(),
        });
        self.ok(cmd).await
    }

    /// Asks the master to start servers `ids` (removed, exited or crash-looping ones, or ids
    /// new in its config file); returns its acknowledgement.
    pub async fn start(&mut self, ids: &[String]) -> Result<String, ClientError> {
        let cmd = cli_request::Cmd::Start(StartRequest { ids: ids.to_vec() });
        self.ok(cmd).await
    }

    async fn ok(&mut self, cmd: cli_request::Cmd) -> Result<String, ClientError> {
        match self.request(cmd).await? {
            cli_response::Msg::Ok(text) => Ok(text),
            other => Err(self.unexpected(other)),
        }
    }

    /// Waits up to `within` for the master to close the link (after `stop`: the cluster has
    /// stopped).
    pub async fn closed(mut self, within: Duration) -> Result<(), ClientError> {
        let drain = async { while let Some(Ok(_)) = self.link.next().await {} };
        timeout(within, drain)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr.clone(),
                secs: within.as_secs(),
            })
    }

    fn unexpected(&self, got: cli_response::Msg) -> ClientError {
        ClientError::Master {
            addr: self.addr.clone(),
            message: format!("an unexpected answer: {got:?}"),
        }
    }
}
