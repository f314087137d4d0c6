//! Names people give segments and exports: printable, bounded, and for exports usable as trigger file names.

mod common;

use common::*;

#[test]
fn names_with_control_characters_or_too_long_are_refused_with_the_rule_and_nothing_is_saved() {
    let env = Env::new();
    let csv = env.write_csv("m.csv", &[("a@example.com", "gold")]);
    env.add_connection();
    let source = format!("csv:{}", csv.display());
    let long = "x".repeat(201);
    let wide = "é".repeat(130);
    for (name, rule) in [
        ("VIP\nINFO forged log line", "control character"),
        (long.as_str(), "201 characters"),
        (wide.as_str(), "260 bytes"),
    ] {
        let out = env.run(&["segment", "add", name, "--source", &source]);
        assert_eq!(out.status.code(), Some(1), "{name:?}");
        let err = text(&out.stderr);
        assert!(err.contains(rule), "{err}");
        assert!(!err.contains("VIP\nINFO"), "the refused name is quoted escaped: {err}");
    }
    assert!(env.json(&["segment", "list"]).as_array().unwrap().is_empty());

    env.ok(&["segment", "add", "VIP", "--source", &source]);
    for (name, rule) in [
        ("weekly\nERROR forged", "control character"),
        ("a/b", "'/'"),
        (".hidden", "starts with '.'"),
        ("all", "every export"),
    ] {
        let out =
            env.run(&["export", "add", name, "--connection", "iterable", "--segment", "VIP", "--email-field", "email"]);
        assert_eq!(out.status.code(), Some(1), "{name:?}");
        assert!(text(&out.stderr).contains(rule), "{}", text(&out.stderr));
    }
    assert!(env.json(&["export", "list"]).as_array().unwrap().is_empty());
    env.ok(&[
        "export",
        "add",
        "VIP weekly – EU",
        "--connection",
        "iterable",
        "--segment",
        "VIP",
        "--email-field",
        "email",
    ]);
}

#[test]
fn a_trigger_written_with_no_daemon_running_says_that_it_waits() {
    let env = Env::new();
    env.setup_csv_export("Later", &emails(0, 3));
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    // A status address nothing listens on: no daemon runs.
    std::fs::write(env.path("config.toml"), format!("{config}\n[daemon]\nstatus_listen = \"127.0.0.1:9\"\n")).unwrap();
    let out = env.ok(&["export", "trigger", "exp"]);
    let said = text(&out.stdout);
    assert!(said.contains("no daemon answers"), "{said}");
    assert!(!said.contains("within a few seconds"), "{said}");
    let json = env.json(&["export", "trigger", "exp"]);
    assert_eq!(json["daemon_running"], false, "{json}");
    assert!(env.path("triggers/exp").exists(), "the file waits for a daemon");
}
