//! kennel-master: the supervisor.
