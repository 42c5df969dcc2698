//! The client libraries' suites and the dashboard's, run against this build's binary,
//! so that the README's `cargo test --workspace` is the whole test suite: the
//! JavaScript client's (node:test) and the Python client's (pytest), each starting its
//! own `redis-server` processes and servers on free ports (docs/TESTING.md "Client
//! libraries"), and the dashboard's pure modules (`static/test/`). A suite's output is
//! shown when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The two client suites start servers and time what they see: one at a time, so
/// neither runs on a machine the other keeps busy.
static SERVER_SUITES: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args` in `dir` with the server binary named, and fails the test with
/// the whole output when it fails (or cannot start: Node.js ≥ 20 and npm are needed).
fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    run_with(dir, program, args, "install Node.js 20+ and npm")
}

fn run_with(dir: &Path, program: &str, args: &[&str], hint: &str) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("TICKSTREAM_BIN", env!("CARGO_BIN_EXE_tickstream"))
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot start ({e}): {hint}"));
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
    let _one_at_a_time = SERVER_SUITES.lock().unwrap_or_else(|e| e.into_inner());
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

/// A Python with the client and its test tools installed: `TICKSTREAM_PYTHON` when
/// set (.ci/run installs the package from its folder into a fresh virtual
/// environment, as a user would), else `target/python-venv`, made on first use with
/// the package installed editable and the locked test tools
/// (`clients/python/requirements-dev.txt`).
fn python() -> String {
    if let Some(python) = std::env::var_os("TICKSTREAM_PYTHON") {
        return python.to_string_lossy().into_owned();
    }
    let root = root();
    let hint = "install Python 3.11+ with venv and pip";
    let venv = root.join("target/python-venv");
    let python = venv.join("bin/python").to_string_lossy().into_owned();
    if !venv.join("bin/python").exists() {
        let venv = venv.to_string_lossy().into_owned();
        run_with(&root, "python3", &["-m", "venv", &venv], hint);
    }
    let ready = Command::new(&python)
        .args(["-c", "import tickstream, pytest, pytest_asyncio, pandas, mypy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        let install = [
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-e",
            "clients/python[pandas]",
            "-r",
            "clients/python/requirements-dev.txt",
        ];
        run_with(&root, &python, &install, hint);
    }
    python
}

#[test]
fn python_client_suite_passes_against_the_real_server() {
    let _one_at_a_time = SERVER_SUITES.lock().unwrap_or_else(|e| e.into_inner());
    let python = python();
    let dir = root().join("clients/python");
    let output = run_with(
        &dir,
        &python,
        &["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"],
        "no Python",
    );
    // pytest's last line: "60 passed in 67.02s" (", 6 skipped" when pandas or mypy
    // is missing from the interpreter: then the DataFrames went untested).
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout.lines().rfind(|l| l.contains(" passed")).unwrap_or("");
    let n: usize = summary
        .split(" passed")
        .next()
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(n >= 40, "the Python client's suite ran {n} tests");
    assert!(
        !summary.contains(" skipped"),
        "the Python client's suite skipped tests:\n{stdout}"
    );
}
