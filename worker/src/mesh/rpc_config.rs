//! [`RpcConfig`]: how servers talk to each other (mydog's `rpcConfig`): call timeout, the
//! bounded queue of calls waiting for a link, link heartbeat, redial delay, write batching,
//! frame limit, and the pairs of server types that never link (`noRpcMatrix`).
//!
//! It is read from the `rpc` key of the environment's entry in `config/sys/master.json` (the
//! same for every server of the cluster), typed and checked in kennel-config when the project
//! loads ([`kennel_config::settings`]; `kennel config` refuses a bad value), and
//! [`crate::App::set_rpc_config`] can replace it in code.

pub use kennel_config::settings::{Interval, RpcConfig};

const _: () = assert!(
    kennel_config::settings::DEFAULT_RPC_MAX_LEN == kennel_proto::frame::DEFAULT_MAX_FRAME,
    "the default rpc.maxLen of kennel-config and kennel-proto differ"
);
