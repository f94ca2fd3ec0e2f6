//! `bench`: kennel vs mydog, side by side, on this machine.
//!
//! ```text
//! cargo run --release -p integration-tests --bin bench -- all
//! cargo run --release -p integration-tests --bin bench -- frontend-echo boot --runs 1
//! cargo run --release -p integration-tests --bin bench -- all --quick      # smoke run
//! cargo run --release -p integration-tests --bin bench -- players          # players per core
//! ```
//!
//! Prints progress on stderr and the table of medians on stdout; exits 1 if any run lost a
//! reply. `bench raw-echo <port> [1|uring]` is the raw echo server the harness spawns (`1`: on
//! a current-thread runtime; `uring`: one thread on one io_uring ring).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use integration_tests::bench::players::Backend;
use integration_tests::bench::{self, Config, PLAYER_SCENARIOS, SCENARIOS, procfs};

/// Benchmarks kennel's chat-demo against the mydog 2.3.0 peer (see docs/benchmarks.md).
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Args {
    /// Scenarios to run: all, frontend-echo, frontend-echo-tls, backend-echo, broadcast, rpc,
    /// boot, idle; players
    /// (= players-frontend-echo, players-backend-echo, players-rpc, players-chat; not in all).
    #[arg(required = true)]
    scenarios: Vec<String>,
    /// A smoke run: each scenario once, 0.2 s warm-up + 0.6 s, small sizes.
    #[arg(long)]
    quick: bool,
    /// Runs per scenario (median reported).
    #[arg(long)]
    runs: Option<usize>,
    /// Warm-up seconds per run.
    #[arg(long)]
    warmup: Option<f64>,
    /// Measured seconds per run.
    #[arg(long)]
    measure: Option<f64>,
    /// Chat-server counts for the boot scenario (beside one connector), e.g. `2,10,50`.
    #[arg(long, value_delimiter = ',')]
    boot_sizes: Option<Vec<u16>>,
    /// Idle connection counts, e.g. `1000,10000`.
    #[arg(long, value_delimiter = ',')]
    idle_sizes: Option<Vec<usize>>,
    /// Skip the mydog peer (also when KENNEL_SKIP_MYDOG=1 and node/npm are missing).
    #[arg(long)]
    no_mydog: bool,
    /// Server binaries' profile: release or debug (default: the bench's own).
    #[arg(long, value_parser = ["release", "debug"])]
    profile: Option<String>,
    /// Also write every run's figures as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Print the table as Markdown.
    #[arg(long)]
    markdown: bool,
    /// Players: closed-loop sizes (one message in flight each), e.g. `1000,5000,10000`.
    #[arg(long, value_delimiter = ',')]
    players: Option<Vec<usize>>,
    /// Players: the open-loop ramp (players, ascending), e.g. `500,1000,2000,5000,10000`.
    #[arg(long, value_delimiter = ',')]
    open_players: Option<Vec<usize>>,
    /// Players: messages per second per player in the open loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Players: players per chat room.
    #[arg(long)]
    room_size: Option<usize>,
    /// Players: the load generator's I/O.
    #[arg(long = "gen", value_parser = ["uring", "epoll"])]
    generator: Option<String>,
    /// Players: the p99 latency limit of players per core, ms.
    #[arg(long)]
    p99_limit_ms: Option<f64>,
    /// Players: open loop, io_uring: the generator wakes at most once per this many µs.
    #[arg(long)]
    tick_us: Option<u64>,
    /// Players: leave out kennel on the io_uring connector and the raw io_uring echo.
    #[arg(long)]
    no_uring: bool,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("raw-echo") {
        let port = argv.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
        let run = match argv.get(3).map(String::as_str) {
            Some("uring") => bench::raw_uring::main(port),
            single => bench::raw_echo::main(port, single == Some("1")),
        };
        return match run {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("raw-echo: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    let mut cfg = if args.quick {
        Config::quick()
    } else {
        Config::full()
    };
    let mut chosen = Vec::new();
    for s in &args.scenarios {
        match s.as_str() {
            "all" => chosen.extend(SCENARIOS.iter().map(|s| s.to_string())),
            "players" => chosen.extend(PLAYER_SCENARIOS.iter().map(|s| s.to_string())),
            s if SCENARIOS.contains(&s) || PLAYER_SCENARIOS.contains(&s) => {
                chosen.push(s.to_string())
            }
            _ => {
                eprintln!(
                    "bench: unknown scenario {s:?}; choose from all, {}, players, {}",
                    SCENARIOS.join(", "),
                    PLAYER_SCENARIOS.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    }
    cfg.scenarios = chosen;
    if let Some(r) = args.runs {
        cfg.runs = r.max(1);
    }
    if let Some(w) = args.warmup {
        cfg.window.warmup = Duration::from_secs_f64(w);
        cfg.players.window.warmup = cfg.window.warmup;
    }
    if let Some(m) = args.measure {
        cfg.window.measure = Duration::from_secs_f64(m);
        cfg.players.window.measure = cfg.window.measure;
    }
    let p = &mut cfg.players;
    if let Some(v) = args.players {
        p.closed = v;
    }
    if let Some(v) = args.open_players {
        p.open = v;
    }
    if let Some(v) = args.rate {
        p.rate = v;
    }
    if let Some(v) = args.room_size {
        p.room_size = v.max(1);
    }
    if let Some(v) = args.p99_limit_ms {
        p.p99_limit_ms = v;
    }
    if let Some(v) = args.tick_us {
        p.tick = Duration::from_micros(v);
    }
    p.uring = !args.no_uring;
    if let Some(g) = args.generator.as_deref() {
        p.backend = if g == "epoll" {
            Backend::Epoll
        } else {
            Backend::Uring
        };
    }
    if p.rate <= 0.0 || p.closed.contains(&0) || p.open.contains(&0) {
        eprintln!("bench: --rate and every --players / --open-players size must be positive");
        return ExitCode::from(2);
    }
    if let Some(b) = args.boot_sizes {
        cfg.boot_sizes = b;
    }
    if let Some(i) = args.idle_sizes {
        cfg.idle_sizes = i;
    }
    cfg.release = args.profile.as_deref().map(|p| p == "release");
    cfg.mydog = !args.no_mydog;
    if cfg.mydog
        && let Err(why) = integration_tests::mydog::node_and_npm()
    {
        if std::env::var(integration_tests::mydog::SKIP_ENV).as_deref() == Ok("1") {
            eprintln!(
                "bench: skipping mydog ({why}; {} is set)",
                integration_tests::mydog::SKIP_ENV
            );
            cfg.mydog = false;
        } else {
            eprintln!(
                "bench: mydog needs node and npm: {why} (use --no-mydog or {}=1)",
                integration_tests::mydog::SKIP_ENV
            );
            return ExitCode::FAILURE;
        }
    }
    eprintln!("bench: machine: {}", procfs::machine());
    eprintln!("bench: {cfg:?}");
    let results = match bench::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("machine: {}", procfs::machine());
    if cfg
        .scenarios
        .iter()
        .any(|s| SCENARIOS.contains(&s.as_str()))
    {
        println!(
            "runs: {} x ({:?} warm-up + {:?} measured), median shown",
            cfg.runs, cfg.window.warmup, cfg.window.measure
        );
    }
    if cfg
        .scenarios
        .iter()
        .any(|s| PLAYER_SCENARIOS.contains(&s.as_str()))
    {
        let p = &cfg.players;
        println!(
            "players: one run per step ({:?} warm-up + {:?} measured); closed loop {:?}; open loop ramp {:?} at {} msg/s each, sends on {:?} ticks; generator {}",
            p.window.warmup,
            p.window.measure,
            p.closed,
            p.open,
            p.rate,
            p.tick,
            p.backend.name()
        );
    }
    println!("{}", results.table(args.markdown));
    for n in &results.notes {
        println!("note: {n}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results).expect("results serialize");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if !results.problems.is_empty() {
        eprintln!(
            "bench: {} runs did not account for every reply:",
            results.problems.len()
        );
        for p in &results.problems {
            eprintln!("  {p}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
