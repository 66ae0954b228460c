//! The README's test command with a filter: `scripts/test.sh <filter>` hands its arguments to
//! scripts/cargo-test.sh after its checks (formatting, lints), which is what runs here.

use std::process::{Command, Output};

/// Set in the nested run, whose tests only have to be found, not to run the command again.
const NESTED: &str = "ODDSFEED_NESTED_TEST_COMMAND";

fn cargo_test_sh(args: &[&str]) -> Output {
    Command::new("bash")
        .arg("scripts/cargo-test.sh")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(NESTED, "1")
        .output()
        .expect("bash runs")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_word_naming_a_test_file_runs_that_files_tests() {
    if std::env::var_os(NESTED).is_some() {
        return;
    }
    let out = cargo_test_sh(&["test_command"]);
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("tests/test_command.rs"), "{text}");
    assert!(text.contains("test result: ok. 2 passed"), "{text}");
    // Only that file: no other test binary ran.
    assert_eq!(text.matches("Running ").count(), 1, "{text}");
}

#[test]
fn a_filter_that_matches_no_test_says_so_and_fails() {
    if std::env::var_os(NESTED).is_some() {
        return;
    }
    let out = cargo_test_sh(&["--test", "test_command", "no_test_is_named_like_this"]);
    let text = text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("no test matched --test test_command no_test_is_named_like_this"),
        "{text}"
    );
}
