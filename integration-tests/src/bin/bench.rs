//! `bench`: kennel vs mydog, side by side, on this machine.
//!
//! ```text
//! cargo run --release -p integration-tests --bin bench -- all
//! cargo run --release -p integration-tests --bin bench -- frontend-echo boot --runs 1
//! cargo run --release -p integration-tests --bin bench -- all --quick      # smoke run
//! ```
//!
//! Prints progress on stderr and the table of medians on stdout; exits 1 if any run lost a
//! reply. `bench raw-echo <port>` is the raw tokio echo server the harness spawns.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use integration_tests::bench::{self, Config, SCENARIOS, procfs};

/// Benchmarks kennel's chat-demo against the mydog 2.3.0 peer (see docs/benchmarks.md).
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Args {
    /// Scenarios to run: all, frontend-echo, backend-echo, broadcast, rpc, boot, idle.
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
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("raw-echo") {
        let port = argv.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
        return match bench::raw_echo::main(port) {
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
    if !args.scenarios.iter().any(|s| s == "all") {
        for s in &args.scenarios {
            if !SCENARIOS.contains(&s.as_str()) {
                eprintln!(
                    "bench: unknown scenario {s:?}; choose from all, {}",
                    SCENARIOS.join(", ")
                );
                return ExitCode::from(2);
            }
        }
        cfg.scenarios = args.scenarios.clone();
    }
    if let Some(r) = args.runs {
        cfg.runs = r.max(1);
    }
    if let Some(w) = args.warmup {
        cfg.window.warmup = Duration::from_secs_f64(w);
    }
    if let Some(m) = args.measure {
        cfg.window.measure = Duration::from_secs_f64(m);
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
    println!(
        "runs: {} x ({:?} warm-up + {:?} measured), median shown",
        cfg.runs, cfg.window.warmup, cfg.window.measure
    );
    println!("{}", results.table(args.markdown));
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
