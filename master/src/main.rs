//! The `kennel` binary: the master (`kennel start`) and the operator CLI (`kennel list`,
//! `kennel stop`); all logic lives in the `kennel_master` library.

fn main() -> std::process::ExitCode {
    kennel_master::cli_main()
}
