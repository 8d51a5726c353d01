//! `streamops-runtime test` as users run it: the binary on the job files of
//! `examples/` and the records and expected results in `examples/tests/`
//! (hand-checked: see `examples/tests/README.md`), and a mismatch that must
//! fail with a readable diff.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn test_command(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streamops-runtime"))
        .arg("test")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("running streamops-runtime test")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `job` on `input` against `expected` (paths under `examples/`),
/// requires success and every line of `wanted` on stderr; returns stderr.
fn expect_example(job: &str, input: &str, expected: &str, wanted: &[&str]) -> String {
    let out = test_command(&[
        &format!("examples/{job}"),
        "--input",
        &format!("examples/tests/{input}"),
        "--expect",
        &format!("examples/tests/{expected}"),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}{}", text(&out.stdout));
    for line in wanted {
        assert!(stderr.contains(line), "{line}\n{stderr}");
    }
    stderr
}

#[test]
fn the_clickstream_example_gives_its_expected_results() {
    expect_example(
        "clickstream-job.yaml",
        "clicks-per-user.input.jsonl",
        "clicks-per-user.expected.jsonl",
        &[
            "14 records: 6 results, 1 late, 2 dead letters",
            "dead letter: record 6 (invalid_record)",
            "dead letter: record 14 (missing_event_time)",
        ],
    );
}

#[test]
fn the_clickstream_job_in_step_form_gives_the_short_forms_results() {
    // The record without a time fails the map step instead of the event
    // time: a dead letter naming the step.
    expect_example(
        "clickstream-steps.yaml",
        "clicks-per-user.input.jsonl",
        "clicks-per-user.expected.jsonl",
        &[
            "14 records: 6 results, 1 late, 2 dead letters",
            "dead letter: record 14 (expression_error): spec.pipeline.steps[1] (shape).map.ts",
        ],
    );
}

#[test]
fn the_failed_logins_example_alerts_past_its_threshold_only() {
    // A step failing on a record names the step and its expression.
    expect_example(
        "failed-logins.yaml",
        "failed-logins.input.jsonl",
        "failed-logins.expected.jsonl",
        &[
            "28 records: 3 results, 0 late, 2 dead letters",
            "dead letter: record 10 (expression_error): spec.pipeline.steps[1] (normalise).map.user: expression \
             `record.user.trim().lowerAscii()` failed",
        ],
    );
}

#[test]
fn the_stateless_clean_orders_example_cleans_reshapes_routes_and_dead_letters() {
    expect_example(
        "clean-orders.yaml",
        "clean-orders.input.jsonl",
        "clean-orders.expected.jsonl",
        &[
            "11 records: 3 results, 0 late, 4 dead letters, 1 routed",
            "dead letter: record 6 (invalid_record)",
            "dead letter: record 7 (expression_error): spec.pipeline.steps[1] (normalise).map.customer",
            "dead letter: record 8 (expression_error): spec.pipeline.steps[0] (complete).filter",
            "dead letter: record 10 (expression_error): spec.pipeline.steps[1] (normalise).map.items",
            "routed to orders-review: {\"cents\":12000,\"country\":\"IE\",\"customer\":\"dee\",\"id\":\"o-11\",",
        ],
    );
}

#[test]
fn a_wrong_expectation_fails_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let expected =
        std::fs::read_to_string(repo().join("examples/tests/clicks-per-user.expected.jsonl")).unwrap();
    // One result changed, one missing.
    let mut lines: Vec<&str> = expected.lines().collect();
    let changed = lines[0].replace("\"clicks\":2", "\"clicks\":9");
    lines[0] = &changed;
    lines.pop();
    let wrong = dir.path().join("wrong.jsonl");
    std::fs::write(&wrong, lines.join("\n")).unwrap();
    let out = test_command(&[
        "examples/clickstream-job.yaml",
        "--input",
        "examples/tests/clicks-per-user.input.jsonl",
        "--expect",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("results differ from --expect: 1 missing (-), 2 unexpected (+)"),
        "{stdout}"
    );
    assert!(stdout.contains("- {\"clicks\":9,"), "{stdout}");
    assert!(
        stdout.contains("+ {\"clicks\":2,\"final\":true,\"firing\":\"onTime\",\"key\":[\"ana\"]"),
        "{stdout}"
    );
    assert!(stdout.contains("\"key\":[\"cho\"]"), "{stdout}");
}

#[test]
fn errors_exit_2_and_name_the_problem() {
    let out = test_command(&[
        "examples/clickstream-topics.yaml",
        "--input",
        "examples/tests/clicks-per-user.input.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no StreamJob in the file"),
        "{}",
        text(&out.stderr)
    );
    let out = test_command(&[
        "examples/sliding-and-session.yaml",
        "--input",
        "examples/tests/clicks-per-user.input.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--name"), "{}", text(&out.stderr));
}
