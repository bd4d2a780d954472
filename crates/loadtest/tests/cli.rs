//! The `tokenmanager-loadtest` binary itself: its help, and a refused argument's exit.

use std::process::Command;

fn loadtest(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tokenmanager-loadtest"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn help_names_the_protocols() {
    let output = loadtest(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("Usage: tokenmanager-loadtest"), "{help}");
    assert!(
        help.contains("dirac-https") && help.contains("dips"),
        "{help}"
    );
}

#[test]
fn a_bad_argument_fails_with_its_reason() {
    let output = loadtest(&["https://localhost:1", "--concurrency", "0", "--insecure"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("tokenmanager-loadtest: invalid argument:")
            && stderr.contains("at least 1"),
        "{stderr}"
    );
}
