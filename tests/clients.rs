//! The Node suites, run against this build's binary, so that the README's
//! `cargo test --workspace` is the whole test suite: the JavaScript client's
//! (docs/TESTING.md "Client libraries"; it starts its own `redis-server` processes and
//! servers on free ports) and the dashboard's pure modules (`static/test/`). A suite's
//! output is shown when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args` in `dir` with the server binary named, and fails the test with
/// the whole output when it fails (or cannot start: Node.js ≥ 20 and npm are needed).
fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("TICKSTREAM_BIN", env!("CARGO_BIN_EXE_tickstream"))
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot start ({e}): install Node.js 20+ and npm"));
    assert!(
        output.status.success(),
        "{program} {} in {} failed:\n{}\n{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The number after `# pass` in node:test's summary.
fn passed(output: &Output) -> usize {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn javascript_client_suite_passes_against_the_real_server() {
    let dir = root().join("clients/js");
    if !dir.join("node_modules/ws").exists() {
        run(&dir, "npm", &["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
    }
    let output = run(&dir, "npm", &["test"]);
    let n = passed(&output);
    assert!(n >= 30, "the JavaScript client's suite ran {n} tests");
}

#[test]
fn dashboard_modules_suite_passes() {
    let output = run(&root(), "node", &["--test", "static/test/"]);
    let n = passed(&output);
    assert!(n >= 20, "the dashboard's suite ran {n} tests");
}
