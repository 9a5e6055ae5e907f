//! The command line as a user runs it: the built binary with a test's
//! config, its exit code and output.

use std::process::Command;

use super::SECRET;

/// Run the built binary with `config`: its exit code, stdout and stderr.
pub fn easehook(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_easehook"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("IT_SECRET", SECRET)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The same from async code, with more of the environment: exit code,
/// stdout, stderr.
pub async fn easehook_with(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_easehook"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("IT_SECRET", SECRET)
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// [`easehook_with`] with the test's environment only, stdout and stderr
/// as one text: what a user reads in the terminal.
pub async fn run_cli(config: &std::path::Path, args: &[&str]) -> (i32, String) {
    let (code, out, err) = easehook_with(config, args, &[]).await;
    (code, format!("{out}{err}"))
}
